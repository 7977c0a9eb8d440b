"""Samplers, checked with exact "oracle" noise predictors for data whose distribution is known.

For 1-D Gaussian data x0 ~ N(mu, s^2), x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and the optimal noise
prediction is E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)  (ab = alpha_bar_t).
Every pixel of an image is an independent 1-D sample, so 8 images of 64x64 give 32768 samples.

With the oracle every sampler step is an affine map plus Gaussian noise, so the exact mean and
variance of a run's output follow from a short recursion written out here from the papers' update
equations (DDPM eq. 7 / respace.py; DDIM eq. 12). Full-T DDPM must reproduce the data distribution;
runs with 50-100 steps must match the exact discrete-time prediction (for data this narrow, 50-step
samplers really do lose 5-20% of the variance: the last step from t ~ 20 to 0 is too coarse).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import ddpm
from ddpm.images import to_uint8
from ddpm.model import UNet, preset_config
from ddpm.guidance import guided_at, guided_eps_fn
from ddpm.samplers import (
    SamplerOptions,
    ddim_steps,
    dpmpp_2m_steps,
    make_rngs,
    randn_per_image,
    run_to_end,
    sample_steps,
    solver_steps,
    timesteps_for,
)
from ddpm.schedule import NoiseSchedule, ScheduleConfig

T = 1000
SHAPE = (1, 64, 64)  # per image; 8 images -> 32768 independent 1-D samples
N_IMAGES = 8
N = N_IMAGES * 64 * 64


class GaussianOracle(torch.nn.Module):
    """eps(x_t, t) = E[eps | x_t] for x0 ~ N(mu, s^2), with the UNet's call signature model(x, t, y)."""

    def __init__(self, schedule: NoiseSchedule, mu: float, s: float) -> None:
        super().__init__()
        self.alpha_bar = schedule.alpha_bar.double()
        self.mu, self.s = mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, *[1] * (x.dim() - 1))
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)
        return eps.float()


class TwoPointOracle(torch.nn.Module):
    """eps(x_t, t) for x0 = +a with probability p, -a otherwise: E[x0 | x_t] = a tanh(sqrt(ab) a x / (1 - ab) + logit(p) / 2)."""

    def __init__(self, schedule: NoiseSchedule, a: float, p: float) -> None:
        super().__init__()
        self.alpha_bar = schedule.alpha_bar.double()
        self.a, self.p = a, p

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, *[1] * (x.dim() - 1))
        x0_mean = self.a * torch.tanh(ab.sqrt() * self.a * x.double() / (1 - ab) + 0.5 * math.log(self.p / (1 - self.p)))
        return ((x.double() - ab.sqrt() * x0_mean) / (1 - ab).sqrt()).float()


def exact_moments(alpha_bar: np.ndarray, ts: list[int], mu: float, s: float, sampler: str, *, eta: float = 0.0,
                  variance: str = "posterior") -> tuple[float, float]:
    """Mean and variance of the output of a sampler run from x_T ~ N(0, 1) with the Gaussian oracle."""
    m, v = 0.0, 1.0
    for i, t in enumerate(ts):
        ab = float(alpha_bar[t])
        ab_prev = float(alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        # x0_pred = E[x0 | x_t] = a0 x_t + b0 (Gaussian conditioning); eps_pred = ae x_t + be (eq. 4 solved for eps)
        a0 = math.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab)
        b0 = mu - a0 * math.sqrt(ab) * mu
        ae, be = (1 - math.sqrt(ab) * a0) / math.sqrt(1 - ab), -math.sqrt(ab) * b0 / math.sqrt(1 - ab)
        last = i + 1 == len(ts)
        if sampler == "ddpm":  # x_prev = mu~(x_t, x0_pred) + sigma z, with the respaced beta
            beta = 1 - ab / ab_prev
            c0, ct = math.sqrt(ab_prev) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
            a, b = c0 * a0 + ct, c0 * b0
            noise = 0.0 if last else (beta * (1 - ab_prev) / (1 - ab) if variance == "posterior" else beta)
        else:  # x_prev = sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev - sigma^2) eps_pred + sigma z
            sigma2 = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            d = math.sqrt(max(1 - ab_prev - sigma2, 0.0))
            a, b = math.sqrt(ab_prev) * a0 + d * ae, math.sqrt(ab_prev) * b0 + d * be
            noise = sigma2
        m, v = a * m + b, a * a * v + noise
    return m, v


