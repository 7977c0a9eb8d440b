"""The public API: ddpm.load(folder) -> Pipeline; sample / stream with labels by index or name; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddpm
from conftest import INTERVAL, PER_CLASS
from ddpm.checkpoint import load_config
from ddpm.samplers import Step


def test_load_describes_the_model(pipe, tiny_checkpoint):
    assert isinstance(pipe, ddpm.Pipeline)
    assert pipe.class_names == ("Horizontal", "Vertical", "Square")
    assert pipe.conditional and pipe.T == 1000 and pipe.image_shape == (1, 12, 12)
    assert pipe.source == str(tiny_checkpoint)
    assert ddpm.load(str(tiny_checkpoint)).class_names == pipe.class_names  # str or Path


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_shape_and_range(pipe, sampler):
    images = pipe.sample(labels=[0, 2, 1], steps=6, sampler=sampler, cfg=3.0, seed=0)
    assert images.shape == (3, 1, 12, 12) and images.dtype == torch.float32
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert torch.isfinite(images).all()


def test_labels_by_name_and_index(pipe):
    for label, expected in (("Horizontal", 0), ("horizontal", 0), ("VERTICAL", 1), ("  Square ", 2), (2, 2), ("1", 1),
                            (0, 0), (2.0, 2)):
        assert pipe.label_index(label) == expected, label
    by_name = pipe.sample(labels=["square", "Vertical"], steps=4, seed=3)
    by_index = pipe.sample(labels=[2, 1], steps=4, seed=3)
    assert torch.equal(by_name, by_index)


def test_stream_yields_steps(pipe):
    steps = list(pipe.stream(labels=["Square"], steps=5, seed=1))
    assert len(steps) == 5 and all(isinstance(s, Step) for s in steps)
    assert steps[0].t == pipe.T - 1 and steps[-1].t == 0
    assert torch.equal(steps[-1].x_t, pipe.sample(labels=["Square"], steps=5, seed=1))


def test_stream_with_a_time_step_spacing(pipe):
    """spacing p evaluates the network at timesteps_for(T, steps, p): 999 (1 - i/5)^2, ..., 0."""
    steps = list(pipe.stream(labels=["Square"], steps=6, seed=1, spacing=2.0))
    assert [s.t for s in steps] == [999, 639, 360, 160, 40, 0]
    assert not torch.equal(steps[-1].x_t, pipe.sample(labels=["Square"], steps=6, seed=1))
    with pytest.raises(ValueError, match=r"spacing must be a number in 1\.\.4"):
        pipe.stream(labels=["Square"], steps=6, spacing=0)


def test_the_label_changes_the_image(pipe):
    a = pipe.sample(labels=[0], steps=10, seed=5, cfg=3.0)
    b = pipe.sample(labels=[1], steps=10, seed=5, cfg=3.0)
    assert not torch.allclose(a, b, atol=0.05)


@pytest.mark.parametrize("label,message", [
    ("Sneaker", r"unknown class 'Sneaker'; classes are Horizontal, Vertical, Square \(or an index 0..2\)"),
    (3, r"label 3 is out of range; use a class index 0..2"),
    (-1, r"out of range; use a class index 0..2"),
    ("7", r"label 7 is out of range; use a class index 0..2"),
    (True, r"class index 0..2"),
    (1.5, r"class index 0..2"),
])
def test_bad_labels(pipe, label, message):
    with pytest.raises(ValueError, match=message):
        pipe.sample(labels=[label], steps=2)


def test_labels_are_required_for_a_conditional_model(pipe):
    with pytest.raises(ValueError, match="class-conditional"):
        pipe.sample(labels=None, n=2, steps=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), r"steps must be an integer in 1..1000, got 0"),
    (dict(steps=1001), r"steps must be an integer in 1..1000, got 1001"),
    (dict(cfg=-0.5), r"cfg \(guidance scale\) must be a finite number >= 0, got -0.5"),
    (dict(sampler="euler"), r"unknown sampler 'euler'; choose one of ddpm, ddim"),
    (dict(eta=2.0), r"eta must be a number in 0\.\.1"),
    (dict(sampler="ddpm", steps=50, variance="beta"), r"variance='beta' is only allowed with all 1000 steps"),
    (dict(precision="fp16"), r"unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    (dict(seed=-3), r"seed must be an integer in 0\.\."),
    (dict(class_cfg=[2.0, 1.0]), r"class_cfg needs one guidance scale per class: 3 classes, got 2 scales"),
    (dict(class_cfg=[2.0, 2.0, -1.0]), r"class_cfg must be a sequence of finite guidance scales >= 0"),
])
def test_bad_settings_fail_at_call_time(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.stream(labels=[0], **kwargs)  # not only at the first next()


def test_unconditional_pipeline(tmp_path):
    from ddpm.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm.model import UNet, preset_config
    from ddpm.schedule import ScheduleConfig

    model = UNet(preset_config("tiny", image_size=8, num_classes=None))
    save_checkpoint(tmp_path, model, CheckpointConfig(model=model.config, schedule=ScheduleConfig(timesteps=50)))
    pipe = ddpm.load(tmp_path)
    assert pipe.sample(n=3, steps=4).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        pipe.sample(labels=[0], steps=4)
    with pytest.raises(ValueError, match="n must be a positive number"):
        pipe.sample(n=0, steps=4)
    with pytest.raises(ValueError, match=r"class_cfg needs a class-conditional model"):
        pipe.stream(n=2, class_cfg=[2.0])
    with pytest.raises(ValueError, match="unconditional"):
        pipe.label_index(0)


@pytest.fixture(scope="module")
def recommending(tiny_checkpoint, tmp_path_factory) -> ddpm.Pipeline:
    """The tiny checkpoint with a recommendation in config.json that differs from every default."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("rec") / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = {"sampler": "dpm++2m", "steps": 7, "cfg": 2.0, "class_cfg": [1.5, 2.5, 4.0],
                          "guidance_interval": [0.2, 0.8], "spacing": 1.5}
    (folder / "config.json").write_text(json.dumps(config))
    return ddpm.load(folder)


