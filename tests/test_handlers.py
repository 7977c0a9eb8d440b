"""ddpm.handlers: the app's handlers called as plain functions, on the shared tiny checkpoint (12x12, 3 classes).

The default request on the shipped checkpoint, bit for bit against the library, is at the end (slow).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm import handlers, plots
from ddpm.budget import Budget, BudgetError
from ddpm.device import bf16_supported
from ddpm.frames import Frame, grid_scale, to_grid
from ddpm.images import to_pil
from ddpm.registry import ModelRegistry
from ddpm.samplers import run_to_end
from ddpm.studio import CFG_MAX, SEED_MAX

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "fashion-mnist"
GOOD = dict(label="1 · Vertical", cfg=3.0, steps=12, seed=3, n_images=4, sampler="ddim", eta=0.0, precision="fp32",
            limit_guidance=False, spacing=1.0, redraws=0)
ORDER = tuple(GOOD)  # the /generate endpoint's order after the model
BAD_INPUTS = [  # (field, value, the message must contain these); the HTTP API test in test_app.py uses them too
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


def args(**overrides) -> dict:
    """A request as the page sends it, by name."""
    return {**GOOD, **overrides}


def run(registry, model, tmp_path, *, stream_rate=handlers.STREAM_RATE, **overrides) -> list:
    """Every update of one generate run: Live ..., Finished."""
    return list(handlers.generate(registry, model, **args(**overrides), runs_dir=tmp_path / "runs",
                                  stream_rate=stream_rate))


def png_of(x: torch.Tensor) -> np.ndarray:
    """The pixels of the final PNG the app writes for images x."""
    grid = to_grid(x)
    return np.asarray(to_pil(grid, scale=grid_scale(grid.shape[1], 512)))


# -- generate ------------------------------------------------------------------------------------------
def test_generate_streams_every_planned_frame_then_the_results(registry, model, tmp_path):
    *live, done = run(registry, model, tmp_path, stream_rate=1e9)  # no throttling: every step is streamed
    assert live[0] == handlers.Live("Sampling… seed 3") and all(isinstance(u, handlers.Live) for u in live)
    live = live[1:]
    assert [u.status.split(" · ")[0] for u in live] == [f"**Step {i} / 12**" for i in range(1, 13)]
    assert all(isinstance(u.x_t, Image.Image) and isinstance(u.x0_pred, Image.Image) for u in live)
    assert len({u.x_t.tobytes() for u in live}) == 12  # x_t changes at every step
    # the model's resolution (2x2 grids of 12 px with 2 px gaps: 30 px): the page enlarges them, not the server
    assert live[0].x_t.size == live[0].x0_pred.size == (30, 30)

    assert isinstance(done, handlers.Finished) and done.status.startswith("**Done:** 12 steps in ")
    assert (done.png.suffix, done.gif.suffix, done.mp4.suffix) == (".png", ".gif", ".mp4")
    assert done.png.parent.parent == tmp_path / "runs"
    assert len(done.frames) == 12 and all(isinstance(f, Frame) for f in done.frames)
    assert done.run_info.startswith("seed 3 · label 1 · 4 images · DDIM, 12 steps · CFG 3 · fp32 (chosen) · sampling")
    with Image.open(done.gif) as im:
        assert im.n_frames == 12
    with av.open(str(done.mp4)) as c:
        assert c.streams.video[0].codec_context.name == "h264"

    # the images are exactly what the library samples for these settings, and the PNG holds them enlarged
    options = ddpm.SamplerOptions(sampler="ddim", steps=12, cfg=3.0, precision="fp32")
    x = ddpm.load(model).sample([1] * 4, seed=3, options=options)
    assert torch.equal(done.images, x)
    with Image.open(done.png) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), png_of(x))


def test_with_the_real_throttle_the_first_and_last_step_are_always_streamed(registry, model, tmp_path):
    updates = run(registry, model, tmp_path, steps=40, n_images=1, sampler="ddpm")
    steps = [int(u.status.split(" / ")[0].split()[-1]) for u in updates if getattr(u, "x_t", None) is not None]
    assert steps[0] == 1 and steps[-1] == 40 and steps == sorted(set(steps))
    assert isinstance(updates[-1], handlers.Finished)


def test_same_seed_same_images_and_another_seed_other_images(registry, model, tmp_path):
    a, b, c = (run(registry, model, tmp_path, seed=s)[-1] for s in (11, 11, 12))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.png.read_bytes() == b.png.read_bytes() and a.png != b.png  # each run its own folder


@pytest.mark.parametrize("field, value, parts", BAD_INPUTS)
def test_bad_input_is_refused_before_sampling_naming_value_and_range(registry, model, tmp_path, field, value, parts):
    with pytest.raises(ValueError) as err:
        handlers.generate(registry, model, **args(**{field: value}), runs_dir=tmp_path)  # at the call, not at next()
    for part in parts:
        assert part in str(err.value)
    assert not tmp_path.joinpath("runs").exists()


def test_an_unlisted_model_is_refused(registry, tmp_path):
    with pytest.raises(ValueError, match=r"unknown model '/etc'; choose one of"):
        handlers.generate(registry, "/etc", **args(), runs_dir=tmp_path)


def test_generate_with_a_time_step_spacing(registry, model, tmp_path):
    """The run follows the spacing: its statuses name the spaced time steps, and the result differs from even steps."""
    updates = run(registry, model, tmp_path, stream_rate=1e9, steps=6, spacing=2.0)
    assert [int(u.status.split("t = ")[1].split(" ")[0]) for u in updates[1:-1]] == [999, 639, 360, 160, 40, 0]
    assert "6 steps (spacing 2)" in updates[-1].run_info
    assert not torch.equal(run(registry, model, tmp_path, steps=6)[-1].images, updates[-1].images)


@pytest.mark.slow
def test_generate_with_redraws_streams_the_redrawn_images_and_ends_with_the_kept_ones(registry, model, tmp_path):
    """Redraw rounds run after the first draw: their steps are streamed and recorded as 'redraw r', and the final
    images are what the library's sample() with the same redraws returns."""
    pipe = registry.get(model)
    kw = dict(steps=6, sampler="ddim", cfg=1.0, precision="fp32")
    # a seed whose 4 images the (barely trained) tiny model does not all read as their class
    seed = next(s for s in range(50) if [st.draw for st in pipe.stream([1] * 4, seed=s, redraws=1, **kw)][-1] == 1)
    *live, done = run(registry, model, tmp_path, stream_rate=1e9, seed=seed, steps=6, cfg=1.0, redraws=1)
    statuses = [u.status for u in live[1:]]
    assert [s.split(" · ")[0] for s in statuses[:6]] == [f"**Step {i} / 6**" for i in range(1, 7)]
    assert statuses[5].endswith("checking the images…")
    assert statuses[6].startswith("**Redraw 1**") and "**Step 1 / 6**" in statuses[6]
    assert "1 redraw round" in done.status and "up to 1 redraw round" in done.run_info
    assert [f.draw for f in done.frames][:6] == [0] * 6 and done.frames[6].caption.startswith("redraw 1 · ")
    assert torch.equal(done.images, pipe.sample([1] * 4, seed=seed, redraws=1, **kw))
    plain = run(registry, model, tmp_path, seed=seed, steps=6, cfg=1.0)[-1]  # without redraws: other images
    assert not torch.equal(plain.images, done.images)


