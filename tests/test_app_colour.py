"""The app end to end on a colour model: `rgb_checkpoint` (12x12 RGB, classes Red, Green, Blue) behind a real server.

Every other app test runs the grayscale tiny checkpoint; here each picture the app sends (live frames, final PNG,
GIF, MP4, forward process, guidance explorer, scrubber, and the page in Chromium) must keep its three channels:
checked on the pixels, not on the image mode. The server starts on the grayscale model and offers the colour one
in its model list, so that switching to it is tested too.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402

import app  # noqa: E402
from tests.test_app import api_args, block, data_url_image, free_port  # noqa: E402
from tests.test_app_browser import CHROMIUM, WATCH_LIVE_FRAMES, browser  # noqa: E402

SPREAD = 32  # a pixel is coloured when its channels differ by more than this many levels (gray: 0)

# The share of coloured pixels of an <img>, decoded by the browser itself (drawn on a canvas and read back).
COLOUR_IN_PAGE = """async (img) => {
  await img.decode();
  const c = document.createElement('canvas');
  [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let coloured = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > %d) coloured++;
  }
  return {width: c.width, coloured: coloured / (d.length / 4)};
}""" % SPREAD


def pixels(image) -> np.ndarray:
    """An image (PIL, a file path or an (H, W, 3) array) as an int (H, W, 3) array; it must be RGB already."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return pixels(im)
    if isinstance(image, Image.Image):
        assert image.mode == "RGB", image.mode
    a = np.asarray(image).astype(int)
    assert a.ndim == 3 and a.shape[2] == 3, a.shape
    return a


def coloured(image) -> float:
    """The share of pixels whose channels differ by more than SPREAD levels: 0 for any grayscale picture."""
    a = pixels(image)
    return float((a.max(axis=2) - a.min(axis=2) > SPREAD).mean())


def page_event(url: str, session_hash: str, demo: gr.Blocks, name: str, data: list) -> list:
    """Run the page's own event handler `name` (private: gradio_client cannot call it, the page calls it by its
    fn_index) in session `session_hash`, as the browser does; returns its outputs."""
    fn = next(f for f in demo.fns.values() if f.name == name)
    body = json.dumps({"data": data, "fn_index": fn._id, "trigger_id": fn.targets[0][0], "event_data": None,
                       "session_hash": session_hash}).encode()
    join = urllib.request.Request(f"{url}gradio_api/queue/join", data=body,
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(join, timeout=30) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session_hash}", timeout=120) as r:
        for line in r:
            msg = json.loads(line[5:]) if line.startswith(b"data:") else {}
            if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                assert msg.get("success"), msg
                return msg["output"]["data"]
    raise AssertionError(f"the page event {name} never completed")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, rgb_checkpoint, tmp_path_factory):
    """The app on a free port, started on the grayscale tiny model with the colour one in its checkpoints folder;
    yields (url, the colour model's name in the model list, demo)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    colour = str(shutil.copytree(rgb_checkpoint, folder / "colour"))
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(folder))
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", colour, demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def colour_run(client, server):
    """One /generate run on the colour model (class Red, 4 images, 30 steps) in `client`'s session: the job."""
    job = client.submit(*api_args(server[1], label="0 · Red", steps=30, n_images=4), api_name="/generate")
    job.result(timeout=120)
    return job


@pytest.mark.slow
def test_the_model_list_offers_the_colour_model_and_selecting_it_relabels_the_page(server, client):
    url, colour, demo = server
    assert colour in [value for _, value in block(demo, "Model").choices]
    model, _, facts, label, *_ = page_event(url, client.session_hash, demo, "select_model", [colour])
    assert model == colour and "12px synthetic-rgb" in facts
    assert [c[1] for c in label["choices"]] == ["0 · Red", "1 · Green", "2 · Blue"] and label["value"] == "0 · Red"


