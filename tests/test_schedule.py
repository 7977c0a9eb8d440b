"""Noise schedules and the forward / posterior Gaussians, checked against closed forms computed here in pure Python."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.schedule import NoiseSchedule, ScheduleConfig

T = 1000


def linear_betas(T: int = T, start: float = 1e-4, end: float = 0.02) -> list[float]:
    return [start + (end - start) * i / (T - 1) for i in range(T)]


def cosine_alpha_bar(t: int, T: int = T, s: float = 0.008) -> float:
    """Nichol & Dhariwal eq. 17 at 0-based step t, i.e. f(t + 1) / f(0)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t + 1) / f(0)


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(name="linear", timesteps=T))


@pytest.fixture(scope="module")
def cosine() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T))


def test_linear_alpha_bar_matches_product(linear):
    betas = linear_betas()
    expected_last = math.prod(1 - b for b in betas)
    assert expected_last == pytest.approx(4.0e-5, rel=0.02)  # the figure quoted in the DDPM tutorials
    assert float(linear.alpha_bar[-1]) == pytest.approx(expected_last, rel=1e-4)
    for t in (0, 1, 10, 250, 500, 999):
        assert float(linear.alpha_bar[t]) == pytest.approx(math.prod(1 - b for b in betas[: t + 1]), rel=1e-5)


def test_alpha_is_one_minus_beta_not_beta(linear):
    # tutorial 001 says alpha lies in [1e-4, 0.02]; that is beta. alpha = 1 - beta is in [0.98, 0.9999].
    betas = linear_betas()
    assert float(linear.beta[0]) == pytest.approx(1e-4, rel=1e-5)
    assert float(linear.beta[-1]) == pytest.approx(0.02, rel=1e-5)
    assert float(linear.alpha[0]) == pytest.approx(0.9999, rel=1e-7)
    assert float(linear.alpha[-1]) == pytest.approx(0.98, rel=1e-7)
    for t in (0, 123, 999):
        assert float(linear.alpha[t]) == pytest.approx(1 - betas[t], rel=1e-7)
    assert float(linear.alpha_bar_prev[0]) == 1.0
    assert torch.equal(linear.alpha_bar_prev[1:], linear.alpha_bar[:-1])


def test_cosine_schedule(cosine):
    ab = cosine.alpha_bar.double()
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must be strictly decreasing"
    assert float(cosine.beta.max()) <= 0.999 + 1e-7
    assert float(cosine.beta.min()) > 0
    # the closed form holds wherever beta was not clipped (all but the last step)
    for t in (0, 1, 100, 500, 900, 990, 998):
        assert float(ab[t]) == pytest.approx(cosine_alpha_bar(t), rel=1e-5, abs=1e-9)
    assert float(cosine.beta[-1]) == pytest.approx(0.999, rel=1e-6)  # clipped at the end
    assert float(ab[0]) > 0.9999


def test_log_snr(linear):
    for t in (0, 400, 999):
        ab = math.prod(1 - b for b in linear_betas()[: t + 1])
        assert float(linear.log_snr[t]) == pytest.approx(math.log(ab / (1 - ab)), rel=1e-4)
    assert bool((linear.log_snr[1:] < linear.log_snr[:-1]).all())