@pytest.mark.slow
def test_memory_stays_flat_over_many_runs(registry, model, tmp_path):
    def one():
        for _ in handlers.generate(registry, model, **args(steps=8, n_images=16), runs_dir=tmp_path):
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


def test_old_run_folders_are_removed_when_a_new_run_starts(tmp_path):
    old, recent = handlers.new_run_dir(tmp_path), handlers.new_run_dir(tmp_path)
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    new = handlers.new_run_dir(tmp_path, ttl_s=600)
    assert not old.exists() and recent.is_dir() and new.is_dir() and new != recent


@pytest.mark.slow
def test_scrub_shows_recorded_steps(registry, model, tmp_path):
    frames = run(registry, model, tmp_path, steps=60)[-1].frames
    assert len(frames) == 40  # a few dozen log-SNR-spaced frames, not all 60 steps
    first = handlers.scrub(0, frames)
    assert first.status == f"Recorded step 1/60 · t = {frames[0].t}"
    small = first.x_t.resize((frames[0].x_t.shape[1], frames[0].x_t.shape[0]), Image.NEAREST)
    assert np.array_equal(np.asarray(small), frames[0].x_t[..., 0])
    assert handlers.scrub(39.0, frames).status.startswith("Recorded step 60/60")
    for bad in (40, -1, "x", True, None):
        with pytest.raises(ValueError, match=r"frame must be a number in 0\.\.39"):
            handlers.scrub(bad, frames)
    with pytest.raises(ValueError, match="press Generate first"):
        handlers.scrub(0, [])


