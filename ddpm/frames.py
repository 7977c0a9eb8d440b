"""Frames of a sampling run: which steps to show, recording them, and the after-run animation.

With the linear schedule the SNR is below 1 for three quarters of the steps, so frames taken evenly in
steps show static noise for most of an animation. Frames here are taken evenly in log-SNR instead,
over the range where x_t visibly changes (log-SNR clipped to [-6, 6]).

    recorder = Recorder(schedule, timesteps_for(T, 50), n_images=4)
    for step in pipe.stream(...):
        recorder.add(step)                     # keeps uint8 grids of the log-SNR-spaced steps only
    recorder.save_animations(folder / "run")    # run.gif and run.mp4
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import make_grid, save_gif_and_mp4, to_pil, to_uint8
from .samplers import Step
from .schedule import NoiseSchedule

LOG_SNR_RANGE = (-6.0, 6.0)  # outside it x_t looks like pure noise / like the final image
GAP = 8  # pixels between x_t and x0_pred in a side-by-side frame


def frames_by_log_snr(log_snr: Sequence[float], k: int, *, clip: tuple[float, float] = LOG_SNR_RANGE) -> list[int]:
    """min(k, n) distinct indices into `log_snr` (n values, non-decreasing), evenly spaced in log-SNR.

    The first and last index are always kept (when k >= 2). Values are clipped to `clip` first, so the
    long tails of pure noise and of an already-clean image get few frames. Where the steps are too
    coarse for a target, the nearest free index is used, so the count is always min(k, n).
    """
    n = len(log_snr)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n == 0:
        return []
    k = min(k, n)
    if k == 1:
        return [n - 1]
    v = np.clip(np.asarray(log_snr, dtype=np.float64), *clip)
    if np.any(np.diff(v) < -1e-9):
        raise ValueError("log_snr must be non-decreasing (the order of a sampling run)")
    targets = np.linspace(v[0], v[-1], k)
    chosen: list[int] = []
    lo = 0
    for j, target in enumerate(targets):
        hi = n - (k - j)  # leave room for the k - 1 - j indices still to choose
        best = lo + int(np.argmin(np.abs(v[lo : hi + 1] - target)))
        chosen.append(best)
        lo = best + 1
    chosen[0], chosen[-1] = 0, n - 1
    return chosen


def step_log_snr(schedule: NoiseSchedule, timesteps: Sequence[int]) -> list[float]:
    """The log-SNR of x_t after each step of a run over `timesteps` (descending); +inf after the last."""
    ls = schedule.log_snr
    return [float(ls[t]) for t in timesteps[1:]] + [math.inf]


def grid_scale(width: int, target: int = 448) -> int:
    """The integer nearest-neighbour enlargement that brings a `width`-pixel image close to `target` pixels."""
    return max(1, round(target / max(width, 1)))


@dataclass(frozen=True)
class Frame:
    """One recorded step: x_t and x0_pred as uint8 grids (H, W, C)."""

    index: int
    num_steps: int
    t: int
    x_t: np.ndarray
    x0_pred: np.ndarray
    draw: int = 0  # 0 = the first draw, r = redraw round r (its steps run again)

    @property
    def caption(self) -> str:
        step = f"step {self.index + 1}/{self.num_steps} · t = {self.t}"
        return f"redraw {self.draw} · {step}" if self.draw else step


def to_grid(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one uint8 grid (H', W', C), as square as possible."""
    return make_grid(to_uint8(x), nrow=math.ceil(math.sqrt(x.shape[0])))


def side_by_side(x_t: np.ndarray, x0_pred: np.ndarray, *, scale: int, gap: int = GAP) -> Image.Image:
    """x_t | x0_pred as one enlarged PIL image (grids of the same size, uint8 (H, W, C))."""
    h, w, c = x_t.shape
    canvas = np.full((h, 2 * w + gap, c), 255, dtype=np.uint8)
    canvas[:, :w] = x_t
    canvas[:, w + gap :] = x0_pred
    return to_pil(canvas, scale=scale)


class Throttle:
    """At most `rate` updates per second: ready() is True when 1/rate seconds passed since the last mark()."""

    def __init__(self, rate: float = 15.0, clock=time.perf_counter) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.interval = 1.0 / rate
        self.clock = clock
        self.last = -math.inf

    def ready(self) -> bool:
        return self.clock() - self.last >= self.interval

    def mark(self) -> None:
        self.last = self.clock()


class Recorder:
    """Keeps the log-SNR-spaced steps of one run as small uint8 grids (a few dozen at most).

    Memory is bounded by max_frames * 2 grids per draw (redraw rounds record their steps too); nothing else of the
    run is kept.
    """

    def __init__(self, schedule: NoiseSchedule, timesteps: Sequence[int], *, max_frames: int = 40) -> None:
        self.num_steps = len(timesteps)
        self.log_snr = step_log_snr(schedule, timesteps)
        self.keep = set(frames_by_log_snr(self.log_snr, max_frames))
        self.frames: list[Frame] = []

    def add(self, step: Step) -> Frame | None:
        """Record the step if it is one of the chosen frames; return the Frame or None."""
        if step.index not in self.keep:
            return None
        frame = Frame(step.index, step.num_steps, step.t, to_grid(step.x_t), to_grid(step.x0_pred), step.draw)
        self.frames.append(frame)
        return frame

    def stream_plan(self, k: int) -> set[int]:
        """k step indices, evenly in log-SNR, to stream live (always the first and the last step)."""
        return set(frames_by_log_snr(self.log_snr, max(1, k)))

    def animation(self, *, scale: int | None = None) -> list[Image.Image]:
        """The recorded frames as side-by-side x_t | x0_pred images, enlarged."""
        if not self.frames:
            raise ValueError("no frames recorded")
        w = 2 * self.frames[0].x_t.shape[1] + GAP
        s = scale or grid_scale(w, 512)
        return [side_by_side(f.x_t, f.x0_pred, scale=s) for f in self.frames]

    def save_animations(self, stem: str | Path, *, fps: float = 10) -> tuple[Path, Path]:
        """stem.gif and stem.mp4, written at once (images.save_gif_and_mp4)."""
        return save_gif_and_mp4(self.animation(), stem, fps=fps)

