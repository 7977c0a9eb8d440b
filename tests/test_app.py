"""app.py: the Gradio handlers in-process, the HTTP API through gradio_client, and `python app.py` itself.

The app runs on the shared tiny checkpoint (12x12, 3 classes). The browser test is in test_app_browser.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import av  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
import ddpm  # noqa: E402
from ddpm.checkpoint import DEFAULT_SAMPLING  # noqa: E402
from ddpm.frames import Frame, grid_scale, to_grid  # noqa: E402
from ddpm.images import to_pil  # noqa: E402
from ddpm.studio import SEED_MAX  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOOD = dict(label="1 · Vertical", cfg=3.0, steps=12, seed=3, n_images=4, sampler="ddim", eta=0.0, precision="fp32",
            limit_guidance=False, spacing=1.0, redraws=0)
ORDER = ("label", "cfg", "steps", "seed", "n_images", "sampler", "eta", "precision", "limit_guidance", "spacing",
         "redraws")
BAD_INPUTS = [  # (field, value, the message must contain these)
    ("label", "Dog", ["'Dog'", "Horizontal, Vertical, Square", "0..2"]),
    ("label", 7, ["label 7", "0..2"]),
    ("label", "5 · Sandal", ["label 5", "0..2"]),
    ("steps", 0, ["steps", "1..1000", "got 0"]),
    ("steps", 1001, ["1..1000", "got 1001"]),
    ("cfg", -1.0, ["cfg", "0..10", "got -1.0"]),
    ("cfg", float("nan"), ["cfg", "finite", "got nan"]),
    ("cfg", float("inf"), ["cfg", "finite", "got inf"]),
    ("seed", -5, ["seed", f"0..{SEED_MAX}", "got -5"]),
    ("seed", 2.5, ["seed", "integer", "got 2.5"]),
    ("seed", "lucky", ["seed", "integer", "got 'lucky'"]),
    ("seed", SEED_MAX + 1, ["seed", f"got {SEED_MAX + 1}"]),
    ("n_images", 5, ["number of images", "1, 4, 9, 16", "got 5"]),
    ("sampler", "euler", ["'euler'", "ddpm, ddim"]),
    ("precision", "fp8", ["'fp8'", "auto, fp32, bf16"]),
    ("limit_guidance", "yes", ["limit_guidance", "true or false", "got 'yes'"]),
    ("spacing", 0.5, ["spacing", "1..4", "got 0.5"]),
    ("spacing", "wide", ["spacing", "1..4", "got 'wide'"]),
    ("redraws", 7, ["redraws", "0..5", "got 7"]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handler(demo: gr.Blocks, api_name: str):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def keyed(out: dict) -> dict:
    """A handler's {component: value} as {elem_id or "frames": value}."""
    return {("frames" if isinstance(k, gr.State) else k.elem_id or getattr(k, "label", None)): v
            for k, v in out.items()}


def args(**overrides) -> list:
    values = {**GOOD, **overrides}
    return [values[k] for k in ORDER]


@pytest.fixture(scope="module")
def demo(tiny_checkpoint, tmp_path_factory):
    return app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path_factory.mktemp("no_checkpoints")))


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "RUNS_DIR", tmp_path / "runs")


def run_generate(demo, model, **overrides) -> list[dict]:
    return [keyed(o) for o in handler(demo, "generate")(model, *args(**overrides))]


