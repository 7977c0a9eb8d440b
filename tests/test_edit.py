"""ddpm.edit: image-to-image (SDEdit), inpainting (RePaint) and seed interpolation (slerp).

The specification: strength 0 returns the input and strength 1 is plain sampling; SDEdit is the sampler run from
q(x_t0 | x_0); RePaint keeps the known pixels exactly, its known region follows q(x_s | x_0) at every step, and
with a model that knows the data (a single image: the exact eps is closed-form) the filled region is that image;
slerp's ends are the two seeds' noises and every point on the path has the norm of Gaussian noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm.edit import Edit, edit_steps, interpolation_noise, slerp
from ddpm.options import SamplerOptions
from ddpm.samplers import make_rngs, options_eps_fn, randn_per_image, run_to_end, solver_steps, timesteps_for
from ddpm.schedule import NoiseSchedule, ScheduleConfig

SAMPLERS = ["ddpm", "ddim", "dpm++2m"]


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return ddpm.load(tiny_checkpoint)


def opts(sampler: str = "ddim", **kw) -> SamplerOptions:
    base = dict(sampler=sampler, steps=12, cfg=2.0, precision="fp32", eta=0.5 if sampler == "ddim" else 0.0)
    return SamplerOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def image(pipe) -> torch.Tensor:
    """A real-looking input: a plain sample of the model, (1, 1, 12, 12) in [-1, 1]."""
    return pipe.sample([2], seed=123, options=opts("dpm++2m"))


# -- image-to-image -------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_strength_zero_returns_the_input_exactly(pipe, image):
    steps = list(pipe.stream([0, 1], seed=4, options=opts(), init=image, strength=0.0))
    assert len(steps) == 1 and steps[0].is_last
    assert torch.equal(steps[0].x_t, image.expand(2, -1, -1, -1))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_one_is_plain_sampling_from_the_same_noise(pipe, image, sampler):
    plain = pipe.sample([1, 2], seed=7, options=opts(sampler))
    edited = pipe.sample([1, 2], seed=7, options=opts(sampler), init=image, strength=1.0)
    assert torch.equal(plain, edited)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strength", [0.3, 0.6])
def test_sdedit_is_the_sampler_run_from_q_xt0_given_x0(pipe, image, sampler, strength):
    o = opts(sampler)
    got = list(pipe.stream([0, 2], seed=11, options=o, init=image, strength=strength))
    T = pipe.T
    t0 = round(strength * (T - 1))
    ts = timesteps_for(T, round(strength * o.steps), o.spacing, start=t0)
    assert [s.t for s in got] == ts and ts[0] == t0  # only the steps from t0 run: the cost is `strength` of a run
    rngs = make_rngs(11, 2)
    eps = randn_per_image(rngs, pipe.image_shape, pipe.device)
    x0 = image.expand(2, -1, -1, -1)
    x_t0 = pipe.schedule.sqrt_alpha_bar[t0] * x0 + pipe.schedule.sqrt_one_minus_alpha_bar[t0] * eps
    eps_fn = options_eps_fn(pipe.model, pipe.schedule, torch.tensor([0, 2]), o, 3, pipe.device)
    want = run_to_end(solver_steps(eps_fn, pipe.schedule, x_t0, rngs, o, ts=ts)).clamp(-1, 1)
    assert torch.allclose(got[-1].x_t, want, atol=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_more_strength_moves_further_from_the_input(pipe, image):
    dist = [float((pipe.sample([0], seed=3, options=opts("dpm++2m"), init=image, strength=s) - image).abs().mean())
            for s in (0.0, 0.2, 0.95)]
    assert dist[0] == 0.0 and dist[1] < dist[2]


# -- inpainting -----------------------------------------------------------------------------------------------------
HALF = torch.zeros(12, 12, dtype=torch.bool)
HALF[:, 6:] = True  # generate the right half, keep the left


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("jumps", [0, 2])
def test_inpainting_keeps_the_known_pixels_bit_exactly(pipe, image, sampler, jumps):
    out = pipe.sample([0, 1, 2], seed=5, options=opts(sampler), init=image, mask=HALF, jumps=jumps)
    assert torch.equal(out[..., :6], image.expand(3, -1, -1, -1)[..., :6])
    assert not torch.equal(out[..., 6:], image.expand(3, -1, -1, -1)[..., 6:])


@pytest.mark.usefixtures("one_thread")
def test_inpainting_with_everything_known_returns_the_input(pipe, image):
    out = pipe.sample([1], seed=5, options=opts("ddpm"), init=image, mask=torch.zeros(12, 12, dtype=torch.bool))
    assert torch.equal(out, image)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_with_nothing_known_is_plain_sampling(pipe, image, sampler):
    plain = pipe.sample([0, 2], seed=9, options=opts(sampler))
    out = pipe.sample([0, 2], seed=9, options=opts(sampler), init=image, mask=torch.ones(12, 12, dtype=torch.bool))
    assert torch.equal(out, plain)


class OracleEps(torch.nn.Module):
    """The exact noise prediction when the data is one image x*: eps = (x_t - sqrt(alpha_bar) x*) / sqrt(1 - alpha_bar)."""

    def __init__(self, schedule: NoiseSchedule, target: torch.Tensor) -> None:
        super().__init__()
        self.schedule, self.target = schedule, target

    def forward(self, x, t, y=None):
        ab = self.schedule.alpha_bar[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_with_an_exact_model_the_hole_is_filled_with_the_data(sampler):
    """A model that knows the data is one image x* fills the hole with x*, whatever the input shows elsewhere."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    target = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    init = -target  # a different picture: its left half is kept
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 4:] = True
    edit = Edit(init=init, mask=mask, jumps=1)
    out = run_to_end(edit_steps(OracleEps(schedule, target), schedule, [0, 1], None,
                                opts(sampler, cfg=1.0, steps=20, eta=0.0), None, (1, 8, 8), torch.device("cpu"), edit))
    assert torch.equal(out[..., :4], init.expand(2, -1, -1, -1)[..., :4])
    assert torch.allclose(out[..., 4:], target.expand(2, -1, -1, -1)[..., 4:], atol=1e-4)