def test_no_settings_sample_at_the_recommendation(recommending):
    rec = recommending.recommended
    assert isinstance(rec, ddpm.SamplerOptions) and (rec.sampler, rec.steps, rec.class_cfg) == ("dpm++2m", 7, (1.5, 2.5, 4.0))
    steps = list(recommending.stream(labels=[0, 2], seed=3))
    assert len(steps) == 7
    explicit = recommending.sample(labels=[0, 2], seed=3, options=ddpm.SamplerOptions(
        sampler="dpm++2m", steps=7, cfg=2.0, class_cfg=(1.5, 2.5, 4.0), guidance_interval=(0.2, 0.8), spacing=1.5))
    assert torch.equal(steps[-1].x_t, explicit)


def test_keyword_changes_apply_over_the_recommendation(recommending):
    assert len(list(recommending.stream(labels=[1], steps=4))) == 4
    one_w = recommending.options(cfg=3.0)
    assert one_w.class_cfg is None and one_w.guidance_interval == (0.2, 0.8) and one_w.steps == 7
    assert recommending.options(guidance_interval=None).guidance_interval is None
    base = ddpm.SamplerOptions(sampler="ddim", steps=5)
    assert recommending.options(base, eta=0.5) == base.replace(eta=0.5)  # options replaces the recommendation
    same = recommending.sample(labels=[1], seed=0, options=base)
    assert torch.equal(same, recommending.sample(labels=[1], seed=0, sampler="ddim", steps=5, cfg=3.0,
                                                 guidance_interval=None, spacing=1.0))
    with pytest.raises(ValueError, match="unknown sampling setting 'stepz'"):
        recommending.sample(labels=[1], stepz=3)
    with pytest.raises(ValueError, match="options must be a ddpm.SamplerOptions"):
        recommending.sample(labels=[1], options={"steps": 3})


def test_auto_precision_is_resolved_once_for_the_batch(recommending, monkeypatch):
    import ddpm.device

    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: True)
    seen = []
    original = ddpm.samplers.guided_eps_fn

    def spy(*args, **kwargs):
        seen.append(kwargs["precision"])
        return original(*args, **kwargs)

    monkeypatch.setattr(ddpm.samplers, "guided_eps_fn", spy)
    recommending.sample(labels=[0] * 8, steps=2, precision="auto")  # 8 images x 2 halves = 16 rows: bf16
    recommending.sample(labels=[0] * 2, steps=2, precision="auto")  # 4 rows: fp32
    assert seen == ["bf16", "fp32"]


# -- a checkpoint's recommended guidance interval and per-class scales (config.json "sampling") -------
@pytest.mark.usefixtures("one_thread")
def test_pipeline_exposes_the_recommendation(interval_checkpoint: Path, tiny_checkpoint: Path):
    assert ddpm.load(interval_checkpoint).recommended.guidance_interval == INTERVAL
    assert ddpm.load(tiny_checkpoint).recommended.guidance_interval is None


@pytest.mark.usefixtures("one_thread")
def test_the_recommended_scale_of_each_class(per_class: Path, tiny_checkpoint: Path):
    rec = ddpm.load(per_class).recommended
    assert [rec.cfg_for(c) for c in range(3)] == PER_CLASS
    assert rec.cfg_for(None) == 2.0  # no class: the single scale
    plain = load_config(tiny_checkpoint).sampling
    assert plain.class_cfg is None and plain.cfg_for(1) == plain.cfg_for(None) == plain.cfg