def run_oracle(model: torch.nn.Module, schedule: NoiseSchedule, sampler: str, steps: int, *, seed: int = 0,
               **kwargs) -> torch.Tensor:
    """Flat samples of one run; no x0 clipping and no final clamp (the data may leave [-1, 1])."""
    rngs = make_rngs(seed, N_IMAGES)
    x_T = randn_per_image(rngs, SHAPE, torch.device("cpu"))
    eps_fn = guided_eps_fn(model, None, cfg=1.0, null_label=None, T=schedule.T)
    options = SamplerOptions(sampler=sampler, steps=steps, clip_x0=False, **kwargs)
    return run_to_end(solver_steps(eps_fn, schedule, x_T, rngs, options)).flatten().double()


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request) -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(name=request.param, timesteps=T))


MU, S = 0.5, 0.5


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_full_ddpm_chain_reproduces_gaussian_data(schedule, variance):
    x = run_oracle(GaussianOracle(schedule, MU, S), schedule, "ddpm", T, variance=variance)
    se_mean, se_var = S / math.sqrt(N), S**2 * math.sqrt(2 / N)
    assert float(x.mean()) == pytest.approx(MU, abs=5 * se_mean)
    # sigma^2 = beta~ is exact for a point mass, beta for N(0, 1) data (Ho et al. sec. 3.2): both within 2% here
    assert float(x.var()) == pytest.approx(S**2, abs=5 * se_var + 0.02 * S**2)
    m, v = exact_moments(schedule.alpha_bar.double().numpy(), timesteps_for(T, T), MU, S, "ddpm", variance=variance)
    assert float(x.var()) == pytest.approx(v, abs=5 * se_var)


@pytest.mark.parametrize("sampler,steps,eta,spacing", [("ddpm", 100, 0.0, 1.0), ("ddim", 50, 0.0, 1.0),
                                                       ("ddim", 50, 1.0, 1.0), ("ddim", 100, 0.0, 1.0),
                                                       ("ddim", 100, 1.0, 1.0), ("ddim", 50, 0.0, 2.0),
                                                       ("ddpm", 50, 0.0, 1.5)])
def test_few_step_samplers_match_the_exact_discrete_prediction(schedule, sampler, steps, eta, spacing):
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    x = run_oracle(GaussianOracle(schedule, MU, S), schedule, sampler, steps, spacing=spacing, **kwargs)
    m, v = exact_moments(schedule.alpha_bar.double().numpy(), timesteps_for(T, steps, spacing), MU, S, sampler, eta=eta)
    se_mean, se_var = math.sqrt(v / N), v * math.sqrt(2 / N)
    assert float(x.mean()) == pytest.approx(m, abs=5 * se_mean)
    assert float(x.var()) == pytest.approx(v, abs=5 * se_var)
    # and the prediction itself is close to the data distribution
    assert m == pytest.approx(MU, abs=0.01)
    assert v == pytest.approx(S**2, rel=0.25)


@pytest.mark.parametrize("sampler,steps,kwargs", [("ddpm", T, {"variance": "posterior"}), ("ddpm", T, {"variance": "beta"}),
                                                  ("ddpm", 100, {}), ("ddim", 100, {"eta": 0.0}), ("ddim", 50, {"eta": 1.0}),
                                                  ("dpm++2m", 50, {})])
def test_two_point_mixture(sampler, steps, kwargs):
    schedule = NoiseSchedule(ScheduleConfig(name="linear", timesteps=T))
    a, p = 0.6, 0.3
    x = run_oracle(TwoPointOracle(schedule, a, p), schedule, sampler, steps, **kwargs)
    assert float(((x.abs() - a).abs() < 0.01).double().mean()) > 0.999  # samples land on the two points
    assert float((x > 0).double().mean()) == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / N))  # with the right weights


