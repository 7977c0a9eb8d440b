"""ddpm.interp_handlers: seed interpolation as the app runs it, on the shared tiny checkpoint (12x12, 3 classes): its
ends are the two seeds' images as pipe.sample gives them, it streams strips, and it ends with a strip and a morph."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import handlers
from ddpm import interp_handlers as ih
from ddpm.budget import Budget, BudgetError
from ddpm.options import SamplerOptions

SETTINGS = dict(cfg=2.0, steps=8, sampler="dpm++2m", eta=0.0, precision="fp32")


def run(registry, model, tmp_path, **kw) -> list:
    args = dict(seed_a=3, seed_b=8, label_a="0 · Horizontal", label_b="2 · Square", k=5, **SETTINGS)
    return list(ih.interpolate(registry, model, **{**args, **kw}, runs_dir=tmp_path / "runs", stream_rate=1e9))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("label_b", ["2 · Square", ih.SAME_CLASS])
def test_the_ends_are_the_two_seeds_images(registry, model, tmp_path, label_b):
    first, *live, done = run(registry, model, tmp_path, label_b=label_b)
    pipe = registry.get(model)
    options = SamplerOptions(**SETTINGS)
    a = pipe.sample([0], seed=3, options=options)
    b = pipe.sample([2 if label_b != ih.SAME_CLASS else 0], seed=8, options=options)
    assert done.images.shape == (5, 1, 12, 12)
    assert torch.allclose(done.images[0], a[0], atol=1e-4) and torch.allclose(done.images[-1], b[0], atol=1e-4)
    assert not torch.allclose(done.images[2], a[0], atol=0.1)  # the middle is neither end
    classes = "Horizontal → Square" if label_b != ih.SAME_CLASS else "Horizontal"
    assert first == handlers.Live(f"Sampling… seeds 3 → 8 · 5 images · {classes}")
    assert done.status.startswith("**Done:** 5 images, 8 steps in ") and classes in done.status


def test_it_streams_strips_and_ends_with_a_strip_and_a_morph(registry, model, tmp_path):
    _, *live, done = run(registry, model, tmp_path, k=6)
    assert [u.status.split(" · ")[0] for u in live] == [f"**Step {i} / 8**" for i in range(1, 9)]
    assert all(isinstance(u.x_t, Image.Image) and u.x_t.width > 3 * u.x_t.height for u in live)  # one row of 6
    assert isinstance(done, ih.Morph)
    with Image.open(done.png) as strip:
        assert strip.format == "PNG" and strip.width >= 900 and strip.width > 5 * strip.height
    with Image.open(done.gif) as gif:
        assert gif.n_frames == 6  # one frame per image, A to B
    with av.open(str(done.mp4)) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert len(frames) >= 6 and frames[0].shape[0] >= 200  # enlarged; the last image is held a moment
    assert not np.array_equal(frames[0], frames[5])
    assert "DPM-Solver++(2M), 8 steps" in done.run_info and "fp32 (chosen)" in done.run_info


@pytest.mark.parametrize("sampler, eta, was", [("ddpm", 0.0, "DDPM"), ("ddim", 0.5, "DDIM with eta 0.5")])
def test_a_stochastic_sampler_is_switched_and_the_status_says_so(registry, model, tmp_path, sampler, eta, was):
    first, *_, done = run(registry, model, tmp_path, sampler=sampler, eta=eta, k=2)
    note = f"{was} adds fresh noise at every step, which would break the path: switched to DPM-Solver++(2M), 8 steps"
    assert note in first.status and note in done.status
    same = run(registry, model, tmp_path, k=2)[-1]  # what dpm++2m itself gives
    assert torch.equal(done.images, same.images)


@pytest.mark.parametrize("kw, message", [
    (dict(k=1), "k (images along the path) must be an integer in 2..64, got 1"),
    (dict(k=65), "k (images along the path) must be an integer in 2..64, got 65"),
    (dict(k=2.5), "k (images along the path) must be an integer"),
    (dict(seed_a=-1), "seed A must be an integer in 0.."),
    (dict(seed_b="x"), "seed B must be an integer in 0.."),
    (dict(label_a="Dog"), "unknown class 'Dog'"),
    (dict(label_b=7), "label 7 is out of range"),
    (dict(steps=0), "steps must be an integer in 1..1000"),
    (dict(cfg=-1), "cfg (guidance scale) must be a finite number in 0..10"),
])
def test_bad_input_is_refused_when_called(registry, model, tmp_path, kw, message):
    args = dict(seed_a=3, seed_b=8, label_a="0 · Horizontal", label_b="2 · Square", k=5, **SETTINGS)
    with pytest.raises(ValueError) as err:
        ih.interpolate(registry, model, **{**args, **kw}, runs_dir=tmp_path / "runs")
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_the_budget_counts_two_guided_passes_for_two_classes(registry, model, tmp_path):
    args = dict(seed_a=3, seed_b=8, label_a="0 · Horizontal", k=5, **SETTINGS)
    with pytest.raises(BudgetError, match=r"5 images x 8 steps x 2 guided passes = 80 image-steps; this server allows "
                                          r"79"):
        ih.interpolate(registry, model, **args, label_b="2 · Square", runs_dir=tmp_path / "runs", budget=Budget(79))
    assert not (tmp_path / "runs").exists()
    one_class = list(ih.interpolate(registry, model, **args, label_b=ih.SAME_CLASS, runs_dir=tmp_path / "runs",
                                    budget=Budget(40)))  # 5 x 8 = 40: at the cap
    assert isinstance(one_class[-1], ih.Morph)
    shown = []
    with pytest.raises(BudgetError, match="ran longer than this server's limit of 1e-06 s"):
        for u in ih.interpolate(registry, model, **args, runs_dir=tmp_path / "late", stream_rate=1e9,
                                budget=Budget(time_limit_s=1e-6)):
            shown.append(u)
    assert len(shown) == 2 and shown[1].x_t is not None and not (tmp_path / "late").exists()  # the first strips


def test_deterministic_keeps_a_deterministic_sampler():
    for o in (SamplerOptions(sampler="dpm++2m"), SamplerOptions(sampler="ddim", eta=0.0)):
        assert ih.deterministic(o) == (o, "")