# -- in-process -------------------------------------------------------------------------------------
def test_generate_streams_every_planned_frame_then_the_results(demo, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(app, "STREAM_RATE", 1e9)  # no throttling: every step is planned and streamed
    outs = run_generate(demo, str(tiny_checkpoint))
    live = [o for o in outs if "live-xt" in o]
    assert [o["status"].split(" · ")[0] for o in live] == [f"**Step {i} / 12**" for i in range(1, 13)]
    assert all(isinstance(o["live-xt"], Image.Image) and isinstance(o["live-x0"], Image.Image) for o in live)
    assert len({o["live-xt"].tobytes() for o in live}) == 12  # x_t changes at every step
    assert live[0]["live-xt"].size == live[0]["live-x0"].size
    assert live[0]["live-xt"].width >= 300  # enlarged from 2x2 grids of 12 px

    final = outs[-1]
    png, gif, mp4 = (Path(p) for p in final["files"])
    assert Path(final["final"]) == png and Path(final["video"]) == mp4
    assert (png.suffix, gif.suffix, mp4.suffix) == (".png", ".gif", ".mp4")
    frames = final["frames"]
    assert len(frames) == 12 and all(isinstance(f, Frame) for f in frames)
    assert final["scrubber"]["maximum"] == 11 and final["scrubber"]["interactive"] is True
    assert "seed 3" in final["run-info"] and "fp32" in final["run-info"]
    with Image.open(gif) as im:
        assert im.n_frames == 12
    with av.open(str(mp4)) as c:
        assert c.streams.video[0].codec_context.name == "h264"

    # the PNG holds exactly what the library samples for these settings, enlarged nearest-neighbour
    x = ddpm.load(tiny_checkpoint).sample(labels=[1] * 4, seed=3, steps=12, cfg=3.0, sampler="ddim")
    grid = to_grid(x)
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert np.array_equal(np.asarray(im), np.asarray(to_pil(grid, scale=grid_scale(grid.shape[1], 512))))


def test_generate_with_the_real_throttle_always_streams_first_and_last_step(demo, tiny_checkpoint):
    outs = run_generate(demo, str(tiny_checkpoint), steps=40, n_images=1, sampler="ddpm")
    steps = [int(o["status"].split(" / ")[0].split()[-1]) for o in outs if "live-xt" in o]
    assert steps[0] == 1 and steps[-1] == 40 and steps == sorted(set(steps))
    assert "files" in outs[-1]


def test_same_seed_same_images_and_seed_i_is_image_i(demo, tiny_checkpoint):
    a = run_generate(demo, str(tiny_checkpoint), seed=11)[-1]
    b = run_generate(demo, str(tiny_checkpoint), seed=11)[-1]
    c = run_generate(demo, str(tiny_checkpoint), seed=12)[-1]
    read = lambda o: Path(o["final"]).read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)


@pytest.mark.parametrize("field, value, parts", BAD_INPUTS)
def test_bad_inputs_raise_gr_error_naming_value_and_range(demo, tiny_checkpoint, field, value, parts):
    with pytest.raises(gr.Error) as err:
        next(handler(demo, "generate")(str(tiny_checkpoint), *args(**{field: value})))
    for part in parts:
        assert part in err.value.message


def test_unknown_model_is_refused(demo):
    with pytest.raises(gr.Error, match=r"unknown model '/etc'; choose one of"):
        next(handler(demo, "generate")("/etc", *args()))


def test_scrubber_shows_recorded_steps(demo, tiny_checkpoint):
    frames = run_generate(demo, str(tiny_checkpoint), steps=60)[-1]["frames"]
    assert len(frames) == 40  # a few dozen log-SNR-spaced frames, not all 60 steps
    scrub = handler(demo, "scrub")
    xt, x0, caption = scrub(0, frames)
    assert caption == f"Recorded step 1/60 · t = {frames[0].t}"
    assert np.array_equal(np.asarray(xt.resize((frames[0].x_t.shape[1], frames[0].x_t.shape[0]), Image.NEAREST)),
                          frames[0].x_t[..., 0])
    assert scrub(39, frames)[2].startswith("Recorded step 60/60")
    for bad in (40, -1, "x"):
        with pytest.raises(gr.Error, match=r"frame must be a number in 0\.\.39"):
            scrub(bad, frames)
    with pytest.raises(gr.Error, match="press Generate first"):
        scrub(0, [])


def test_guidance_explorer_returns_one_image_per_scale(demo, tiny_checkpoint):
    items = handler(demo, "guidance_explorer")(str(tiny_checkpoint), "2 · Square", 6, 4, "ddim", 0.0, "auto")
    assert [c for _, c in items] == ["CFG 0", "CFG 1", "CFG 2", "CFG 3", "CFG 5", "CFG 8"]
    assert len({img.tobytes() for img, _ in items}) > 1
    with pytest.raises(gr.Error, match="steps must be an integer in 1..1000"):
        handler(demo, "guidance_explorer")(str(tiny_checkpoint), "2 · Square", 0, 4, "ddim", 0.0, "auto")