@pytest.mark.slow
def test_generate_streams_colour_frames_then_a_colour_png_gif_and_mp4(colour_run):
    import av

    live_xt, live_x0, status, final, video, files, scrubber, run_info = colour_run.result()
    assert status.startswith("**Done:** 30 steps") and "label 0 " in run_info and scrubber["maximum"] == 29
    streamed = [o for o in colour_run.outputs() if isinstance(o[0], str)]  # the updates that carry live frames
    assert len(streamed) >= 2 and streamed[-1][2].startswith("**Step 30 / 30**")
    for o in streamed:
        with data_url_image(o[0]) as xt, data_url_image(o[1]) as x0:
            assert xt.mode == x0.mode == "RGB" and xt.size == x0.size == (30, 30)  # a 2x2 grid of 12x12, padded
            assert coloured(xt) > 0.2 and coloured(x0) > 0.05, o[2]
    with data_url_image(streamed[0][0]) as noise:  # step 1: x_t is still nearly N(0, I) in each channel
        assert coloured(noise) > 0.4

    with Image.open(final) as im, data_url_image(streamed[-1][0]) as last:
        assert im.format == "PNG" and im.mode == "RGB" and coloured(im) > 0.2
        scale = im.size[0] // last.size[0]  # the final grid is the last x_t, enlarged: the same colours
        assert np.array_equal(pixels(im)[::scale, ::scale], pixels(last))

    gif = next(f for f in files if f.endswith(".gif"))
    with Image.open(gif) as im:
        gif_frames = [pixels(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    with av.open(video) as container:
        mp4_frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    assert len(gif_frames) >= 2 and len(mp4_frames) >= len(gif_frames)
    assert all(coloured(f) > 0.2 for f in gif_frames) and all(coloured(f) > 0.2 for f in mp4_frames)
    for g, m in ((gif_frames[0], mp4_frames[0]), (gif_frames[-1], mp4_frames[-1])):  # the same frames, same colours
        h, w, _ = g.shape
        assert np.abs(m[:h, :w] - g).mean() < 12  # a swap of two channels would be ~60 levels off


@pytest.mark.slow
def test_scrubbing_the_colour_run_shows_its_recorded_colour_frames(colour_run, client):
    last = [o for o in colour_run.outputs() if isinstance(o[0], str)][-1]
    for index in (0, 29):
        xt, x0, status = client.predict(index, api_name="/scrub")
        assert status.startswith(f"Recorded step {index + 1}/30")
        with data_url_image(xt) as a, data_url_image(x0) as b:
            assert a.mode == b.mode == "RGB" and coloured(a) > 0.2 and coloured(b) > 0.05
    with data_url_image(xt) as scrubbed, data_url_image(last[0]) as streamed:  # step 30 as it was streamed
        assert np.array_equal(pixels(scrubbed), pixels(streamed))


@pytest.mark.slow
def test_the_forward_process_noises_the_red_example_in_colour(server):
    from gradio_client import Client

    url, colour, demo = server
    session = Client(url, verbose=False)  # a session of its own: x_0 is a per-session state
    # what the page does on switching to the model: list its examples, then the example picked becomes x_0
    example, *_ = page_event(url, session.session_hash, demo, "example_choices", [colour])
    assert [c[1] for c in example["choices"]] == ["0 · Red", "1 · Green", "2 · Blue"]
    page_event(url, session.session_hash, demo, "pick_example", [colour, "0 · Red"])

    xt, text, strip, plot = session.predict(colour, 10, 0, api_name="/forward")
    assert text.startswith("**t = 10**") and plot
    red = pixels(xt)  # at t = 10 x_t is still x_0: a red bar (2 of 12 rows) on black
    bar = (red[..., 0] > 200) & (red[..., 1] < 60) & (red[..., 2] < 60)
    assert 0.1 < bar.mean() < 0.25 and coloured(red) == pytest.approx(bar.mean(), abs=0.02)
    assert not ((red[..., 1] > 128) | (red[..., 2] > 128)).any()  # no green or blue: the channels keep their order
    images = [pixels(item["image"]) for item in strip]  # RGB PNGs, from t near 0 to the noisiest
    assert len(images) == 8
    first, noisiest = images[0], images[-1]
    assert (first[..., 0] - first[..., 1:].max(axis=2) > 100).mean() > 0.1  # still red at the least noise
    assert coloured(noisiest) > 0.4  # noise in every channel of its own


@pytest.mark.slow
def test_the_guidance_explorer_returns_colour_images(client, server):
    gallery = client.predict(server[1], "2 · Blue", 10, 1, "ddim", 0.0, "fp32", api_name="/guidance_explorer")
    assert [item["caption"] for item in gallery] == ["CFG 0", "CFG 1", "CFG 2", "CFG 3", "CFG 5", "CFG 8"]
    images = [pixels(item["image"]) for item in gallery]
    assert all(coloured(a) > 0.2 for a in images)
    assert not np.array_equal(images[0], images[-1])  # the scales differ: six images, not one six times


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                    reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_colour_model_generates_colour_in_the_browser(server, tmp_path):
    """Switch the page to the colour model, Generate, and read the pixels the browser shows: live x_t and final."""
    from playwright.sync_api import expect, sync_playwright

    url, colour, _ = server
    with sync_playwright() as p:
        context = browser(p, tmp_path / "profile")
        try:
            page = context.new_page()
            page.goto(url)
            expect(page.locator("#live-xt")).to_be_visible(timeout=60_000)
            page.get_by_role("combobox", name="Model").click()
            page.get_by_role("option", name=Path(colour).name).click()
            expect(page.locator("#model-info")).to_contain_text("12px synthetic-rgb", timeout=30_000)
            expect(page.get_by_role("combobox", name="Class")).to_have_value("0 · Red")

            page.evaluate(WATCH_LIVE_FRAMES, "")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#status")).to_contain_text("Done:", timeout=120_000)

            live = page.locator("#live-xt img")
            assert live.get_attribute("src").startswith("data:image/png;base64,")
            shown = live.evaluate(COLOUR_IN_PAGE)
            assert shown["width"] == 30 and shown["coloured"] > 0.2, shown  # the final 2x2 grid of x_t
            frames = page.evaluate("window.__live")
            assert frames and all(f["src"].startswith("data:image/png;base64,") for f in frames)
            with data_url_image(frames[0]["src"]) as first:  # the first x_t the page showed: coloured noise
                assert first.mode == "RGB" and coloured(first) > 0.4

            final = page.locator("#final img")
            expect(final).to_be_visible(timeout=30_000)
            assert final.get_attribute("src").endswith(".png")
            result = final.evaluate(COLOUR_IN_PAGE)
            assert result["width"] > 200 and result["coloured"] > 0.2, result
            expect(page.locator("#video video")).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)  # let the video show its first frame (for the screenshot only)
            page.screenshot(path="/tmp/colour_app.png", full_page=True)
        finally:
            context.close()
