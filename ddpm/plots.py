"""Plots of a noise schedule, drawn with matplotlib's Agg backend into PIL images (no browser libraries)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .schedule import SCHEDULES, NoiseSchedule, ScheduleConfig

COLORS = {"linear": "#2563eb", "cosine": "#ea580c"}


def schedule_tables(config: ScheduleConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """alpha_bar_t and SNR_t = alpha_bar / (1 - alpha_bar), each (T,), for the model's schedule and the other one."""
    out = {}
    for name in sorted(SCHEDULES, key=lambda n: n != config.name):  # the model's schedule first
        s = NoiseSchedule(ScheduleConfig(**{**config.to_dict(), "name": name}))
        out[name] = (s.alpha_bar.double().numpy(), s.snr().double().numpy())
    return out


def schedule_plot(config: ScheduleConfig, *, t: int | None = None, width_px: int = 900, dpi: int = 100) -> Image.Image:
    """Two panels over t: alpha_bar_t (linear axis) and SNR_t (log axis), model schedule solid, other dashed.

    A vertical line marks time step t when given.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend; PNG goes through Agg

    tables = schedule_tables(config)
    T = config.timesteps
    steps = np.arange(T)
    fig = Figure(figsize=(width_px / dpi, width_px / dpi * 0.36), dpi=dpi)
    ax_ab, ax_snr = fig.subplots(1, 2)
    for name, (alpha_bar, snr) in tables.items():
        own = name == config.name
        style = dict(color=COLORS.get(name, "gray"), lw=2.2 if own else 1.5, ls="-" if own else "--",
                     label=f"{name}{' (this model)' if own else ''}")
        ax_ab.plot(steps, alpha_bar, **style)
        ax_snr.plot(steps, np.clip(snr, 1e-12, None), **style)
    ax_ab.set_title(r"$\bar\alpha_t$: share of the signal's variance left in $x_t$", fontsize=10)
    ax_snr.set_title(r"SNR$_t = \bar\alpha_t / (1-\bar\alpha_t)$", fontsize=10)
    ax_snr.set_yscale("log")
    ax_snr.axhline(1.0, color="#6b7280", lw=0.8, ls=":")
    for ax in (ax_ab, ax_snr):
        ax.set_xlabel("time step t")
        ax.set_xlim(0, T - 1)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if t is not None:
            ax.axvline(t, color="#111827", lw=1.2)
    ax_ab.set_ylim(0, 1.02)
    ax_ab.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")