def test_a_model_recommending_a_guidance_interval_gets_the_checkbox_and_uses_it(tiny_checkpoint, tmp_path):
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoints" / "interval"))
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = {"cfg": 4.0, "guidance_interval": [0.2, 0.7]}
    (folder / "config.json").write_text(json.dumps(config))
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "checkpoints"))
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "interval")
    assert box.visible is False  # the starting model recommends no interval
    out = keyed(handler(demo, "select_model")(str(folder)))
    assert out["interval"]["visible"] is True and out["interval"]["value"] is True
    assert out["interval"]["label"] == "Guide only for t/T in 0.2..0.7"
    final = run_generate(demo, str(folder), cfg=4.0, limit_guidance=True)[-1]
    assert "CFG 4 for t/T in 0.2..0.7" in final["run-info"]
    assert "for t/T" not in run_generate(demo, str(folder), cfg=4.0)[-1]["run-info"]
    back = keyed(handler(demo, "select_model")(str(tiny_checkpoint)))
    assert back["interval"]["visible"] is False


@pytest.mark.parametrize("sampling, expected", [
    ({"sampler": "ddpm", "steps": 40, "cfg": 2.5, "spacing": 1.5},
     {"sampler": "ddpm", "steps": 40, "cfg": 2.5, "spacing": 1.5, "eta": 0.0}),
    ({"sampler": "ddim", "steps": 30, "cfg": 1.75, "eta": 0.2},
     {"sampler": "ddim", "steps": 30, "cfg": 1.75, "spacing": 1.0, "eta": 0.2}),
    ({"sampler": "dpm++2m", "steps": 25, "cfg": 2.0, "spacing": 1.25},
     {"sampler": "dpm++2m", "steps": 25, "cfg": 2.0, "spacing": 1.25, "eta": 0.0}),
    ({}, {"sampler": DEFAULT_SAMPLING["sampler"], "steps": DEFAULT_SAMPLING["steps"], "cfg": DEFAULT_SAMPLING["cfg"],
          "spacing": 1.0, "eta": 0.0}),
    # junk in a hand-edited config.json: the shared fallbacks, or clamped into the controls' ranges
    ({"sampler": "euler", "steps": "many", "cfg": True, "spacing": "wide", "eta": "some"},
     {"sampler": "ddim", "steps": 50, "cfg": 3.0, "spacing": 1.0, "eta": 0.0}),
    ({"steps": 5000, "cfg": 99, "spacing": 9, "eta": 3}, {"sampler": "ddim", "steps": 1000, "cfg": app.CFG_MAX,
                                                          "spacing": 4.0, "eta": 1.0}),
])
def test_the_controls_start_at_the_checkpoints_recommendation(tiny_checkpoint, tmp_path, sampling, expected):
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "rec"))
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = sampling
    (folder / "config.json").write_text(json.dumps(config))
    demo = app.build_demo(str(folder), checkpoints_dir=str(tmp_path / "none"))
    sliders = {b.label: b.value for b in demo.blocks.values() if isinstance(b, (gr.Slider, gr.Radio))}
    assert {"sampler": sliders["Sampler"], "steps": sliders["Steps"], "cfg": sliders["CFG scale (guidance)"],
            "spacing": sliders["Time-step spacing"], "eta": sliders["DDIM eta (0 = deterministic)"]} == expected
    out = keyed(handler(demo, "select_model")(str(folder)))
    assert out["Steps"]["value"] == expected["steps"] and out["CFG scale (guidance)"]["value"] == expected["cfg"]
    assert out["spacing"] == expected["spacing"]
    eta = out["DDIM eta (0 = deterministic)"]
    assert eta["value"] == expected["eta"] and eta["visible"] == (expected["sampler"] == "ddim")


