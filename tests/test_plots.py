"""ddpm.plots: the schedule plot of the forward-process tab."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm.plots import COLORS, schedule_plot, schedule_tables
from ddpm.schedule import ScheduleConfig


def test_schedule_tables_model_schedule_first_and_closed_forms():
    tables = schedule_tables(ScheduleConfig(name="cosine", timesteps=100))
    assert list(tables) == ["cosine", "linear"]
    alpha_bar, snr = tables["linear"]
    # linear schedule: alpha_bar_t = prod_{s<=t} (1 - beta_s), beta evenly from 1e-4 to 0.02
    beta = np.linspace(1e-4, 0.02, 100)
    expected = np.cumprod(1 - beta)  # float64
    assert np.allclose(alpha_bar, expected, rtol=1e-5)
    assert np.allclose(snr, expected / (1 - expected), rtol=1e-4)
    assert np.all(np.diff(tables["cosine"][0]) < 0)  # signal only ever decreases


def _has_color(arr: np.ndarray, hex_color: str, min_pixels: int = 50) -> bool:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(arr[..., :3].astype(int) - rgb).sum(-1) < 30).sum()) >= min_pixels


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_plot_draws_both_schedules_and_the_marker(name):
    plain = np.asarray(schedule_plot(ScheduleConfig(name=name), width_px=600))
    marked = np.asarray(schedule_plot(ScheduleConfig(name=name), t=500, width_px=600))
    assert plain.shape == marked.shape and plain.shape[1] == 600 and plain.shape[2] == 3
    assert _has_color(plain, COLORS["linear"]) and _has_color(plain, COLORS["cosine"])
    assert (np.abs(plain.astype(int) - marked.astype(int)).sum(-1) > 100).sum() > 100  # the t line
