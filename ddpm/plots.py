"""Plots of a noise schedule, drawn with PIL: the curves once per schedule (cached), the time step t's marker per call.

The forward-process tab redraws its plot at every move of the t slider, on the thread that samples; so the axes,
grid and curves are drawn once per (schedule, width) and each call only copies that image and draws a line and two
dots at t (about a millisecond, where a matplotlib figure took about 0.25 s).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schedule import SCHEDULES, NoiseSchedule, ScheduleConfig

COLORS = {"linear": "#2563eb", "cosine": "#ea580c"}
MARKER = "#111827"  # the vertical line at t
GRID, AXIS, TEXT = "#e5e7eb", "#9ca3af", "#374151"
SNR_FLOOR = 1e-12  # SNR is drawn on a log axis: clip the last step's ~0
SUPERSAMPLE = 2  # the cached curves are drawn this much larger and shrunk: smooth lines without anti-aliasing


def schedule_tables(config: ScheduleConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """alpha_bar_t and SNR_t = alpha_bar / (1 - alpha_bar), each (T,), for the model's schedule and the other one."""
    out = {}
    for name in sorted(SCHEDULES, key=lambda n: n != config.name):  # the model's schedule first
        s = NoiseSchedule(ScheduleConfig(**{**config.to_dict(), "name": name}))
        out[name] = (s.alpha_bar.double().numpy(), s.snr().double().numpy())
    return out


@dataclass(frozen=True)
class Panel:
    """One panel's plotting box in pixels and its axes: x = time step 0..T-1, y = value (log10 of it if log)."""

    left: float
    top: float
    right: float
    bottom: float
    T: int
    y_lo: float
    y_hi: float
    log: bool = False

    def x(self, t: float) -> float:
        return self.left + (self.right - self.left) * t / max(self.T - 1, 1)

    def y(self, value: float) -> float:
        v = math.log10(max(value, SNR_FLOOR)) if self.log else value
        return self.bottom - (self.bottom - self.top) * (v - self.y_lo) / (self.y_hi - self.y_lo)

    def scaled(self, k: float) -> Panel:
        return Panel(self.left * k, self.top * k, self.right * k, self.bottom * k, self.T, self.y_lo, self.y_hi,
                     self.log)


def schedule_plot(config: ScheduleConfig, *, t: int | None = None, width_px: int = 900) -> Image.Image:
    """Two panels over t: alpha_bar_t (linear axis) and SNR_t (log axis), model schedule solid, other dashed.

    A vertical line marks time step t when given, with a dot where it meets the model's curves.
    """
    base, panels, (alpha_bar, snr) = _base(config, width_px)
    im = base.copy()
    if t is None:
        return im
    t = min(max(int(t), 0), config.timesteps - 1)
    draw = ImageDraw.Draw(im)
    for p, value in zip(panels, (alpha_bar[t], snr[t])):
        x, y = round(p.x(t)), p.y(float(value))
        draw.line([(x, p.top), (x, p.bottom)], fill=MARKER, width=2)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=COLORS.get(config.name, MARKER), outline=MARKER)
    return im