def test_generate_with_a_time_step_spacing(demo, tiny_checkpoint, monkeypatch):
    """The run follows the spacing: its statuses name the spaced time steps, and the result differs from even steps."""
    monkeypatch.setattr(app, "STREAM_RATE", 1e9)
    outs = run_generate(demo, str(tiny_checkpoint), steps=6, spacing=2.0)
    ts = [int(o["status"].split("t = ")[1].split(" ")[0]) for o in outs if "live-xt" in o]
    assert ts == [999, 639, 360, 160, 40, 0]
    assert "6 steps (spacing 2)" in outs[-1]["run-info"]
    even = run_generate(demo, str(tiny_checkpoint), steps=6)[-1]
    assert Path(even["final"]).read_bytes() != Path(outs[-1]["final"]).read_bytes()


@pytest.mark.parametrize("redraws, expected", [(2, 2), (9, 5), (-3, 0), ("many", 0), (None, 0)])
def test_the_redraw_slider_starts_at_the_checkpoints_recommendation(tiny_checkpoint, tmp_path, redraws, expected):
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "rec"))
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = {} if redraws is None else {"redraws": redraws}
    (folder / "config.json").write_text(json.dumps(config))
    demo = app.build_demo(str(folder), checkpoints_dir=str(tmp_path / "none"))
    assert next(b.value for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "Redraw rounds") \
        == expected
    assert keyed(handler(demo, "select_model")(str(folder)))["redraws"]["value"] == expected


def test_generate_with_redraws_streams_the_redrawn_images_and_ends_with_the_kept_ones(demo, tiny_checkpoint,
                                                                                      monkeypatch):
    """Redraw rounds run after the first draw: their steps are streamed and recorded as 'redraw r', and the final
    PNG holds what the library's sample() with the same redraws returns."""
    monkeypatch.setattr(app, "STREAM_RATE", 1e9)
    pipe = ddpm.load(tiny_checkpoint)
    kw = dict(steps=6, sampler="ddim", cfg=1.0)
    # a seed whose 4 images the (barely trained) tiny model does not all read as their class
    seed = next(s for s in range(50) if [st.draw for st in pipe.stream([1] * 4, seed=s, redraws=1, **kw)][-1] == 1)
    outs = [keyed(o) for o in handler(demo, "generate")(str(tiny_checkpoint), *args(
        seed=seed, steps=6, cfg=1.0, redraws=1))]
    live = [o["status"] for o in outs if "live-xt" in o]
    assert [x.split(" · ")[0] for x in live[:6]] == [f"**Step {i} / 6**" for i in range(1, 7)]
    assert live[6].startswith("**Redraw 1**") and "**Step 1 / 6**" in live[6]
    final = outs[-1]
    assert "1 redraw round" in final["status"] and "up to 1 redraw round" in final["run-info"]
    assert [f.draw for f in final["frames"]][:6] == [0] * 6 and final["frames"][6].caption.startswith("redraw 1 · ")
    x = pipe.sample(labels=[1] * 4, seed=seed, redraws=1, **kw)
    grid = to_grid(x)
    with Image.open(final["final"]) as im:
        assert np.array_equal(np.asarray(im), np.asarray(to_pil(grid, scale=grid_scale(grid.shape[1], 512))))
    # without redraws the same seed gives other images
    plain = run_generate(demo, str(tiny_checkpoint), seed=seed, steps=6, cfg=1.0)[-1]
    assert Path(plain["final"]).read_bytes() != Path(final["final"]).read_bytes()


def test_forward_view(demo, tiny_checkpoint):
    x0 = np.zeros((12, 12, 1), dtype=np.uint8)
    x0[4:8] = 255
    xt, text, strip, plot = handler(demo, "forward")(str(tiny_checkpoint), x0, 0)
    alpha_bar = ddpm.load(tiny_checkpoint).schedule.alpha_bar
    assert "t = 0" in text and f"ᾱₜ = {float(alpha_bar[0]):.5f}" in text and "0.9999" in text
    small = np.asarray(xt.resize((12, 12), Image.NEAREST))
    assert np.abs(small.astype(int) - x0[..., 0]).max() <= 3  # t = 0: nearly x_0
    assert [c for _, c in strip][0] == "t = 0" and [c for _, c in strip][-1] == "t = 999" and len(strip) == 8
    assert isinstance(plot, Image.Image) and plot.width > 500
    _, text_end, _, _ = handler(demo, "forward")(str(tiny_checkpoint), x0, 999)
    assert "t = 999" in text_end and f"ᾱₜ = {float(alpha_bar[999]):.5f}" in text_end
    with pytest.raises(gr.Error, match=r"t must be an integer in 0\.\.999"):
        handler(demo, "forward")(str(tiny_checkpoint), x0, 1000)