# -- the guidance explorer -------------------------------------------------------------------------------
def test_guidance_explorer_returns_one_image_per_scale(registry, model):
    items = handlers.explore(registry, model, label="2 · Square", steps=6, seed=4, sampler="ddim", eta=0.0,
                             precision="auto")
    assert [c for _, c in items] == ["CFG 0", "CFG 1", "CFG 2", "CFG 3", "CFG 5", "CFG 8"]
    assert all(isinstance(img, Image.Image) and img.width >= 150 for img, _ in items)
    assert len({img.tobytes() for img, _ in items}) > 1
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.1000"):
        handlers.explore(registry, model, label="2 · Square", steps=0, seed=4, sampler="ddim", eta=0.0,
                         precision="auto")


# -- the server's budget ----------------------------------------------------------------------------------
@contextlib.contextmanager
def network_calls(pipe):
    """A list that gets an entry at every forward pass of pipe's network while the block runs."""
    calls = []
    hook = pipe.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


def test_a_request_over_the_cap_is_refused_before_anything_runs_and_one_at_the_cap_runs(registry, model, tmp_path):
    with network_calls(registry.get(model)) as calls:
        with pytest.raises(BudgetError, match=r"this request is 4 images x 12 steps x \(1 \+ 1 redraw round\) = 96 "
                                              r"image-steps; this server allows 48 per request"):
            handlers.generate(registry, model, **args(redraws=1), runs_dir=tmp_path / "runs", budget=Budget(48))
        with pytest.raises(BudgetError, match="6 images x 5 steps = 30 image-steps; this server allows 29"):
            handlers.explore(registry, model, label="2 · Square", steps=5, seed=4, sampler="ddim", eta=0.0,
                             precision="fp32", budget=Budget(29))
        assert not calls and not (tmp_path / "runs").exists()
        *_, done = handlers.generate(registry, model, **args(), runs_dir=tmp_path / "runs", budget=Budget(48))
        assert isinstance(done, handlers.Finished) and len(calls) == 12  # 4 x 12 = 48: at the cap, it runs
        assert len(handlers.explore(registry, model, label="2 · Square", steps=5, seed=4, sampler="ddim", eta=0.0,
                                    precision="fp32", budget=Budget(30))) == 6


def test_a_run_longer_than_the_time_limit_stops_with_the_message(registry, model, tmp_path):
    updates = []
    with network_calls(registry.get(model)) as calls, \
            pytest.raises(BudgetError, match=r"ran longer than this server's limit of 1e-06 s per request"):
        for u in handlers.generate(registry, model, **args(), runs_dir=tmp_path / "runs", stream_rate=1e9,
                                   budget=Budget(time_limit_s=1e-6)):
            updates.append(u)
    assert [u.status.split(" · ")[0] for u in updates] == ["Sampling… seed 3", "**Step 1 / 12**"]  # shown so far
    assert len(calls) == 1 and not (tmp_path / "runs").exists()  # stopped after its first step: no files
    with pytest.raises(BudgetError, match="ran longer than"):
        handlers.explore(registry, model, label="2 · Square", steps=5, seed=4, sampler="ddim", eta=0.0,
                         precision="fp32", budget=Budget(time_limit_s=1e-6))