def exact_flow(x_T: torch.Tensor, alpha_bar_T: float, mu: float, s: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T for Gaussian data: it keeps (x_t - sqrt(ab) mu) / sd_t, so
    x_0 = mu + s (x_T - sqrt(ab_T) mu) / sqrt(ab_T s^2 + 1 - ab_T)."""
    return mu + s * (x_T.double() - math.sqrt(alpha_bar_T) * mu) / math.sqrt(alpha_bar_T * s**2 + 1 - alpha_bar_T)


@pytest.mark.parametrize("spacing", [1.0, 1.25])
def test_dpmpp_2m_lands_where_the_ode_does(schedule, spacing):
    """DDIM and DPM-Solver++(2M) solve the same ODE; at 50 steps the second-order one lands 5x closer to its
    exact endpoint, image by image (DDIM, first order, is off by ~0.1 here)."""
    eps_fn = guided_eps_fn(GaussianOracle(schedule, MU, S), None, cfg=1.0, null_label=None, T=T)
    x_T = randn_per_image(make_rngs(0, N_IMAGES), SHAPE, torch.device("cpu"))
    exact = exact_flow(x_T, float(schedule.alpha_bar[T - 1]), MU, S)
    err = {}
    for sampler in ("ddim", "dpm++2m"):
        options = SamplerOptions(sampler=sampler, steps=50, clip_x0=False, spacing=spacing)
        err[sampler] = float((run_to_end(solver_steps(eps_fn, schedule, x_T, [], options)) - exact).abs().max())
    assert err["dpm++2m"] < 0.02
    assert err["dpm++2m"] < err["ddim"] / 5


def test_dpmpp_2m_is_ddim_until_it_has_a_previous_step():
    """Its first step, and the last two, are DDIM's: runs of up to 3 steps are DDIM exactly, longer ones differ."""
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T))
    eps_fn = guided_eps_fn(GaussianOracle(schedule, MU, S), None, cfg=1.0, null_label=None, T=T)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for steps in (1, 2, 3, 4):
        ddim = [s.x_t for s in ddim_steps(eps_fn, schedule, x_T, [], steps=steps)]
        dpm = [s.x_t for s in dpmpp_2m_steps(eps_fn, schedule, x_T, steps=steps)]
        assert torch.allclose(ddim[0], dpm[0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ddim, dpm)) == (steps <= 3)


def test_ddim_eta0_is_deterministic_given_x_T():
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T))
    eps_fn = guided_eps_fn(GaussianOracle(schedule, MU, S), None, cfg=1.0, null_label=None, T=T)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    runs = {}
    for eta in (0.0, 1.0):
        for seed in (0, 1234):  # different per-step noise generators
            runs[eta, seed] = run_to_end(ddim_steps(eps_fn, schedule, x_T, make_rngs(seed, 2), steps=20, eta=eta))
    assert torch.equal(runs[0.0, 0], runs[0.0, 1234])
    assert not torch.allclose(runs[1.0, 0], runs[1.0, 1234])  # with eta = 1 the step noise matters


@pytest.mark.parametrize("T_", [1, 2, 10, 37, 1000])
def test_timesteps_for_every_step_count(T_):
    for steps in range(1, T_ + 1):
        ts = timesteps_for(T_, steps)
        assert len(ts) == steps
        assert ts[0] == T_ - 1
        if steps > 1:
            assert ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:])), f"not strictly decreasing for steps={steps}: {ts}"
        assert all(isinstance(t, int) for t in ts)
    assert timesteps_for(T_, T_) == list(range(T_ - 1, -1, -1))