def test_the_known_region_follows_the_forward_process_at_every_step():
    """After each step to level s the known pixels are sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s) z, z ~ N(0, I)."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    x0 = torch.full((1, 1, 64, 64), 0.5)
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., :8] = True
    zero = torch.nn.Module()
    zero.forward = lambda x, t, y=None: torch.zeros_like(x)
    o = opts("ddim", cfg=1.0, steps=10, eta=0.0)
    ts = timesteps_for(1000, 10)
    steps = list(edit_steps(zero, schedule, [0, 1, 2, 3], None, o, None, (1, 64, 64), torch.device("cpu"),
                            Edit(init=x0, mask=mask)))
    for i, step in enumerate(steps[:-1]):
        ab = float(schedule.alpha_bar[ts[i + 1]])
        z = (step.x_t[..., 8:] - math.sqrt(ab) * 0.5) / math.sqrt(1 - ab)
        assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03, (i, float(z.mean()), float(z.std()))


# -- seed interpolation ---------------------------------------------------------------------------------------------
def test_slerp_ends_are_the_two_noises_and_the_path_keeps_gaussian_norms():
    shape = (3, 28, 28)
    d = 3 * 28 * 28
    path = interpolation_noise(4, 17, 9, shape)
    a = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    b = torch.randn(shape, generator=torch.Generator().manual_seed(17))
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    # |x| of d-dim standard Gaussian noise: sqrt(d) - 1/(4 sqrt(d)) on average, sd ~ 1/sqrt(2)
    for x in path:
        assert abs(float(x.norm()) - math.sqrt(d)) < 4.0
        assert abs(float(x.mean())) < 4 / math.sqrt(d) and abs(float(x.std()) - 1) < 0.05
    mid_lerp = 0.5 * (a + b)  # the straight line's midpoint is far too small: the test can tell them apart
    assert abs(float(mid_lerp.norm()) - math.sqrt(d)) > 10.0


def test_slerp_of_parallel_vectors_is_the_straight_line():
    a = torch.ones(1, 4)
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, torch.ones(1, 5), 0.5)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_interpolation_ends_are_the_two_seeds_images(pipe, sampler):
    o = opts(sampler, eta=0.0)
    frames = run_to_end(pipe.interpolate(3, 8, k=5, labels=["Horizontal", "Square"], options=o))
    a = pipe.sample(["Horizontal"], seed=3, options=o)
    b = pipe.sample(["Square"], seed=8, options=o)
    assert frames.shape == (5, 1, 12, 12)
    assert torch.allclose(frames[0], a[0], atol=1e-4) and torch.allclose(frames[-1], b[0], atol=1e-4)
    steps = np.diff([float((frames[j] - a[0]).abs().mean()) for j in range(5)])
    assert (steps > -0.05).all()  # the path leaves A and heads to B (roughly monotone)


def test_interpolation_needs_a_deterministic_sampler(pipe):
    with pytest.raises(ValueError, match="deterministic"):
        pipe.interpolate(0, 1, k=3, labels=[0], options=opts("ddpm"))
    with pytest.raises(ValueError, match="deterministic"):
        pipe.interpolate(0, 1, k=3, labels=[0], options=opts("ddim", eta=0.5))
    with pytest.raises(ValueError, match="2..64"):
        pipe.interpolate(0, 1, k=1, labels=[0], options=opts("dpm++2m"))
    with pytest.raises(ValueError, match="one class or two"):
        pipe.interpolate(0, 1, k=3, labels=[0, 1, 2], options=opts("dpm++2m"))


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_strength_outside_zero_one_is_refused(pipe, image, strength):
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        pipe.stream([0], options=opts(), init=image, strength=strength)


def test_bad_edits_get_clear_errors(pipe, image, tmp_path):
    with pytest.raises(ValueError, match="the mask is 5x5 but must be 12x12"):
        pipe.stream([0], options=opts(), init=image, mask=np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"bool tensor \(1 or 1, 1, 12, 12\)"):
        pipe.stream([0], options=opts(), init=image, mask=torch.ones(1, 1, 12, 12))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="is not a readable image"):
        pipe.stream([0], options=opts(), init=text)
    with pytest.raises(ValueError, match="does not exist"):
        pipe.stream([0], options=opts(), init=tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"tensor \(1 or 1, 1, 12, 12\)"):
        pipe.stream([0], options=opts(), init=torch.zeros(3, 12, 12))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pipe.stream([0], options=opts(), init=torch.full((1, 12, 12), 3.0))
    with pytest.raises(ValueError, match="need a mask"):
        pipe.stream([0], options=opts(), init=image, jumps=2)
    with pytest.raises(ValueError, match="need an input image"):
        pipe.stream([0], options=opts(), strength=0.5)


def test_any_image_is_brought_to_the_model_with_notes(pipe, tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)  # transparent and wide: white after compositing, then cropped
    rgba[:, :30, 3] = 255  # the left half opaque black
    path = tmp_path / "wide.png"
    Image.fromarray(rgba).save(path)
    edit = pipe.edit(path, strength=0.5)
    assert edit.init.shape == (1, 1, 12, 12)
    assert edit.notes == ("transparency composited on white", "centre-cropped to 40x40",
                          "resized 60x40 to the model's 12x12")  # black and white: no colour to drop
    x = edit.init[0, 0]
    assert float(x[:, 0].max()) < -0.9 and float(x[:, -1].min()) > 0.9  # black left, white right
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 30:] = 255  # the input's size: cropped and resized with it
    m = pipe.edit(path, mask=mask).mask[0, 0]
    assert m.shape == (12, 12) and not m[:, :5].any() and m[:, 7:].all()


def test_what_is_not_done_is_not_reported(pipe):
    """An opaque gray picture sent as RGBA (what a browser's image editor sends) at the model's size: no notes."""
    gray = np.zeros((12, 12, 4), np.uint8)
    gray[..., :3] = np.arange(12, dtype=np.uint8)[:, None, None] * 20
    gray[..., 3] = 255
    edit = pipe.edit(gray)
    assert edit.notes == ()
    assert torch.allclose(edit.init[0, 0, :, 0], torch.arange(12) * 20 / 127.5 - 1)
    red = np.zeros((12, 12, 3), np.uint8)
    red[..., 0] = 200
    assert pipe.edit(red).notes == ("converted colour to grayscale",)


def test_rgb_models_take_grayscale_input(tiny_checkpoint, tmp_path):
    from ddpm.images import load_image, load_mask

    x, notes, size = load_image(Image.new("L", (32, 32), 128), (3, 8, 8))
    assert x.shape == (1, 3, 8, 8) and size == (32, 32) and "converted grayscale to RGB" in notes
    painted = np.zeros((8, 8, 4), np.uint8)
    painted[:4, :, 3] = 255
    assert load_mask(painted, (3, 8, 8))[0, 0, :4].all() and not load_mask(painted, (3, 8, 8))[0, 0, 4:].any()


def test_resampling_noises_back_by_the_forward_process():
    """RePaint's jump from s back to t draws x_t ~ q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I)."""
    from ddpm.samplers import renoise_update

    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    ts = [700, 400, 0]
    renoise = renoise_update(schedule, ts, make_rngs(0, 4))
    x_s = torch.full((4, 1, 64, 64), 0.3)
    x_t = renoise(0, x_s)
    a = float(schedule.alpha_bar[700] / schedule.alpha_bar[400])
    z = (x_t - math.sqrt(a) * 0.3) / math.sqrt(1 - a)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_a_prepared_edit_is_checked_when_the_stream_is_made(pipe, image):
    """stream(edit=...) fails at the call, not at the first step, for an Edit built by hand."""
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        pipe.stream([0], options=opts(), edit=Edit(init=image, strength=2.0))
    with pytest.raises(ValueError, match=r"tensor \(1 or 2, 1, 12, 12\)"):
        pipe.stream([0, 1], options=opts(), edit=Edit(init=image.expand(3, -1, -1, -1)))