# -- the model -------------------------------------------------------------------------------------------
def test_select_model_starts_the_controls_at_the_recommendation(tiny_checkpoint, tmp_path, with_sampling):
    folder = with_sampling(tiny_checkpoint, tmp_path / "rec", {
        "sampler": "dpm++2m", "steps": 25, "cfg": 2.0, "spacing": 1.25, "redraws": 2, "precision": "fp32",
        "guidance_interval": [0.2, 0.7], "class_cfg": [1.5, 99.0, 2.5]})
    reg = ModelRegistry([str(folder)])
    v = handlers.select_model(reg, str(folder), fallback=str(folder))
    assert (v.source, v.note, v.labels, v.T) == (str(folder), "", ["0 · Horizontal", "1 · Vertical", "2 · Square"],
                                                1000)
    o = v.options
    assert (o.sampler, o.steps, o.spacing, o.redraws, o.precision) == ("dpm++2m", 25, 1.25, 2, "auto")
    assert o.class_cfg == (1.5, CFG_MAX, 2.5) and v.cfg == 1.5  # within the slider; the first class's scale
    assert v.class_scales == {"names": ["horizontal", "vertical", "square"], "scales": [1.5, CFG_MAX, 2.5]}
    assert "scale per class" in v.cfg_info
    assert v.interval == (0.2, 0.7) and v.interval_label == "Guide only for t/T in 0.2..0.7"
    assert "`" + str(folder) + "`" in v.facts and "T = 1000" in v.facts and "12px" in v.facts


def test_select_model_of_a_model_with_one_scale_and_no_interval(registry, model):
    v = handlers.select_model(registry, model, fallback=model)
    assert v.options.class_cfg is None and v.class_scales is None and v.cfg_info == ""  # "" clears the old note
    assert v.cfg == min(registry.get(model).recommended.cfg, CFG_MAX)
    assert v.interval is None and v.interval_label == "Guide only in the recommended interval"


def test_select_model_falls_back_with_a_note(registry, model):
    v = handlers.select_model(registry, "/etc", fallback=model)
    assert v.source == model and "could not load `/etc`" in v.note and "unknown model '/etc'" in v.note
    assert f"Using `{model}` instead" in v.note


# -- the forward process ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_forward_view(registry, model):
    x0 = np.zeros((12, 12, 1), dtype=np.uint8)
    x0[4:8] = 255
    v = handlers.forward_view(registry, model, x0, 0)
    alpha_bar = registry.get(model).schedule.alpha_bar
    assert "t = 0" in v.text and f"ᾱₜ = {float(alpha_bar[0]):.5f}" in v.text and "0.9999" in v.text
    small = np.asarray(v.x_t.resize((12, 12), Image.NEAREST))
    assert np.abs(small.astype(int) - x0[..., 0]).max() <= 3  # t = 0: nearly x_0
    assert [c for _, c in v.strip][0] == "t = 0" and [c for _, c in v.strip][-1] == "t = 999" and len(v.strip) == 8
    assert isinstance(v.plot, Image.Image) and v.plot.width > 500
    end = handlers.forward_view(registry, model, x0, 999.0)
    assert "t = 999" in end.text and f"ᾱₜ = {float(alpha_bar[999]):.5f}" in end.text
    for bad in (1000, 2.5, "3"):
        with pytest.raises(ValueError, match=r"t must be an integer in 0\.\.999"):
            handlers.forward_view(registry, model, x0, bad)
    seeded = handlers.forward_view(registry, model, x0, 500, 9)  # another noise seed: another x_t
    assert seeded.x_t.tobytes() != handlers.forward_view(registry, model, x0, 500).x_t.tobytes()
    x0_model, eps, x_t = handlers.forward_x_t(registry.get(model), x0, 500, 9)
    ab = alpha_bar[500].item()
    assert torch.allclose(x_t, ab ** 0.5 * x0_model + (1 - ab) ** 0.5 * eps, atol=1e-6)  # q(x_t | x_0), eq. 4
    assert torch.equal(eps, torch.randn((1, 1, 12, 12), generator=torch.Generator().manual_seed(9)))
    with pytest.raises(ValueError, match=r"noise seed must be an integer in 0\.\."):
        handlers.forward_view(registry, model, x0, 10, -1)
    empty = handlers.forward_view(registry, model, None, 10)
    assert (empty.x_t, empty.strip, empty.text) == (None, None, "Pick an example or upload an image.")


