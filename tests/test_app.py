"""app.py: the page's starting state, the wiring, the HTTP API through gradio_client, and `python app.py` itself.

The handlers' logic is tested as plain functions in test_handlers.py; here the app runs on the shared tiny
checkpoint (12x12, 3 classes) behind a real server. The browser test is in test_app_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
import ddpm.registry  # noqa: E402
from conftest import PER_CLASS  # noqa: E402
from ddpm import handlers  # noqa: E402
from ddpm.budget import DEFAULT_QUEUE_SIZE, Budget  # noqa: E402
from ddpm.registry import ModelRegistry  # noqa: E402
from ddpm.studio import CFG_MAX  # noqa: E402
from ddpm.torch_thread import TorchThread  # noqa: E402
from tests.test_handlers import BAD_INPUTS, args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = {  # the public API: endpoint -> its parameters (name, default) in order; gradio_client users rely on it
    "/generate": ["model", "label", "cfg", "steps", "seed", "n_images", "sampler", "eta", "precision",
                  "limit_guidance", "spacing", "redraws"],
    "/guidance_explorer": ["model", "label", "steps", "seed", "sampler", "eta", "precision", "limit_guidance",
                           "spacing"],
    "/scrub": ["index"],
    "/forward": ["model", "t", "seed"],
    "/edit": ["model", "image", "mask", "invert", "strength", "label", "cfg", "steps", "seed", "n_images", "sampler",
              "eta", "precision", "limit_guidance", "spacing", "jumps"],
    "/interpolate": ["model", "seed_a", "seed_b", "label_a", "label_b", "k", "cfg", "steps", "sampler", "eta",
                     "precision", "limit_guidance", "spacing"],
    "/denoise_from_here": ["model", "t", "seed", "label"],
}
RETURNS = {  # what the streaming endpoints send back, in order
    "/generate": ["Html", "Html", "Markdown", "Image", "Video", "File", "Slider", "Markdown"],  # live: PNG data URLs
    "/edit": ["Html", "Html", "Markdown", "Image", "Video", "File", "Slider", "Markdown", "Image", "Markdown"],
    "/interpolate": ["Html", "Html", "Markdown", "Image", "Video", "File", "Markdown"],
    "/denoise_from_here": ["Html", "Html", "Markdown"],
}


def data_url_image(url: str) -> Image.Image:
    """The image of a live frame: a PNG data URL."""
    assert url.startswith("data:image/png;base64,"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def block(demo: gr.Blocks, label: str):
    return next(b for b in demo.blocks.values() if getattr(b, "label", None) == label)


@pytest.fixture(scope="module")
def demo(tiny_checkpoint, tmp_path_factory):
    return app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path_factory.mktemp("no_checkpoints")))


# -- the page as it starts, and the wiring ------------------------------------------------------------
@pytest.mark.parametrize("sampling, expected", [
    ({"sampler": "ddpm", "steps": 40, "cfg": 2.5, "spacing": 1.5},
     {"sampler": "ddpm", "steps": 40, "cfg": 2.5, "spacing": 1.5, "eta": 0.0, "redraws": 0}),
    ({"sampler": "ddim", "steps": 30, "cfg": 1.75, "eta": 0.2, "redraws": 2},
     {"sampler": "ddim", "steps": 30, "cfg": 1.75, "spacing": 1.0, "eta": 0.2, "redraws": 2}),
    ({"sampler": "dpm++2m", "steps": 25, "cfg": 2.0, "spacing": 1.25},
     {"sampler": "dpm++2m", "steps": 25, "cfg": 2.0, "spacing": 1.25, "eta": 0.0, "redraws": 0}),
    ({}, {"sampler": "ddim", "steps": 50, "cfg": 3.0, "spacing": 1.0, "eta": 0.0, "redraws": 0}),  # SamplerOptions()
    ({"steps": 1000, "cfg": 99}, {"sampler": "ddim", "steps": 1000, "cfg": CFG_MAX, "spacing": 1.0, "eta": 0.0,
                                  "redraws": 0}),  # a scale beyond the slider starts at its end
])
def test_the_controls_start_at_the_checkpoints_recommendation(tiny_checkpoint, tmp_path, with_sampling, sampling,
                                                               expected):
    folder = with_sampling(tiny_checkpoint, tmp_path / "rec", sampling)
    demo = app.build_demo(str(folder), checkpoints_dir=str(tmp_path / "none"))
    labels = {"sampler": "Sampler", "steps": "Steps", "cfg": "CFG scale (guidance)", "spacing": "Time-step spacing",
              "eta": "DDIM eta (0 = deterministic)", "redraws": "Redraw rounds"}
    assert {k: block(demo, label).value for k, label in labels.items()} == expected
    assert block(demo, "DDIM eta (0 = deterministic)").visible == (expected["sampler"] == "ddim")
    assert block(demo, "Precision").value == "auto" and block(demo, "Number of images").value == 4


def test_a_recommended_interval_shows_the_checkbox_ticked(tiny_checkpoint, tmp_path, with_sampling, demo):
    folder = with_sampling(tiny_checkpoint, tmp_path / "interval", {"cfg": 4.0, "guidance_interval": [0.2, 0.7]})
    box = interval_box(app.build_demo(str(folder), checkpoints_dir=str(tmp_path / "none")))
    assert box.visible is True and box.value is True and box.label == "Guide only for t/T in 0.2..0.7"
    assert interval_box(demo).visible is False  # the tiny model recommends no interval


def interval_box(demo: gr.Blocks) -> gr.Checkbox:
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "interval")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_app_moves_the_cfg_slider_to_the_chosen_class(per_class: Path, tiny_checkpoint: Path, tmp_path: Path):
    def slider(demo: gr.Blocks) -> gr.Slider:
        return next(b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "CFG scale (guidance)")

    demo = app.build_demo(str(per_class), checkpoints_dir=str(tmp_path / "none"))
    assert slider(demo).value == PER_CLASS[0] and "scale per class" in slider(demo).info  # the dropdown starts at 0
    # the browser moves the slider (CLASS_SCALE_JS) from the scales the page holds
    scales = next(b for b in demo.blocks.values() if isinstance(b, gr.JSON) and not b.visible)
    assert scales.value == {"names": ["horizontal", "vertical", "square"], "scales": PER_CLASS}
    assert not slider(app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "none"))).info

    # switching models: the page takes the new model's scales, or none (one scale: the person's w stays)
    registry = ModelRegistry([str(tiny_checkpoint), str(per_class)])
    view = handlers.select_model(registry, str(per_class), fallback=str(tiny_checkpoint))
    assert view.cfg == PER_CLASS[0] and "scale per class" in view.cfg_info and view.class_scales["scales"] == PER_CLASS
    view = handlers.select_model(registry, str(tiny_checkpoint), fallback=str(tiny_checkpoint))
    assert view.cfg_info == "" and view.class_scales is None  # "" clears the previous model's note


def test_a_checkpoint_with_a_bad_recommendation_is_reported_and_skipped(tiny_checkpoint, tmp_path, with_sampling):
    junk = with_sampling(tiny_checkpoint, tmp_path / "checkpoints" / "junk", {"steps": 5000, "sampler": "euler"})
    good = with_sampling(tiny_checkpoint, tmp_path / "checkpoints" / "good", {})
    demo = app.build_demo(str(junk), checkpoints_dir=str(tmp_path / "checkpoints"))
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and "Could not load" in str(b.value)]
    assert len(notes) == 1 and f"`{junk}`" in notes[0] and '"sampling" is invalid' in notes[0]
    assert block(demo, "Model").value == str(good)


def test_queue_and_concurrency_settings(demo):
    assert demo._queue.max_size == DEFAULT_QUEUE_SIZE
    fns = {f.api_name: f for f in demo.fns.values()}
    assert fns["generate"].concurrency_limit == 1
    assert fns["generate"].concurrency_id == fns["guidance_explorer"].concurrency_id  # one model run at a time
    assert demo.delete_cache is not None
    images = [b for b in demo.blocks.values() if isinstance(b, gr.Image)]
    assert images and all(b.format == "png" for b in images)


def test_the_api_keeps_its_endpoints_and_their_parameters(demo):
    info = demo.get_api_info()
    assert not info["unnamed_endpoints"] and set(info["named_endpoints"]) == set(ENDPOINTS)
    for name, params in ENDPOINTS.items():
        assert [p["parameter_name"] for p in info["named_endpoints"][name]["parameters"]] == params, name
    generate = info["named_endpoints"]["/generate"]["parameters"]
    assert all(p["parameter_has_default"] for p in generate)  # a client may leave out the later settings
    for name, returns in RETURNS.items():
        assert [p["component"] for p in info["named_endpoints"][name]["returns"]] == returns, name
    edit = {p["parameter_name"]: p for p in info["named_endpoints"]["/edit"]["parameters"]}
    assert edit["image"]["component"] == edit["mask"]["component"] == "Imageeditor"
    assert edit["strength"]["parameter_default"] == 0.6 and edit["jumps"]["parameter_default"] == 0
    interpolate = {p["parameter_name"]: p for p in info["named_endpoints"]["/interpolate"]["parameters"]}
    assert interpolate["k"]["parameter_default"] == 8 and interpolate["label_b"]["parameter_default"] == "same as A"


def test_the_idle_queue_looks_for_work_every_few_ms_not_every_ms(demo):
    # gradio's 1 ms poll costs ~5% of a core while idle (bench/bench_app.py prints the idle figure)
    assert demo._queue.sleep_when_free == app.QUEUE_POLL_S == 0.005


def test_every_run_shares_the_one_queue_slot(demo):
    fns = {f.api_name: f for f in demo.fns.values()}
    for name in ("generate", "guidance_explorer", "edit", "interpolate", "denoise_from_here"):
        assert (fns[name].concurrency_id, fns[name].concurrency_limit) == (fns["generate"].concurrency_id, 1), name
    stops = [f for f in demo.fns.values() if f.cancels]  # each tab's Stop button cancels its runs
    cancelled = {fns_id for f in stops for fns_id in f.cancels}
    assert {fns[n]._id for n in ("generate", "guidance_explorer", "edit", "interpolate", "denoise_from_here")} <= \
        cancelled


def test_the_page_says_the_hosting_limits_and_a_bad_variable_stops_start_up(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_MAX_COST", "2_000")
    monkeypatch.setenv("DDPM_QUEUE_SIZE", "5")
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path))
    line = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "limits")
    assert line == "Requests on this server: up to 2,000 image-steps (images x steps x rounds), stopped after 120 s; " \
                   "at most 5 wait in the queue." and demo._queue.max_size == 5
    for name, value in (("DDPM_MAX_COST", "lots"), ("DDPM_TIME_LIMIT_S", "soon"), ("DDPM_QUEUE_SIZE", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit, match=f"ddpm-studio: {name}='{value}': expected"):
            app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path))
        monkeypatch.delenv(name)


def test_load_failure_is_shown_and_falls_back(tiny_checkpoint, tmp_path):
    demo = app.build_demo(str(tiny_checkpoint), hub=str(tmp_path / "not-there"), checkpoints_dir=str(tmp_path))
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and "Could not load" in str(b.value)]
    assert len(notes) == 1 and str(tmp_path / "not-there") in notes[0] and str(tiny_checkpoint) in notes[0]
    dropdown = block(demo, "Model")
    assert dropdown.value == str(tiny_checkpoint)
    assert [c[1] for c in dropdown.choices] == [str(tiny_checkpoint)]


def test_no_loadable_model_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="no model could be loaded"):
        app.build_demo(str(tmp_path / "missing"), checkpoints_dir=str(tmp_path))


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
    return [model, *args(**overrides).values()]  # the endpoint's order


@pytest.mark.slow
def test_api_generate_streams_frames_then_png_gif_mp4_and_scrubs(client, server):
    job = client.submit(*api_args(server[1], steps=30, n_images=1), api_name="/generate")
    live_xt, live_x0, status, final, video, files, scrubber, run_info = job.result(timeout=120)
    with Image.open(final) as im:
        assert im.format == "PNG"  # not webp: the images are sent lossless
    assert Path(video).suffix == ".mp4"
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4", ".png"]
    assert status.startswith("**Done:** 30 steps") and "seed 3" in run_info and scrubber["maximum"] == 29
    streamed = [o for o in job.outputs() if isinstance(o[0], str)]  # outputs that carry live frames
    assert streamed and streamed[0][2].startswith("**Step 1 / 30**") and streamed[-1][2].startswith("**Step 30 / 30**")
    assert all(o[3] is None and o[5] is None for o in streamed)  # no stale result beside the live frames
    for o in streamed[:2]:
        with data_url_image(o[0]) as xt, data_url_image(o[1]) as x0:
            assert xt.format == x0.format == "PNG" and xt.size == x0.size  # lossless, at the model's resolution
    with data_url_image(streamed[-1][0]) as xt, Image.open(final) as im:  # the last x_t streamed: the final grid
        assert im.size[0] % xt.size[0] == 0 and np.array_equal(
            np.asarray(xt.convert("L")), np.asarray(im.convert("L"))[::im.size[0] // xt.size[0], ::im.size[0] // xt.size[0]])
    # the forward view and the guidance explorer through their endpoints
    xt, text, strip, plot = client.predict(server[1], 10, api_name="/forward")
    assert xt is None and text == "Pick an example or upload an image." and plot  # no x_0 in this session
    gallery = client.predict(server[1], "2 · Square", 4, 1, "ddim", 0.0, "auto", api_name="/guidance_explorer")
    assert [item["caption"] for item in gallery] == ["CFG 0", "CFG 1", "CFG 2", "CFG 3", "CFG 5", "CFG 8"]


@pytest.mark.slow
def test_api_edit_interpolate_and_denoise(client, server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bar = np.zeros((12, 12), dtype=np.uint8)
    bar[:, 5:7] = 255
    Image.fromarray(bar).save(tmp_path / "bar.png")
    Image.fromarray(np.full((5, 5), 255, dtype=np.uint8)).save(tmp_path / "small_mask.png")
    image = {"background": handle_file(str(tmp_path / "bar.png")), "layers": [],
             "composite": handle_file(str(tmp_path / "bar.png"))}
    edit = [server[1], image, None, False, 0.5, "1 · Vertical", 3.0, 10, 3, 1, "ddim", 0.0, "fp32"]
    job = client.submit(*edit, api_name="/edit")
    *_, status, final, video, files, scrubber, run_info, view, notes = job.result(timeout=120)
    assert status.startswith("**Done:** 5 steps") and "strength 0.5: from t = 500" in run_info
    assert Path(final).suffix == ".png" and Path(video).suffix == ".mp4"
    first = job.outputs()[0]  # the input as the model gets it comes first
    assert Path(first[-2]).suffix == ".png" and "used as it is" in first[-1]
    mask = {"background": None, "layers": [handle_file(str(tmp_path / "small_mask.png"))], "composite": None}
    with pytest.raises(AppError, match="no input image"):
        client.predict(server[1], None, *edit[2:], api_name="/edit")
    with pytest.raises(AppError, match="greater than maximum value 1"):  # gradio checks the slider's range
        client.predict(*edit[:4], 1.5, *edit[5:], api_name="/edit")
    small = np.full((5, 5, 4), 255, dtype=np.uint8)  # painted all over, the wrong size
    Image.fromarray(small).save(tmp_path / "small_mask.png")
    with pytest.raises(AppError, match="the mask is 5x5 but must be 12x12"):
        client.predict(*edit[:2], mask, *edit[3:], api_name="/edit")
    *_, status, strip, morph, files, run_info = client.predict(server[1], 3, 8, "0 · Horizontal", "2 · Square", 3,
                                                                2.0, 4, "ddpm", 0.0, "fp32", api_name="/interpolate")
    assert status.startswith("**Done:** 3 images, 4 steps") and "switched to DPM-Solver++(2M), 4 steps" in status
    assert Path(strip).suffix == ".png" and Path(morph).suffix == ".mp4" and len(files) == 3
    with pytest.raises(AppError, match="pick an example or upload an image first"):  # no x_0 in this session
        client.predict(server[1], 100, 0, "1 · Vertical", api_name="/denoise_from_here")
    assert client.predict(*api_args(server[1], steps=2, n_images=1), api_name="/generate")[2].startswith("**Done:**")


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_api_unknown_model_and_bad_scrub_are_refused(client, server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"unknown model '/etc'; choose one of"):
        client.predict("/etc", *args().values(), api_name="/generate")
    with pytest.raises(AppError, match="nothing recorded yet: press Generate first"):
        Client(server[0], verbose=False).predict(0, api_name="/scrub")  # a new session has recorded nothing


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_crowd_gets_images_or_a_clear_message(tiny_checkpoint, tmp_path):
    """More users at once than the queue holds (2) and the run slot (1): each gets its images, exactly those of the
    same request alone, or a clear message: the queue is full, or the request is over this server's budget."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    tt = TorchThread()
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "none"), torch_thread=tt,
                          budget=Budget(max_cost=100), queue_size=2)
    port, model = free_port(), str(tiny_checkpoint)
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    crowd = [dict(seed=30 + j, n_images=1, steps=8) for j in range(6)] + [dict(seed=40, n_images=4, steps=30)]
    results: dict[int, tuple[str, object]] = {}

    def user(j: int) -> None:
        try:
            results[j] = ("done", Client(url, verbose=False).predict(*api_args(model, **crowd[j]),
                                                                      api_name="/generate")[3])
        except (QueueError, AppError) as e:
            results[j] = (type(e).__name__, str(e))

    gate = threading.Event()
    busy = threading.Thread(target=tt.call, args=(gate.wait,))  # the torch thread is busy: the crowd must wait
    busy.start()
    threads = [threading.Thread(target=user, args=(j,)) for j in range(len(crowd))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(t.is_alive() for t in threads) > 3 and time.monotonic() < deadline:  # 1 running + 2 waiting
            time.sleep(0.05)
        gate.set()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == len(crowd)
        full = [m for kind, m in results.values() if kind == "QueueError"]
        assert len(full) >= len(crowd) - 3 and all(m == "Queue is full! Please try again." for m in full)
        refused = [m for kind, m in results.values() if kind == "AppError"]  # only the one over the budget
        assert all(m.startswith("this request is 4 images x 30 steps = 120 image-steps; this server allows 100")
                   for m in refused) and len(refused) == (results[6][0] != "QueueError")
        done = {j: r for j, (kind, r) in results.items() if kind == "done"}
        assert 1 <= len(done) <= 3
        alone = Client(url, verbose=False)
        for j, final in done.items():
            again = alone.predict(*api_args(model, **crowd[j]), api_name="/generate")[3]
            with Image.open(final) as a, Image.open(again) as b:
                assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1, j
        job = alone.submit(*api_args(model, **crowd[6]), api_name="/generate")  # over the budget: in the status too
        with pytest.raises(AppError, match="this server allows 100 per request"):
            job.result(timeout=60)
        assert job.outputs()[-1][2].startswith("⚠️ this request is 4 images x 30 steps = 120 image-steps")
    finally:
        gate.set()
        demo.close()


@pytest.mark.slow
def test_models_load_and_run_on_the_demos_torch_thread(tiny_checkpoint, tmp_path, monkeypatch):
    """gradio calls handlers on its worker threads; every model load and forward pass must still run on one."""
    from gradio_client import Client

    tt = TorchThread()
    loads, forwards = [], []
    real_load = ddpm.registry.load

    def recording_load(source):
        loads.append(threading.get_ident())
        pipe = real_load(source)
        pipe.model.register_forward_pre_hook(lambda *_: forwards.append(threading.get_ident()))
        return pipe

    monkeypatch.setattr(ddpm.registry, "load", recording_load)
    demo = app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "none"), torch_thread=tt)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        model = str(tiny_checkpoint)
        assert client.predict(model, *args(steps=3).values(), api_name="/generate")[2].startswith("**Done:**")
        assert len(client.predict(model, "1 · Vertical", 3, 0, "ddim", 0.0, "fp32",
                                  api_name="/guidance_explorer")) == 6
    finally:
        demo.close()
    assert loads == [tt.ident] and len(forwards) >= 6 and set(forwards) == {tt.ident}
    assert tt.ident != threading.get_ident()


# -- `python app.py` ----------------------------------------------------------------------------------
@pytest.mark.slow
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
