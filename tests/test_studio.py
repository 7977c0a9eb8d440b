"""ddpm.studio: request checks, precision choice, guidance sweep, forward-process helpers, examples, model registry."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm.images import to_uint8
from ddpm.samplers import timesteps_for
from ddpm.studio import (
    AUTO_BF16_MIN_BATCH,
    GUIDANCE_SCALES,
    SEED_MAX,
    ModelRegistry,
    bf16_available,
    choose_precision,
    example_name,
    forward_noise,
    generated_examples,
    guidance_sweep,
    image_to_model,
    label_choices,
    load_examples,
    local_checkpoints,
    log_snr_timesteps,
    network_batch,
    parse_label,
    parse_run,
    q_sample_at,
)

GOOD = dict(label="1 · Vertical", cfg=3.0, steps=10, seed=0, n_images=4, sampler="ddim", eta=0.0, precision="fp32")


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return ddpm.load(tiny_checkpoint)


def test_label_choices_and_parsing(pipe):
    assert label_choices(pipe) == ["0 · Horizontal", "1 · Vertical", "2 · Square"]
    for value in ("1 · Vertical", "Vertical", "vertical", "1", 1, 1.0):
        assert parse_label(pipe, value) == 1
    for bad, match in (("Dog", r"unknown class 'Dog'.*Horizontal, Vertical, Square.*0\.\.2"),
                       (3, r"label 3 is out of range.*0\.\.2"), (-1, r"out of range.*0\.\.2"),
                       ("7 · Sneaker", r"label 7 is out of range.*0\.\.2"),
                       (None, r"label None is not a class.*0\.\.2"), ([1], r"not a class")):
        with pytest.raises(ValueError, match=match):
            parse_label(pipe, bad)


def test_parse_run_accepts_good_values(pipe):
    run = parse_run(pipe, **GOOD)
    assert (run.label, run.cfg, run.steps, run.seed, run.n_images, run.sampler) == (1, 3.0, 10, 0, 4, "ddim")
    assert run.labels() == [1, 1, 1, 1]
    assert "seed 0" in run.describe() and "fp32 (chosen)" in run.describe()
    # numbers as a browser sends them (floats with integer values) are fine
    run = parse_run(pipe, **{**GOOD, "steps": 10.0, "seed": float(SEED_MAX), "n_images": 16.0, "sampler": "DDPM"})
    assert (run.steps, run.seed, run.n_images, run.sampler) == (10, SEED_MAX, 16, "ddpm")
    assert run.spacing == 1.0 and "spacing" not in run.describe()
    run = parse_run(pipe, **{**GOOD, "spacing": 2})
    assert run.spacing == 2.0 and "10 steps (spacing 2)" in run.describe()
    assert run.stream_kwargs()["spacing"] == 2.0 and run.timesteps(pipe.T) == timesteps_for(pipe.T, 10, 2.0)
    assert run.redraws == 0 and run.stream_kwargs()["redraws"] == 0 and "redraw" not in run.describe()
    run = parse_run(pipe, **{**GOOD, "redraws": 2.0})
    assert run.redraws == 2 and run.stream_kwargs()["redraws"] == 2 and "up to 2 redraw rounds" in run.describe()


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, r"steps must be an integer in 1\.\.1000, got 0"),
    ("steps", 1001, r"steps must be an integer in 1\.\.1000, got 1001"),
    ("steps", 2.5, r"steps must be an integer in 1\.\.1000, got 2\.5"),
    ("steps", "50", r"steps must be an integer in 1\.\.1000, got '50'"),
    ("cfg", -0.5, r"cfg \(guidance scale\) must be a finite number in 0\.\.10, got -0\.5"),
    ("cfg", float("nan"), r"cfg .* finite number in 0\.\.10, got nan"),
    ("cfg", float("inf"), r"cfg .* finite number in 0\.\.10, got inf"),
    ("cfg", 10.5, r"0\.\.10, got 10\.5"),
    ("seed", -1, rf"seed must be an integer in 0\.\.{SEED_MAX}, got -1"),
    ("seed", 1.5, r"seed must be an integer.*got 1\.5"),
    ("seed", SEED_MAX + 1, rf"got {SEED_MAX + 1}"),
    ("seed", "abc", r"seed must be an integer.*got 'abc'"),
    ("seed", None, r"seed must be an integer.*got None"),
    ("seed", True, r"seed must be an integer.*got True"),
    ("n_images", 5, r"number of images must be one of 1, 4, 9, 16, got 5"),
    ("n_images", 0, r"one of 1, 4, 9, 16, got 0"),
    ("sampler", "euler", r"unknown sampler 'euler'; choose one of ddpm, ddim"),
    ("sampler", None, r"unknown sampler None"),
    ("eta", 1.5, r"eta must be a number in 0\.\.1, got 1\.5"),
    ("spacing", 0.5, r"spacing must be a number in 1\.\.4 \(1 = even steps, 2 = quadratic\), got 0\.5"),
    ("spacing", "quad", r"spacing must be a number in 1\.\.4, got 'quad'"),
    ("precision", "fp16", r"unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    ("label", "Dog", r"unknown class 'Dog'"),
    ("redraws", -1, r"redraws must be an integer in 0\.\.5, got -1"),
    ("redraws", 1.5, r"redraws must be an integer in 0\.\.5, got 1\.5"),
    ("redraws", "two", r"redraws must be an integer in 0\.\.5, got 'two'"),
])
def test_parse_run_rejects_bad_values(pipe, field, value, match):
    with pytest.raises(ValueError, match=match):
        parse_run(pipe, **{**GOOD, field: value})


def test_precision_rule():
    assert network_batch(16, 3.0, True) == 32
    assert network_batch(16, 1.0, True) == 16 and network_batch(16, 0.0, True) == 16
    assert network_batch(4, 3.0, False) == 4
    assert choose_precision("fp32", 64) == ("fp32", "chosen")
    assert choose_precision("auto", AUTO_BF16_MIN_BATCH - 1)[0] == "fp32"
    prec, why = choose_precision("auto", AUTO_BF16_MIN_BATCH)
    assert prec == ("bf16" if bf16_available() else "fp32")
    assert str(AUTO_BF16_MIN_BATCH) in why or "not supported" in why
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        choose_precision("half", 4)


def test_guidance_sweep_rows_match_single_image_runs(pipe):
    run = parse_run(pipe, **{**GOOD, "n_images": 1, "steps": 8, "seed": 5})
    rows = guidance_sweep(pipe, run, GUIDANCE_SCALES)
    assert rows.shape == (len(GUIDANCE_SCALES), 1, 12, 12)
    for j in (0, 3, 5):
        single = pipe.sample(labels=[1], seed=5, steps=8, cfg=GUIDANCE_SCALES[j], sampler="ddim")
        diff = np.abs(to_uint8(rows[j : j + 1]).astype(int) - to_uint8(single).astype(int))
        assert diff.max() <= 2  # the same computation, up to float summation order in a bigger batch
    assert not torch.equal(rows[0], rows[5])  # guidance changes the image


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_guidance_sweep_follows_the_sampler_and_spacing(pipe, sampler):
    run = parse_run(pipe, **{**GOOD, "n_images": 1, "steps": 6, "seed": 5, "spacing": 2.0, "sampler": sampler})
    rows = guidance_sweep(pipe, run, (1.0, 3.0))
    single = pipe.sample(labels=[1], seed=5, steps=6, cfg=3.0, sampler=sampler, spacing=2.0)
    assert np.abs(to_uint8(rows[1:]).astype(int) - to_uint8(single).astype(int)).max() <= 2


def test_guidance_sweep_with_ddpm_sampler_uses_the_seed(pipe):
    run = parse_run(pipe, **{**GOOD, "n_images": 1, "steps": 6, "seed": 9, "sampler": "ddpm"})
    rows = guidance_sweep(pipe, run, (2.0, 2.0))
    assert torch.allclose(rows[0], rows[1])  # same scale, same seed -> same image
    single = pipe.sample(labels=[1], seed=9, steps=6, cfg=2.0, sampler="ddpm")
    assert np.abs(to_uint8(rows[:1]).astype(int) - to_uint8(single).astype(int)).max() <= 2


def test_image_to_model_crops_resizes_and_converts():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, 10:50] = 255  # the centre 40x40 square is white; the side bands are black and cropped away
    x = image_to_model(img, (1, 12, 12))
    assert x.shape == (1, 1, 12, 12) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x, torch.ones_like(x))
    gray = image_to_model(np.full((12, 12), 0, dtype=np.uint8), (3, 8, 8))
    assert gray.shape == (1, 3, 8, 8) and torch.all(gray == -1)
    with pytest.raises(ValueError, match="uint8"):
        image_to_model(np.zeros((4, 4), dtype=np.float32), (1, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, 1\|3\|4\)"):
        image_to_model(np.zeros((4, 4, 2), dtype=np.uint8), (1, 4, 4))


def test_forward_helpers(pipe):
    x0 = torch.zeros(1, 1, 12, 12)
    eps = forward_noise(x0)
    assert torch.equal(eps, forward_noise(x0))  # fixed noise: sliding t only changes the level
    x_end = q_sample_at(pipe.schedule, x0 + 1, pipe.T - 1, eps)
    ab = float(pipe.schedule.alpha_bar[-1])
    assert torch.allclose(x_end, ab**0.5 * (x0 + 1) + (1 - ab) ** 0.5 * eps, atol=1e-6)
    assert torch.allclose(q_sample_at(pipe.schedule, x0 + 1, 0, eps), x0 + 1, atol=0.05)  # t = 0: nearly clean
    for bad in (-1, pipe.T, 1.5, True):
        with pytest.raises(ValueError, match=rf"t must be an integer in 0\.\.{pipe.T - 1}"):
            q_sample_at(pipe.schedule, x0, bad, eps)
    ts = log_snr_timesteps(pipe.schedule, 8)
    assert len(ts) == 8 and ts == sorted(set(ts)) and ts[0] == 0 and ts[-1] == pipe.T - 1


def test_examples_shipped_and_generated(tiny_checkpoint, tmp_path, pipe):
    assert example_name("7_Sneaker") == "7 · Sneaker" and example_name("9_Ankle_boot") == "9 · Ankle boot"
    folder = tmp_path / "ckpt"
    (folder / "examples").mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(folder / "examples" / "1_Vertical.png")
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(folder / "examples" / "0_Horizontal.png")
    ex = load_examples(folder)
    assert [n for n, _ in ex] == ["0 · Horizontal", "1 · Vertical"]
    assert ex[0][1].shape == (28, 28, 3) and ex[1][1].shape == (28, 28, 1) and ex[1][1].max() == 200
    assert load_examples(tmp_path / "nowhere") == []
    gen = generated_examples(pipe, steps=3)
    assert [n for n, _ in gen] == [f"{c} (generated)" for c in label_choices(pipe)]
    assert gen[0][1].shape == (12, 12, 1) and gen[0][1].dtype == np.uint8


def test_registry_loads_listed_sources_only_and_falls_back(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"format": "something-else"}))
    reg = ModelRegistry([str(broken), str(tiny_checkpoint)], cache_size=1)
    with pytest.raises(ValueError, match=r"unknown model '/etc'; choose one of"):
        reg.get("/etc")
    source, p, failures = reg.first_loadable([str(tmp_path / "missing"), str(broken)])
    assert source == str(tiny_checkpoint) and p.T == 1000
    assert set(failures) == {str(tmp_path / "missing"), str(broken)}
    assert "not a ddpm-studio checkpoint" in failures[str(broken)]
    assert reg.sources == [str(tiny_checkpoint)]  # failed sources are no longer offered
    assert reg.get(str(tiny_checkpoint)) is p  # cached
    names = [n for n, _ in reg.examples(str(tiny_checkpoint))]
    assert names  # shipped by training, or generated
    with pytest.raises(ValueError, match="no model could be loaded"):
        ModelRegistry([str(broken)]).first_loadable([str(broken)])


def test_local_checkpoints(tmp_path, tiny_checkpoint):
    shutil.copytree(tiny_checkpoint, tmp_path / "b-model")
    (tmp_path / "a-empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert local_checkpoints(tmp_path) == [str(tmp_path / "b-model")]
    # an evaluation classifier beside the models is not a model to offer; a garbled config still is (its
    # load error is shown on the page)
    (tmp_path / "c-classifier").mkdir()
    (tmp_path / "c-classifier" / "config.json").write_text('{"format": "ddpm-studio-classifier", "format_version": 1}')
    (tmp_path / "d-garbled").mkdir()
    (tmp_path / "d-garbled" / "config.json").write_text("{not json")
    assert local_checkpoints(tmp_path) == [str(tmp_path / "b-model"), str(tmp_path / "d-garbled")]
    assert local_checkpoints(tmp_path / "missing") == []