def test_moving_t_redraws_only_the_marker_without_matplotlib(registry, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of matplotlib would fail
    x0 = handlers.pick_example(registry, model, handlers.example_choices(registry, model)[0]).x0
    a, b = (np.asarray(handlers.forward_view(registry, model, x0, t).plot).astype(int) for t in (100, 800))
    changed = np.flatnonzero((np.abs(a - b).sum(-1) > 60).any(axis=0))  # the columns that differ
    _, panels, _ = plots._base(registry.get(model).schedule.config, a.shape[1])
    xs = [p.x(t) for p in panels for t in (100, 800)]  # the marker's place at each t in each panel
    assert all(min(abs(c - x) for x in xs) <= 5 for c in changed)  # nothing else changed
    assert all(min(abs(c - x) for c in changed) <= 2 for x in xs)  # and each marker is drawn


def test_an_example_is_picked_by_name_and_a_stale_name_changes_nothing(registry, model):
    names = handlers.example_choices(registry, model)
    assert names
    picked = handlers.pick_example(registry, model, names[-1])
    assert picked.x0.shape == (12, 12, 1) and picked.x0.dtype == np.uint8 and picked.view.width >= 224
    # the previous model's example, arriving after a switch: no error, no change
    assert handlers.pick_example(registry, model, "0 · T-shirt-top") is None


def test_an_upload_becomes_x0_at_the_models_size(registry, model):
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[:, 10:50] = 255
    up = handlers.upload_x0(registry, model, image)
    assert up.x0.shape == (12, 12, 1) and up.x0.min() == 255 and up.view.width >= 224
    assert handlers.upload_x0(registry, model, None) is None  # the upload was cleared
    with pytest.raises(ValueError, match="uint8"):
        handlers.upload_x0(registry, model, image.astype(np.float32))


# -- the default request, bit for bit ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="needs the shipped checkpoint")
def test_the_default_request_samples_exactly_what_the_library_does(tmp_path):
    """What the page starts with (class 0, its scale 1.5, DPM-Solver++(2M), 50 steps spaced 1.25, guidance in
    0.2..0.8, precision auto), at 16 images and seed 0, gives exactly the images of the library's own call."""
    source = str(SHIPPED)
    reg = ModelRegistry([source])
    v = handlers.select_model(reg, source, fallback=source)
    o = v.options
    assert (v.labels[0], v.cfg, o.steps, o.sampler, o.eta, o.spacing, v.interval, o.precision, o.redraws) == \
        ("0 · T-shirt/top", 1.5, 50, "dpm++2m", 0.0, 1.25, (0.2, 0.8), "auto", 0)
    *_, done = handlers.generate(reg, source, label=v.labels[0], cfg=v.cfg, steps=o.steps, seed=0, n_images=16,
                                 sampler=o.sampler, eta=o.eta, precision=o.precision,
                                 limit_guidance=v.interval is not None, spacing=o.spacing, redraws=o.redraws,
                                 runs_dir=tmp_path)
    bf16 = bf16_supported(torch.device("cpu"))
    options = ddpm.SamplerOptions(sampler="dpm++2m", steps=50, cfg=1.5, eta=0.0, precision="bf16" if bf16 else "fp32",
                                  guidance_interval=(0.2, 0.8), spacing=1.25)
    expected = run_to_end(reg.get(source).stream([0] * 16, seed=0, options=options))
    assert torch.equal(done.images, expected)
    if bf16:
        assert "bf16 (auto: network batch 32 >= 16)" in done.run_info