@pytest.mark.parametrize("spacing", [1.25, 1.5, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("T_", [2, 10, 37, 1000])
def test_timesteps_for_any_spacing(T_, spacing):
    """t_i = round((T-1) (1 - i/(S-1))^p): distinct, T-1 first, 0 last, and on the power law from the high-noise
    end on; near t = 0, where rounding repeats steps, pushed apart by one."""
    for steps in range(1, T_ + 1):
        ts = timesteps_for(T_, steps, spacing)
        assert len(ts) == steps and ts[0] == T_ - 1 and (steps == 1 or ts[-1] == 0)
        assert all(a > b for a, b in zip(ts, ts[1:])), f"not strictly decreasing for steps={steps}: {ts}"
        if steps > 1:
            law = [round((T_ - 1) * (1 - i / (steps - 1)) ** spacing) for i in range(steps)]
            assert all(t >= w for t, w in zip(ts, law))  # never below the law: only pushed up near t = 0
            # until the law repeats a step or leaves too few below it for the steps still to come
            on_law = next((i for i in range(1, steps) if law[i] >= law[i - 1] or law[i] < steps - 1 - i), steps)
            assert ts[:on_law] == law[:on_law]
    assert timesteps_for(T_, T_, spacing) == list(range(T_ - 1, -1, -1))


def test_spacing_puts_more_steps_at_low_noise():
    even, quad = timesteps_for(1000, 50), timesteps_for(1000, 50, 2.0)
    assert sum(t < 200 for t in quad) > 2 * sum(t < 200 for t in even)
    assert quad[:3] == [999, 959, 919] and quad[-4:] == [4, 2, 1, 0]  # 999 (1 - i/49)^2: ..., 4, 2, 0, 0 pushed apart
    assert even[:3] == [999, 979, 958]


@pytest.mark.parametrize("spacing", [0.5, 0.99, 4.5, float("nan"), "2", True, None])
def test_bad_spacing(spacing):
    with pytest.raises(ValueError, match=r"spacing must be a number in 1..4"):
        timesteps_for(T, 10, spacing)
    with pytest.raises(ValueError, match=r"spacing must be a number in 1..4"):
        SamplerOptions(spacing=spacing).validate(T)


@pytest.mark.parametrize("steps", [0, -1, T + 1])
def test_timesteps_for_bad_steps(steps):
    with pytest.raises(ValueError, match=f"1..{T}"):
        timesteps_for(T, steps)


class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch size of every forward call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return self.inner(x, t, y)


@pytest.fixture(scope="module")
def random_unet() -> UNet:
    model = UNet(preset_config("tiny", image_size=8, num_classes=3))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def test_cfg_scales_and_one_batched_forward(random_unet):
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    labels, null = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    with torch.no_grad():
        cond, uncond = random_unet(x, t, labels), random_unet(x, t, null)
    assert not torch.allclose(cond, uncond)
    for w, expected in ((0.0, uncond), (1.0, cond), (2.0, 2 * cond - uncond), (0.5, 0.5 * cond + 0.5 * uncond),
                        (3.0, uncond + 3.0 * (cond - uncond))):
        counting = CountingModel(random_unet)
        eps = guided_eps_fn(counting, labels, cfg=w, null_label=3, T=T)(x, t)
        torch.testing.assert_close(eps, expected, atol=1e-5, rtol=1e-4)
        if w in (0.0, 1.0):
            assert counting.batches == [4]  # one half suffices
        else:
            assert counting.batches == [8], "cond and uncond must come from ONE batched forward pass"


def test_cfg_is_continuous_at_zero(random_unet):
    x, t, labels = torch.randn(2, 1, 8, 8), torch.full((2,), 300), torch.tensor([1, 2])
    at = lambda w: guided_eps_fn(random_unet, labels, cfg=w, null_label=3, T=T)(x, t)  # noqa: E731
    torch.testing.assert_close(at(1e-6), at(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(at(1 - 1e-6), at(1.0), atol=1e-5, rtol=0)


def test_guidance_interval(random_unet):
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    plain = guided_eps_fn(random_unet, labels, cfg=1.0, null_label=3, T=T)
    guided = guided_eps_fn(random_unet, labels, cfg=4.0, null_label=3, T=T, guidance_interval=(0.2, 0.8))
    t_out, t_in = torch.full((2,), 950), torch.full((2,), 500)
    torch.testing.assert_close(guided(x, t_out), plain(x, t_out))  # outside the interval: w = 1
    assert not torch.allclose(guided(x, t_in), plain(x, t_in))


def test_guided_at_is_the_closed_interval_of_t_over_T_minus_1():
    T = 1001  # t / (T - 1) = t / 1000
    assert all(guided_at(t, T, None) for t in (0, 500, 1000))
    inside = [t for t in range(T) if guided_at(t, T, (0.2, 0.8))]
    assert inside[0] == 200 and inside[-1] == 800 and len(inside) == 601
    assert [t for t in range(T) if guided_at(t, T, (0.0, 0.0))] == [0]


def test_per_image_scales_guide_each_image_with_its_own_w(random_unet):
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    labels, null = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    w = torch.tensor([0.0, 1.5, 3.0, 1.0])
    with torch.no_grad():
        cond, uncond = random_unet(x, t, labels), random_unet(x, t, null)
    counting = CountingModel(random_unet)
    eps = guided_eps_fn(counting, labels, cfg=w, null_label=3, T=T)(x, t)
    torch.testing.assert_close(eps, uncond + w.view(4, 1, 1, 1) * (cond - uncond), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps[0], uncond[0], atol=1e-5, rtol=1e-4)  # w = 0: unconditional
    torch.testing.assert_close(eps[3], cond[3], atol=1e-5, rtol=1e-4)  # w = 1: conditional
    assert counting.batches == [8]
    with pytest.raises(ValueError, match="one per label"):
        guided_eps_fn(random_unet, labels, cfg=w[:3], null_label=3, T=T)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m"])
def test_class_cfg(random_unet, sampler):
    """class_cfg = (w0, w1, w2): image i is the image a run at cfg = w[label_i] gives it; equal scales = plain cfg."""
    labels = torch.tensor([0, 1, 2, 1])
    scales = (1.5, 3.0, 0.0)
    opts = dict(sampler=sampler, steps=6, guidance_interval=(0.2, 0.8))
    mixed = run_to_end(_sample(random_unet, n=4, labels=labels, seed=3,
                               options=SamplerOptions(class_cfg=scales, **opts)))
    for w in set(scales):
        alone = run_to_end(_sample(random_unet, n=4, labels=labels, seed=3, options=SamplerOptions(cfg=w, **opts)))
        mine = torch.tensor([scales[c] == w for c in labels])
        torch.testing.assert_close(mixed[mine], alone[mine], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(mixed[~mine], alone[~mine], atol=1e-3)
    same = run_to_end(_sample(random_unet, n=4, labels=labels, seed=3,
                              options=SamplerOptions(class_cfg=(2, 2, 2), **opts)))
    plain = run_to_end(_sample(random_unet, n=4, labels=labels, seed=3, options=SamplerOptions(cfg=2.0, **opts)))
    assert torch.equal(same, plain)


@pytest.mark.parametrize("class_cfg, match", [
    ((1.0, 2.0), "one guidance scale per class: 3 classes, got 2"),
    ((1.0, -1.0, 2.0), "finite guidance scales >= 0"),
    ((1.0, float("nan"), 2.0), "finite guidance scales >= 0"),
    ((), "finite guidance scales >= 0"),
])
def test_bad_class_cfg(random_unet, class_cfg, match):
    with pytest.raises(ValueError, match=match):
        list(_sample(random_unet, n=3, labels=torch.tensor([0, 1, 2]), seed=0,
                     options=SamplerOptions(class_cfg=class_cfg)))


def test_class_cfg_needs_labels(random_unet):
    with pytest.raises(ValueError, match="class_cfg needs a class-conditional model and labels"):
        list(_sample(random_unet, n=2, labels=None, seed=0, options=SamplerOptions(class_cfg=(1.0, 2.0, 3.0))))


def _sample(model, *, n, labels, seed, options, shape=(1, 8, 8), null_label=3):
    return sample_steps(model, NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T)), n=n, labels=labels, seed=seed,
                        options=options, null_label=null_label, image_shape=shape)


def test_steps_payload(random_unet):
    opts = SamplerOptions(sampler="ddim", steps=7, cfg=2.0)
    steps = list(_sample(random_unet, n=3, labels=torch.tensor([0, 1, 2]), seed=0, options=opts))
    assert len(steps) == 7
    assert [s.index for s in steps] == list(range(7))
    assert [s.t for s in steps] == timesteps_for(T, 7)
    assert all(s.num_steps == 7 for s in steps) and steps[-1].is_last and not steps[0].is_last
    for s in steps:
        assert s.x_t.shape == (3, 1, 8, 8) and s.x0_pred.shape == (3, 1, 8, 8)
        assert s.x_t.device.type == "cpu" and s.x_t.dtype == torch.float32
        assert float(s.x0_pred.abs().max()) <= 1.0  # clip_x0 is on by default
    with pytest.raises(dataclasses.FrozenInstanceError):
        steps[0].index = 5


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_generator_yields_exactly_steps(random_unet, sampler):
    for n_steps in (1, 2, 13):
        opts = SamplerOptions(sampler=sampler, steps=n_steps, cfg=1.0)
        assert sum(1 for _ in _sample(random_unet, n=1, labels=torch.tensor([0]), seed=0, options=opts)) == n_steps


def test_final_image_is_clamped():
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T))
    oracle = GaussianOracle(schedule, mu=1.5, s=0.5)  # data mostly outside [-1, 1]
    opts = SamplerOptions(sampler="ddim", steps=20, cfg=1.0, clip_x0=False)
    steps = list(sample_steps(oracle, schedule, n=2, labels=None, seed=0, options=opts, image_shape=(1, 16, 16)))
    assert float(steps[-2].x_t.max()) > 1.2  # the run really leaves [-1, 1] ...
    assert float(steps[-1].x_t.max()) <= 1.0 and float(steps[-1].x_t.min()) >= -1.0  # ... and the final image is clamped
    assert float((steps[-1].x_t == 1.0).double().mean()) > 0.5


def test_sampler_options_validation():
    good = SamplerOptions()
    good.validate(T)
    bad = [dict(sampler="euler"), dict(steps=0), dict(steps=T + 1), dict(steps=2.5), dict(cfg=-1.0),
           dict(cfg=float("nan")), dict(eta=1.5), dict(variance="large"), dict(sampler="ddpm", steps=50, variance="beta"),
           dict(precision="fp8"), dict(guidance_interval=(0.8, 0.2))]
    for kw in bad:
        with pytest.raises(ValueError):
            SamplerOptions(**kw).validate(T)
    SamplerOptions(sampler="ddpm", steps=T, variance="beta").validate(T)  # beta is fine on the full chain
    with pytest.raises(ValueError, match="seed"):
        make_rngs(-1, 1)


# -- reproducibility, on the trained tiny checkpoint ------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_same_seed_same_images(tiny_checkpoint, sampler):
    pipe = ddpm.load(tiny_checkpoint)
    kw = dict(labels=[0, 1, 2], steps=10, sampler=sampler, cfg=2.0, eta=1.0 if sampler == "ddim" else 0.0)
    a, b = pipe.sample(seed=11, **kw), pipe.sample(seed=11, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe.sample(seed=12, **kw))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_image_i_of_a_batch_is_seed_plus_i_alone(tiny_checkpoint, sampler):
    pipe = ddpm.load(tiny_checkpoint)
    labels, seed = [2, 0, 1, 1], 40
    kw = dict(steps=12, sampler=sampler, cfg=3.0, eta=1.0 if sampler == "ddim" else 0.0, precision="fp32")
    batch = to_uint8(pipe.sample(labels=labels, seed=seed, **kw)).astype(int)
    for i, label in enumerate(labels):
        alone = to_uint8(pipe.sample(labels=[label], seed=seed + i, **kw)).astype(int)
        assert np.abs(batch[i] - alone[0]).max() <= 2  # 2/255 per pixel