def test_an_example_is_picked_by_name_and_a_stale_name_changes_nothing(demo, tiny_checkpoint):
    names = handler(demo, "example_choices")(str(tiny_checkpoint))["choices"]
    assert names
    image, view = handler(demo, "pick_example")(str(tiny_checkpoint), names[-1])
    assert image.shape == (12, 12, 1) and image.dtype == np.uint8 and view.width >= 224
    # the previous model's example, arriving after a switch: no error toast, no change; the new list's event follows
    stale = handler(demo, "pick_example")(str(tiny_checkpoint), "0 · T-shirt-top")
    assert stale == (gr.skip(), gr.skip()) and "value" not in stale[0]


def test_queue_and_concurrency_settings(demo):
    assert demo._queue.max_size == app.QUEUE_SIZE
    fns = {f.api_name: f for f in demo.fns.values()}
    assert fns["generate"].concurrency_limit == 1
    assert fns["generate"].concurrency_id == fns["guidance_explorer"].concurrency_id  # one model run at a time
    assert demo.delete_cache is not None
    images = [b for b in demo.blocks.values() if isinstance(b, gr.Image)]
    assert images and all(b.format == "png" for b in images)


def test_load_failure_is_shown_and_falls_back(tiny_checkpoint, tmp_path):
    demo = app.build_demo(str(tiny_checkpoint), hub=str(tmp_path / "not-there"), checkpoints_dir=str(tmp_path))
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and "Could not load" in str(b.value)]
    assert len(notes) == 1 and str(tmp_path / "not-there") in notes[0] and str(tiny_checkpoint) in notes[0]
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Model")
    assert dropdown.value == str(tiny_checkpoint)
    assert [c[1] for c in dropdown.choices] == [str(tiny_checkpoint)]
    # switching to a model that cannot be loaded (any more) falls back with a message
    out = keyed(handler(demo, "select_model")("/etc"))
    assert out["Model"] == str(tiny_checkpoint)
    note = out["model-note"]
    assert note["visible"] is True and "unknown model '/etc'" in note["value"]


def test_no_loadable_model_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="no model could be loaded"):
        app.build_demo(str(tmp_path / "missing"), checkpoints_dir=str(tmp_path))


def test_memory_stays_flat_over_many_runs(demo, tiny_checkpoint):
    def one():
        for _ in handler(demo, "generate")(str(tiny_checkpoint), *args(steps=8, n_images=16)):
            pass

    one()
    tracemalloc.start()
    try:
        one()
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(12):
            one()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, f"{grown / 1e6:.1f} MB kept after 12 runs"


# -- the HTTP API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """The app on a free port of 127.0.0.1 in this process; yields (url, model)."""
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path_factory.mktemp("none")))
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", str(tiny_checkpoint)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def api_args(model, **overrides) -> list:
    return [model, *args(**overrides)]


def test_api_generate_streams_frames_then_png_gif_mp4(client, server):
    job = client.submit(*api_args(server[1], steps=30, n_images=1), api_name="/generate")
    live_xt, live_x0, status, final, video, files, scrubber, run_info = job.result(timeout=120)
    with Image.open(final) as im:
        assert im.format == "PNG"  # not webp: the images are sent lossless
    assert Path(video).suffix == ".mp4"
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4", ".png"]
    assert status.startswith("**Done:** 30 steps") and "seed 3" in run_info and scrubber["maximum"] == 29
    streamed = [o for o in job.outputs() if isinstance(o[0], str)]  # outputs that carry live frames
    assert streamed and streamed[0][2].startswith("**Step 1 / 30**") and streamed[-1][2].startswith("**Step 30 / 30**")
    for o in streamed[:2]:
        with Image.open(o[0]) as xt, Image.open(o[1]) as x0:
            assert xt.format == x0.format == "PNG" and xt.size == x0.size


