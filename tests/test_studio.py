"""ddpm.studio: labels, the controls' start, request checks (with a recommended guidance interval), the guidance
sweep and the forward-process helpers; and the page's label -> per-class scale script, run in Chromium."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
from conftest import INTERVAL, PER_CLASS
from ddpm.device import AUTO_BF16_MIN_BATCH, bf16_supported
from ddpm.images import to_uint8
from ddpm.samplers import run_to_end, timesteps_for
from ddpm.studio import (
    CFG_MAX,
    CLASS_SCALE_JS,
    GUIDANCE_SCALES,
    SEED_MAX,
    Request,
    class_scales,
    forward_noise,
    guidance_sweep,
    label_choices,
    log_snr_timesteps,
    parse_integer,
    parse_label,
    parse_request,
    q_sample_at,
    start_options,
)
from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS

GOOD = dict(label="1 · Vertical", cfg=3.0, steps=10, seed=0, n_images=4, sampler="ddim", eta=0.0, precision="fp32")
GOOD_AT_W4 = dict(label="1 · Vertical", cfg=4.0, steps=10, seed=2, n_images=1, sampler="ddim", eta=0.0,
                  precision="fp32")  # one image at the scale interval_checkpoint recommends
BF16 = bf16_supported(torch.device("cpu"))


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


def test_the_controls_start_at_the_recommendation_with_guidance_scales_within_the_slider(pipe):
    rec = ddpm.SamplerOptions(sampler="dpm++2m", steps=25, cfg=12.0, spacing=1.5, guidance_interval=(0.2, 0.8),
                              class_cfg=(0.5, 11.0, 2.0), precision="fp32", redraws=2)
    start = start_options(_recommending(pipe, rec))
    assert start == rec.replace(cfg=CFG_MAX, class_cfg=(0.5, CFG_MAX, 2.0), precision="auto")
    assert class_scales(pipe, start) == {"names": ["horizontal", "vertical", "square"], "scales": [0.5, CFG_MAX, 2.0]}
    assert class_scales(pipe, start.replace(cfg=2.0)) is None  # one scale for every class


def _recommending(pipe, options: ddpm.SamplerOptions):
    """pipe with another recommendation (config.json "sampling")."""
    return dataclasses.replace(pipe, config=dataclasses.replace(pipe.config, sampling=options))


def test_parse_request_accepts_good_values(pipe):
    r = parse_request(pipe, **GOOD)
    assert (r.label, r.seed, r.n_images, r.labels()) == (1, 0, 4, [1, 1, 1, 1])
    assert r.options == pipe.recommended.replace(sampler="ddim", steps=10, cfg=3.0, eta=0.0, precision="fp32",
                                                 guidance_interval=None, spacing=1.0, redraws=0)
    assert r.describe() == "seed 0 · label 1 · 4 images · DDIM, 10 steps · CFG 3 · fp32 (chosen)"
    # numbers as a browser sends them (floats with integer values) are fine
    r = parse_request(pipe, **{**GOOD, "steps": 10.0, "seed": float(SEED_MAX), "n_images": 16.0, "sampler": "DDPM"})
    assert (r.options.steps, r.seed, r.n_images, r.options.sampler) == (10, SEED_MAX, 16, "ddpm")
    r = parse_request(pipe, **{**GOOD, "spacing": 2, "redraws": 2.0, "eta": 0.5})
    assert r.options.spacing == 2.0 and r.timesteps(pipe.T) == timesteps_for(pipe.T, 10, 2.0)
    assert r.options.redraws == 2 and "DDIM (eta 0.5), 10 steps (spacing 2)" in r.describe()
    assert "up to 2 redraw rounds" in r.describe()


def test_a_request_is_the_recommendation_with_the_controls_values(pipe):
    """Settings the page has no control for (variance, clipping, redraw threshold) come from the checkpoint; a CFG
    scale replaces the per-class scales; the checkbox turns the recommended interval on or off."""
    rec = ddpm.SamplerOptions(clip_x0=False, redraw_threshold=0.25, class_cfg=(1.0, 2.0, 3.0),
                              guidance_interval=(0.2, 0.7))
    p = _recommending(pipe, rec)
    r = parse_request(p, **GOOD, limit_guidance=True)
    assert r.options == rec.replace(sampler="ddim", steps=10, cfg=3.0, precision="fp32", class_cfg=None)
    assert "CFG 3 for t/T in 0.2..0.7" in r.describe() and "x0 not clipped" in r.describe()
    assert parse_request(p, **GOOD, limit_guidance=False).options.guidance_interval is None
    assert parse_request(pipe, **GOOD, limit_guidance=True).options.guidance_interval is None  # none recommended


def test_a_request_samples_what_the_library_samples_for_its_options(pipe):
    r = parse_request(pipe, **{**GOOD, "spacing": 1.5, "sampler": "dpm++2m"})
    expected = pipe.sample([1] * 4, seed=0, options=ddpm.SamplerOptions(sampler="dpm++2m", steps=10, cfg=3.0,
                                                                       spacing=1.5, precision="fp32"))
    assert torch.equal(run_to_end(r.stream(pipe)), expected)


def test_auto_precision_goes_by_the_network_batch(pipe):
    def precision(**kw) -> tuple[str, str]:
        r = parse_request(pipe, **{**GOOD, "precision": "auto", **kw})
        return r.options.precision, r.precision_reason

    assert precision(n_images=4) == ("fp32", f"auto: network batch 8 < {AUTO_BF16_MIN_BATCH}")
    assert precision(n_images=9, cfg=1.0) == ("fp32", f"auto: network batch 9 < {AUTO_BF16_MIN_BATCH}")
    guided = precision(n_images=9)  # cond and uncond halves: 18 rows
    assert guided == (("bf16", f"auto: network batch 18 >= {AUTO_BF16_MIN_BATCH}") if BF16
                      else ("fp32", "auto: bf16 not supported here"))
    assert precision(n_images=16, cfg=0.0)[0] == ("bf16" if BF16 else "fp32")


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
    ("spacing", 0.5, r"spacing must be a number in 1\.\.4, got 0\.5 \(1 = even steps, 2 = quadratic\)"),
    ("spacing", "quad", r"spacing must be a number in 1\.\.4, got 'quad'"),
    ("precision", "fp16", r"unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    ("precision", None, r"unknown precision None; choose one of auto, fp32, bf16"),
    ("label", "Dog", r"unknown class 'Dog'"),
    ("redraws", -1, r"redraws must be an integer in 0\.\.5, got -1"),
    ("redraws", 1.5, r"redraws must be an integer in 0\.\.5, got 1\.5"),
    ("redraws", "two", r"redraws must be an integer in 0\.\.5, got 'two'"),
    ("limit_guidance", "yes", r"limit_guidance must be true or false, got 'yes'"),
])
def test_parse_request_rejects_bad_values(pipe, field, value, match):
    with pytest.raises(ValueError, match=match):
        parse_request(pipe, **{**GOOD, field: value})


def test_guidance_sweep_rows_match_single_image_runs(pipe):
    r = parse_request(pipe, **{**GOOD, "n_images": 1, "steps": 8, "seed": 5})
    rows = guidance_sweep(pipe, r, GUIDANCE_SCALES)
    assert rows.shape == (len(GUIDANCE_SCALES), 1, 12, 12)
    for j in (0, 3, 5):
        single = pipe.sample(labels=[1], seed=5, steps=8, cfg=GUIDANCE_SCALES[j], sampler="ddim")
        diff = np.abs(to_uint8(rows[j : j + 1]).astype(int) - to_uint8(single).astype(int))
        assert diff.max() <= 2  # the same computation, up to float summation order in a bigger batch
    assert not torch.equal(rows[0], rows[5])  # guidance changes the image


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_guidance_sweep_follows_the_sampler_and_spacing(pipe, sampler):
    r = parse_request(pipe, **{**GOOD, "n_images": 1, "steps": 6, "seed": 5, "spacing": 2.0, "sampler": sampler})
    rows = guidance_sweep(pipe, r, (1.0, 3.0))
    single = pipe.sample(labels=[1], seed=5, steps=6, cfg=3.0, sampler=sampler, spacing=2.0)
    assert np.abs(to_uint8(rows[1:]).astype(int) - to_uint8(single).astype(int)).max() <= 2


def test_guidance_sweep_with_ddpm_sampler_uses_the_seed(pipe):
    r = parse_request(pipe, **{**GOOD, "n_images": 1, "steps": 6, "seed": 9, "sampler": "ddpm"})
    rows = guidance_sweep(pipe, r, (2.0, 2.0))
    assert torch.allclose(rows[0], rows[1])  # same scale, same seed -> same image
    single = pipe.sample(labels=[1], seed=9, steps=6, cfg=2.0, sampler="ddpm")
    assert np.abs(to_uint8(rows[:1]).astype(int) - to_uint8(single).astype(int)).max() <= 2


def test_guidance_sweep_inside_the_recommended_interval(pipe):
    p = _recommending(pipe, ddpm.SamplerOptions(guidance_interval=(0.2, 0.7)))
    limited = guidance_sweep(p, parse_request(p, **{**GOOD, "n_images": 1}, limit_guidance=True), (0.0, 4.0))
    for j, w in enumerate((0.0, 4.0)):
        single = p.sample([1], seed=0, steps=10, cfg=w, sampler="ddim", guidance_interval=(0.2, 0.7))
        assert np.abs(to_uint8(limited[j:j + 1]).astype(int) - to_uint8(single).astype(int)).max() <= 2
    assert not torch.equal(limited[1], guidance_sweep(p, parse_request(p, **{**GOOD, "n_images": 1}), (0.0, 4.0))[1])
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        guidance_sweep(pipe, Request(ddpm.SamplerOptions(), None, 0, 1), (1.0,))


@pytest.mark.usefixtures("one_thread")
def test_limit_guidance_runs_the_recommended_interval(interval_checkpoint: Path):
    pipe = ddpm.load(interval_checkpoint)
    limited = parse_request(pipe, **GOOD_AT_W4, limit_guidance=True)
    full = parse_request(pipe, **GOOD_AT_W4, limit_guidance=False)
    assert limited.options.guidance_interval == INTERVAL and full.options.guidance_interval is None
    assert "CFG 4 for t/T in 0.2..0.7" in limited.describe()
    a = pipe.sample(limited.labels(), seed=limited.seed, options=limited.options)
    assert torch.equal(a, pipe.sample([1], seed=2, steps=10, cfg=4.0, guidance_interval=INTERVAL))
    assert not torch.equal(a, pipe.sample(full.labels(), seed=full.seed, options=full.options))
    with pytest.raises(ValueError, match="limit_guidance must be true or false, got 'yes'"):
        parse_request(pipe, **GOOD_AT_W4, limit_guidance="yes")


@pytest.mark.usefixtures("one_thread")
def test_limit_guidance_has_no_effect_without_a_recommendation(tiny_checkpoint: Path):
    assert parse_request(ddpm.load(tiny_checkpoint), **GOOD_AT_W4, limit_guidance=True).options.guidance_interval is None


@pytest.mark.usefixtures("one_thread")
def test_guidance_sweep_rows_match_single_runs_with_the_interval(interval_checkpoint: Path):
    pipe = ddpm.load(interval_checkpoint)
    run = parse_request(pipe, **GOOD_AT_W4, limit_guidance=True)
    scales = (0.0, 1.0, 4.0)
    rows = guidance_sweep(pipe, run, scales)
    for j, w in enumerate(scales):
        single = pipe.sample([1], seed=2, steps=10, cfg=w, guidance_interval=INTERVAL)  # the rest: the recommendation
        assert np.abs(to_uint8(rows[j:j + 1]).astype(int) - to_uint8(single).astype(int)).max() <= 2
    unlimited = guidance_sweep(pipe, parse_request(pipe, **GOOD_AT_W4), scales)
    assert not torch.equal(rows[2], unlimited[2])


def test_parse_integer_takes_what_a_browser_sends_and_names_the_range():
    assert parse_integer("k", 3.0, 2, 64) == 3 and isinstance(parse_integer("k", 3.0, 2, 64), int)
    for bad in (1, 65, 2.5, "3", True, None, float("nan")):
        with pytest.raises(ValueError, match=r"k must be an integer in 2\.\.64, got "):
            parse_integer("k", bad, 2, 64)


def test_forward_helpers(pipe):
    x0 = torch.zeros(1, 1, 12, 12)
    eps = forward_noise(x0)
    assert torch.equal(eps, forward_noise(x0))  # fixed noise: sliding t only changes the level
    assert not torch.equal(eps, forward_noise(x0, seed=1))
    # the numbers of a sampler's first draw for image 0 of the seed (what "denoise from here" relies on)
    first_draw = torch.randn((1, 12, 12), generator=torch.Generator().manual_seed(7))
    assert torch.equal(forward_noise(x0, seed=7)[0], first_draw)
    x_end = q_sample_at(pipe.schedule, x0 + 1, pipe.T - 1, eps)
    ab = float(pipe.schedule.alpha_bar[-1])
    assert torch.allclose(x_end, ab**0.5 * (x0 + 1) + (1 - ab) ** 0.5 * eps, atol=1e-6)  # eq. 4 of Ho et al.
    assert torch.allclose(q_sample_at(pipe.schedule, x0 + 1, 0, eps), x0 + 1, atol=0.05)  # t = 0: nearly clean
    for bad in (-1, pipe.T, 1.5, True):
        with pytest.raises(ValueError, match=rf"t must be an integer in 0\.\.{pipe.T - 1}"):
            q_sample_at(pipe.schedule, x0, bad, eps)
    ts = log_snr_timesteps(pipe.schedule, 8)
    assert len(ts) == 8 and ts == sorted(set(ts)) and ts[0] == 0 and ts[-1] == pipe.T - 1


@pytest.mark.usefixtures("one_thread")
@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_browser_reads_a_label_as_the_server_does(per_class: Path):
    """CLASS_SCALE_JS, run in Chromium, picks the scale of the class studio.parse_label reads from each label."""
    from playwright.sync_api import sync_playwright

    pipe = ddpm.load(per_class)
    rec = class_scales(pipe, pipe.recommended)
    labels = [*label_choices(pipe), "Square", "vertical", " 2 ", "1", "0 · anything", "no such class", "7", "-1", "",
              None]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            got = page.evaluate(f"([labels, rec]) => labels.map(l => ({CLASS_SCALE_JS})(l, rec, -1))", [labels, rec])
            unconditional = page.evaluate(f"() => ({CLASS_SCALE_JS})('1', null, 2.5)")
        finally:
            browser.close()

    def server(label):
        try:
            return PER_CLASS[parse_label(pipe, label)]
        except ValueError:
            return -1  # not a class: the slider keeps its value

    assert got == [server(label) for label in labels]
    assert got[:3] == PER_CLASS and got.count(-1) == 5
    assert unconditional == 2.5