@functools.lru_cache(maxsize=8)
def _base(config: ScheduleConfig, width_px: int) -> tuple[Image.Image, tuple[Panel, Panel], tuple[np.ndarray, ...]]:
    """The plot without a marker, its two panels (at width_px), and the model's (alpha_bar, SNR) for the dots."""
    k = SUPERSAMPLE
    W, H = width_px * k, round(width_px * 0.36) * k
    u = W / 900  # sizes below are pixels of the 900-pixel-wide plot
    thin = max(1, round(u))
    im = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(im)
    font, small = _font(round(13 * u)), _font(round(11 * u))
    tables = schedule_tables(config)
    T = config.timesteps
    snr_all = np.clip(np.concatenate([s for _, s in tables.values()]), SNR_FLOOR, None)
    lo, hi = math.floor(math.log10(snr_all.min())), math.ceil(math.log10(snr_all.max()))
    half = W / 2
    boxes = [(left + 62 * u, 34 * u, left + half - 18 * u, H - 44 * u) for left in (0, half)]
    panels = (Panel(*boxes[0], T, 0.0, 1.02), Panel(*boxes[1], T, lo, hi, log=True))
    titles = ("alpha_bar_t: the signal's share of x_t's variance", "SNR_t = alpha_bar_t / (1 - alpha_bar_t)")
    y_ticks = ([(v, f"{v:g}") for v in np.linspace(0, 1, 6)],
               [(10.0 ** e, _power(e)) for e in range(lo, hi + 1) if e % max(1, math.ceil((hi - lo) / 8)) == 0])
    for p, title, ticks in zip(panels, titles, y_ticks):
        for t in _nice_ticks(T - 1):
            x = p.x(t)
            draw.line([(x, p.top), (x, p.bottom)], fill=GRID, width=thin)
            _text(draw, (x, p.bottom + 6 * u), f"{t}", small, "ma")
        for value, label in ticks:
            y = p.y(value)
            draw.line([(p.left, y), (p.right, y)], fill=GRID, width=thin)
            _text(draw, (p.left - 6 * u, y), label, small, "rm")
        draw.line([(p.left, p.top), (p.left, p.bottom), (p.right, p.bottom)], fill=AXIS, width=thin)
        _text(draw, ((p.left + p.right) / 2, p.top - 10 * u), title, font, "mb")
        _text(draw, ((p.left + p.right) / 2, H - 6 * u), "time step t", small, "mb")
    _dashed(draw, [(panels[1].left, panels[1].y(1.0)), (panels[1].right, panels[1].y(1.0))], AXIS, thin, 2 * u, 3 * u)
    for i, (name, (alpha_bar, snr)) in reversed(list(enumerate(tables.items()))):  # the model's curves on top
        own = i == 0
        color, width = COLORS.get(name, "gray"), max(1, round((2.2 if own else 1.5) * u))
        for p, values in zip(panels, (alpha_bar, snr)):
            points = [(p.x(t), p.y(float(v))) for t, v in enumerate(values)]
            if own:
                draw.line(points, fill=color, width=width, joint="curve")
            else:
                _dashed(draw, points, color, width, 8 * u, 5 * u)
        p, y = panels[0], panels[0].top + (14 + 18 * i) * u  # the legend, top right of the alpha_bar panel
        x = p.right - 190 * u
        if own:
            draw.line([(x, y), (x + 28 * u, y)], fill=color, width=width)
        else:
            _dashed(draw, [(x, y), (x + 28 * u, y)], color, width, 8 * u, 5 * u)
        _text(draw, (x + 36 * u, y), f"{name}{' (this model)' if own else ''}", small, "lm")
    out = im.resize((width_px, H // k), Image.Resampling.LANCZOS)
    return out, tuple(p.scaled(1 / k) for p in panels), tables[config.name]


def _nice_ticks(end: int, target: int = 5) -> list[int]:
    """Ticks 0, s, 2s, ... up to end, s one of 1, 2, 5 times a power of ten, about `target` of them."""
    raw = max(end / target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return list(range(0, end + 1, int(step)))


def _power(e: int) -> str:
    return "1" if e == 0 else f"1e{e}"


def _dashed(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], color: str, width: int, dash: float,
            gap: float) -> None:
    """A polyline drawn dashed: `dash` pixels on, `gap` off, along its length (long segments cut into 1-pixel ones)."""
    run, along = [], 0.0
    for i, ((x0, y0), (x1, y1)) in enumerate(zip(points, points[1:])):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, math.ceil(length))
        for j in range(0 if i == 0 else 1, n + 1):  # a segment's start is the previous one's end
            s = along + length * j / n
            if s % (dash + gap) < dash:
                run.append((x0 + (x1 - x0) * j / n, y0 + (y1 - y0) * j / n))
            elif run:
                if len(run) > 1:
                    draw.line(run, fill=color, width=width, joint="curve")
                run = []
        along += length
    if len(run) > 1:
        draw.line(run, fill=color, width=width, joint="curve")


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.ImageFont,
          anchor: str) -> None:
    draw.text(xy, text, fill=TEXT, font=font, anchor=anchor)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (Debian, a Space), else the font Pillow ships."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)