def call_raw(url: str, data: list) -> tuple[str, str]:
    """POST /gradio_api/call/generate with a JSON body as Python writes it (NaN and Infinity allowed, which
    gradio_client refuses to send); returns the (event, data) of the last server-sent event."""
    body = json.dumps({"data": data}).encode()
    req = urllib.request.Request(f"{url}gradio_api/call/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/generate/{event_id}", timeout=120) as r:
        lines = r.read().decode().strip().splitlines()
    return lines[-2].removeprefix("event: "), lines[-1].removeprefix("data: ")


@pytest.mark.parametrize("field, value, parts", BAD_INPUTS)
def test_api_bad_input_is_an_error_and_the_server_keeps_serving(client, server, field, value, parts):
    from gradio_client.exceptions import AppError

    if isinstance(value, float) and not math.isfinite(value):
        event, message = call_raw(server[0], api_args(server[1], **{field: value}))
        assert event == "error"
    else:
        with pytest.raises(AppError) as err:
            client.predict(*api_args(server[1], **{field: value}), api_name="/generate")
        message = str(err.value)
    for part in parts:
        assert part in message
    result = client.predict(*api_args(server[1], steps=2, n_images=1), api_name="/generate")
    assert result[2].startswith("**Done:** 2 steps")


def test_api_unknown_model_is_refused(client, server):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"unknown model '/etc'; choose one of"):
        client.predict("/etc", *args(), api_name="/generate")


def test_api_two_users_at_once_get_their_own_results(client, server):
    from gradio_client import Client

    requests = {"a": dict(seed=21, label="0 · Horizontal"), "b": dict(seed=22, label="2 · Square")}
    alone = {k: Path(client.predict(*api_args(server[1], **r), api_name="/generate")[3]).read_bytes()
             for k, r in requests.items()}
    results = {}

    def user(key):
        c = Client(server[0], verbose=False)
        results[key] = Path(c.predict(*api_args(server[1], **requests[key]), api_name="/generate")[3]).read_bytes()

    threads = [threading.Thread(target=user, args=(k,)) for k in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == alone and alone["a"] != alone["b"]


# -- `python app.py` ----------------------------------------------------------------------------------
def test_main_listens_where_the_environment_says_and_reports_a_bad_hub(tiny_checkpoint, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "GRADIO_SERVER_NAME")}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), DDPM_HUB_REPO=str(tmp_path / "nohub"),
               PYTHONPATH=str(ROOT), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(tiny_checkpoint)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        config = None
        deadline = time.monotonic() + 120  # start-up wait, not a speed check
        while config is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.load(r)
            except OSError:
                time.sleep(0.5)
        assert config is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        text = json.dumps(config)
        assert f"Could not load `{tmp_path / 'nohub'}`" in text and str(tiny_checkpoint) in text
        assert config.get("analytics_enabled") is False
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_main_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        app.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--checkpoint", "--hub", "DDPM_HUB_REPO", "GRADIO_SERVER_NAME"):
        assert flag in out


def test_models_load_and_run_on_the_demos_torch_thread(tiny_checkpoint, tmp_path, monkeypatch):
    """gradio calls handlers on its worker threads; the model must still load and run on one thread."""
    import ddpm.studio
    from ddpm.torch_thread import TorchThread

    tt = TorchThread()
    loads, forwards = [], []
    real_load = ddpm.studio.load

    def recording_load(source):
        loads.append(threading.get_ident())
        pipe = real_load(source)
        pipe.model.register_forward_pre_hook(lambda *_: forwards.append(threading.get_ident()))
        return pipe

    monkeypatch.setattr(ddpm.studio, "load", recording_load)
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "none"), torch_thread=tt)
    outs = run_generate(demo, str(tiny_checkpoint), steps=3)
    assert "**Done:**" in outs[-1]["status"]
    gallery = handler(demo, "guidance_explorer")(str(tiny_checkpoint), "1 · Vertical", 3, 0, "ddim", 0.0, "fp32")
    assert len(gallery) > 1
    assert loads == [tt.ident] and len(forwards) >= 3 and set(forwards) == {tt.ident}
    assert tt.ident != threading.get_ident()