@pytest.mark.parametrize("t", [0, 50, 500, 999])
def test_q_sample_mean_and_variance(linear, t):
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.tensor([-0.8, 0.0, 0.6]).repeat(n, 1)  # (n, 3)
    x_t = linear.q_sample(x0, torch.full((n,), t), torch.randn(n, 3))
    ab = math.prod(1 - b for b in linear_betas()[: t + 1])
    se_mean = math.sqrt((1 - ab) / n)
    for j, v in enumerate((-0.8, 0.0, 0.6)):
        assert float(x_t[:, j].mean()) == pytest.approx(math.sqrt(ab) * v, abs=5 * se_mean + 1e-6)
        assert float(x_t[:, j].var()) == pytest.approx(1 - ab, rel=5 * math.sqrt(2 / n) + 1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_mean_from_x0_equals_from_eps(name):
    s = NoiseSchedule(ScheduleConfig(name=name, timesteps=T))
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 2, 10, 100, 500, 900, 998, 999])
    x0 = torch.rand(len(t), 2, 3, 3, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    x_t = s.q_sample(x0, t, eps)
    mean_x0, _ = s.q_posterior_mean_variance(x0, x_t, t)
    mean_eps = s.posterior_mean_from_eps(x_t, t, eps)
    torch.testing.assert_close(mean_x0, mean_eps, atol=2e-4, rtol=1e-4)


def test_posterior_is_the_product_of_gaussians(linear):
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x0, 1 - abar_{t-1})."""
    betas = linear_betas()
    x0, x_t = torch.tensor([[0.3], [-0.7]]), torch.tensor([[1.1], [0.2]])
    for t in (1, 2, 30, 500, 999):
        beta, alpha = betas[t], 1 - betas[t]
        ab_prev = math.prod(1 - b for b in betas[:t])
        ab = ab_prev * alpha
        precision = alpha / beta + 1 / (1 - ab_prev)
        mean, var = linear.q_posterior_mean_variance(x0, x_t, torch.tensor([t, t]))
        expected_var = beta * (1 - ab_prev) / (1 - ab)
        assert 1 / precision == pytest.approx(expected_var, rel=1e-9)  # the formula is that product, too
        assert float(var[0]) == pytest.approx(expected_var, rel=1e-5)
        assert float(linear.posterior_variance[t]) == pytest.approx(expected_var, rel=1e-5)
        for i in range(2):
            expected = (math.sqrt(alpha) * float(x_t[i]) / beta + math.sqrt(ab_prev) * float(x0[i]) / (1 - ab_prev)) / precision
            assert float(mean[i]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # at t = 0 the posterior is a point mass at x0
    assert float(linear.posterior_variance[0]) == 0.0
    mean0, _ = linear.q_posterior_mean_variance(x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(mean0, x0, atol=1e-6, rtol=0)
    # the clipped log variance replaces log(0) with the next value
    assert float(linear.posterior_log_variance_clipped[0]) == pytest.approx(math.log(float(linear.posterior_variance[1])), rel=1e-5)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_x0_eps_round_trip(name):
    s = NoiseSchedule(ScheduleConfig(name=name, timesteps=T))
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x0 = torch.rand(len(t), 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    x_t = s.q_sample(x0, t, eps)
    # x0 from eps divides by sqrt(alpha_bar) (~5e-5 at the last cosine step): float32 rounding grows there
    atol = torch.tensor([1e-5, 1e-5, 1e-5, 1e-5, 1e-4, 1e-2])[:, None, None, None]
    assert ((s.x0_from_eps(x_t, t, eps) - x0).abs() <= atol).all()
    torch.testing.assert_close(s.eps_from_x0(x_t, t, x0), eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad", [[-1], [T], [0, T + 5]])
def test_bad_t_raises(linear, bad):
    t = torch.tensor(bad)
    x = torch.zeros(len(bad), 1, 2, 2)
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        linear.q_sample(x, t, x)
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        linear.q_posterior_mean_variance(x, x, t)
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        linear.posterior_mean_from_eps(x, t, x)
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        linear.x0_from_eps(x, t, x)
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        linear.eps_from_x0(x, t, x)


def test_float_t_raises(linear):
    with pytest.raises(ValueError, match="integers"):
        linear.q_sample(torch.zeros(1, 1), torch.tensor([0.5]), torch.zeros(1, 1))


@pytest.mark.parametrize("kwargs", [dict(name="quadratic"), dict(timesteps=0), dict(timesteps=10**9),
                                    dict(beta_start=0.1, beta_end=0.01), dict(max_beta=1.0)])
def test_bad_schedule_config(kwargs):
    with pytest.raises(ValueError):
        ScheduleConfig(**kwargs)


def test_short_schedule():
    s = NoiseSchedule(ScheduleConfig(name="linear", timesteps=10, beta_start=0.01, beta_end=0.2))
    betas = [0.01 + 0.19 * i / 9 for i in range(10)]
    assert float(s.alpha_bar[-1]) == pytest.approx(math.prod(1 - b for b in betas), rel=1e-6)
    assert s.T == 10 and s.posterior_variance.shape == (10,)
