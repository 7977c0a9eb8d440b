"""Noise schedules, the forward process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0).

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"), time steps 0-based, t in 0..T-1:

    beta[t]               variance added at step t
    alpha[t]              1 - beta[t]
    alpha_bar[t]          prod_{s<=t} alpha[s]              (eq. 4: q(x_t|x_0) = N(sqrt(alpha_bar) x_0, (1-alpha_bar) I))
    alpha_bar_prev[t]     alpha_bar[t-1], with alpha_bar_prev[0] = 1
    posterior_variance[t] beta[t] (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t])   (eq. 7, "beta tilde")
    posterior_mean        coef1[t] x_0 + coef2[t] x_t                           (eq. 7, "mu tilde")

All tables are computed in float64 and stored as float32 tensors (improved-diffusion does the same).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

ScheduleName = Literal["linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine")
MAX_TIMESTEPS = 100_000


@dataclass(frozen=True)
class ScheduleConfig:
    """How the betas are chosen. Saved in every checkpoint's config.json."""

    name: str = "linear"  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal 2021)
    timesteps: int = 1000  # T; steps are numbered 0..T-1
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    cosine_s: float = 0.008  # cosine schedule offset s (eq. 17 of improved DDPM)
    max_beta: float = 0.999  # cosine schedule clip, avoids a singularity at t = T-1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if not isinstance(self.timesteps, int) or not 1 <= self.timesteps <= MAX_TIMESTEPS:
            raise ValueError(f"timesteps must be an integer in 1..{MAX_TIMESTEPS}, got {self.timesteps!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if not 0 < self.max_beta < 1:
            raise ValueError(f"max_beta must be in (0, 1), got {self.max_beta}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """The T betas of a schedule, float64, shape (T,)."""
    T = config.timesteps
    if config.name == "linear":
        return np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
    # cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)   (eq. 17)
    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / T + config.cosine_s) / (1 + config.cosine_s) * math.pi / 2) ** 2

    steps = np.arange(T + 1, dtype=np.float64)
    alpha_bar = f(steps) / f(np.zeros(1))
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0, config.max_beta)


class NoiseSchedule:
    """Precomputed schedule tables and the closed-form Gaussian quantities built from them.

    Every method takes integer time steps `t` of shape (B,) in 0..T-1 and tensors x of shape (B, ...).
    """

    def __init__(self, config: ScheduleConfig = ScheduleConfig()) -> None:
        self.config = config
        self.T = config.timesteps
        beta = make_betas(config)
        self._set_tables(beta)

    def _set_tables(self, beta: np.ndarray) -> None:
        alpha = 1.0 - beta
        alpha_bar = np.cumprod(alpha)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        posterior_variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.beta = f32(beta)
        self.alpha = f32(alpha)
        self.alpha_bar = f32(alpha_bar)
        self.alpha_bar_prev = f32(alpha_bar_prev)
        self.sqrt_alpha_bar = f32(np.sqrt(alpha_bar))
        self.sqrt_one_minus_alpha_bar = f32(np.sqrt(1.0 - alpha_bar))
        self.sqrt_recip_alpha_bar = f32(np.sqrt(1.0 / alpha_bar))
        self.sqrt_recipm1_alpha_bar = f32(np.sqrt(1.0 / alpha_bar - 1.0))
        self.posterior_variance = f32(posterior_variance)
        # posterior_variance[0] is 0; clip the log there to the next value (improved-diffusion does the same)
        log_var = np.log(np.append(posterior_variance[1], posterior_variance[1:])) if len(beta) > 1 else np.zeros(1)
        self.posterior_log_variance_clipped = f32(log_var)
        self.posterior_mean_coef1 = f32(beta * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar))
        self.posterior_mean_coef2 = f32((1.0 - alpha_bar_prev) * np.sqrt(alpha) / (1.0 - alpha_bar))
        # log signal-to-noise ratio, handy for plots and for choosing preview frames
        self.log_snr = f32(np.log(alpha_bar) - np.log1p(-alpha_bar))

    # -- helpers -------------------------------------------------------------------------------
    def check_t(self, t: torch.Tensor) -> torch.Tensor:
        """Validate a (B,) tensor of integer time steps and return it as int64."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point:
            raise ValueError(f"time steps must be integers in 0..{self.T - 1}, got a {t.dtype} tensor")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"time steps must be in 0..{self.T - 1}, got range {int(t.min())}..{int(t.max())}")
        return t.long()

    @staticmethod
    def _gather(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """table[t] reshaped to (B, 1, 1, ...) to broadcast against x, on x's device and dtype."""
        out = table[t.cpu()].to(device=x.device, dtype=x.dtype)
        return out.reshape(-1, *([1] * (x.dim() - 1)))

    # -- forward process -----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (eq. 4). Shapes (B, ...)."""
        t = self.check_t(t)
        return self._gather(self.sqrt_alpha_bar, t, x0) * x0 + self._gather(self.sqrt_one_minus_alpha_bar, t, x0) * eps

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_t | x_0)."""
        t = self.check_t(t)
        return self._gather(self.sqrt_alpha_bar, t, x0) * x0, self._gather(1.0 - self.alpha_bar, t, x0)

    # -- conversions ---------------------------------------------------------------------------
    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)  (eq. 4 solved for x0)."""
        t = self.check_t(t)
        return self._gather(self.sqrt_recip_alpha_bar, t, x_t) * x_t - self._gather(self.sqrt_recipm1_alpha_bar, t, x_t) * eps

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(alpha_bar) - x0) / sqrt(1/alpha_bar - 1)."""
        t = self.check_t(t)
        return (self._gather(self.sqrt_recip_alpha_bar, t, x_t) * x_t - x0) / self._gather(
            self.sqrt_recipm1_alpha_bar, t, x_t
        )

    # -- posterior -----------------------------------------------------------------------------
    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0)  (eqs. 6-7)."""
        t = self.check_t(t)
        mean = self._gather(self.posterior_mean_coef1, t, x_t) * x0 + self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._gather(self.posterior_variance, t, x_t)

    def posterior_mean_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps)  (eq. 11)."""
        t = self.check_t(t)
        coef = self._gather(self.beta / self.sqrt_one_minus_alpha_bar, t, x_t)
        return (x_t - coef * eps) / self._gather(self.alpha.sqrt(), t, x_t)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) for every t, shape (T,)."""
        return self.log_snr.exp()
