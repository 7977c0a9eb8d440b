"""Choosing and drawing frames of a denoising trajectory (the CLI's --gif and the app's live preview).

A run of S steps has far more steps than an animation needs, and equal steps in t are not equal
changes to the eye: most of the picture appears over a narrow band of noise levels. Frames are
therefore picked evenly in log-SNR, log(alpha_bar_t / (1 - alpha_bar_t)), the noise level of each
step's input x_t, clipped to [-8, 8]: below -8 the signal in x_t has amplitude < 0.02 (pure noise to the
eye), above 8 so has the noise. Without the clip the cosine schedule's tails (log-SNR -20 at t = T-1)
would take a third of the frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .images import make_grid, to_pil, to_uint8
from .samplers import Step, timesteps_for
from .schedule import NoiseSchedule

LOG_SNR_CLIP = (-8.0, 8.0)  # outside it x_t looks like pure noise / like the final image


def step_log_snr(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """log-SNR at the time step each of a run's `steps` steps evaluates the model at, shape (steps,), increasing."""
    ts = timesteps_for(schedule.T, steps)
    return schedule.log_snr[torch.tensor(ts)].double().numpy()


def frames_by_log_snr(log_snr: Sequence[float] | np.ndarray | torch.Tensor, k: int, *,
                      clip: tuple[float, float] = LOG_SNR_CLIP) -> list[int]:
    """Indices of min(k, S) of the S steps, spread evenly in log-SNR clipped to `clip`; first and last step always in.

    log_snr: (S,) the log-SNR of every step of a run, in step order (as from `step_log_snr`).
    Returns strictly increasing indices in 0..S-1. With k = 1 the only frame is the last step.
    """
    v = np.asarray(log_snr, dtype=np.float64).reshape(-1)
    S = v.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"number of frames must be an integer >= 1, got {k!r}")
    if S == 0:
        raise ValueError("no steps to choose frames from")
    if not np.isfinite(v).all():
        raise ValueError("log-SNR values must be finite")
    if k >= S:
        return list(range(S))
    if k == 1:
        return [S - 1]
    v = np.clip(v, *clip)
    targets = np.linspace(v[0], v[-1], k)
    picked = [0]
    for j in range(1, k - 1):
        lo, hi = picked[-1] + 1, S - 1 - (k - 1 - j)  # leave one step for each frame still to pick
        picked.append(lo + int(np.argmin(np.abs(v[lo : hi + 1] - targets[j]))))
    return picked + [S - 1]


def frame_indices(schedule: NoiseSchedule, steps: int, k: int) -> list[int]:
    """frames_by_log_snr for a run of `steps` steps on this schedule."""
    return frames_by_log_snr(step_log_snr(schedule, steps), k)


def frame_image(step: Step, *, nrow: int | None = None, scale: int = 1, gap: int = 4) -> Image.Image:
    """One animation frame: the grid of x_t (left) beside the grid of x0_pred (right), both clamped to [-1, 1]."""
    left = make_grid(to_uint8(step.x_t), nrow=nrow)  # (H', W', C) uint8
    right = make_grid(to_uint8(step.x0_pred), nrow=nrow)
    spacer = np.full((left.shape[0], gap, left.shape[2]), 255, dtype=np.uint8)
    return to_pil(np.concatenate([left, spacer, right], axis=1), scale=scale)
