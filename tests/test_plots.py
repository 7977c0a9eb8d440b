"""ddpm.plots: the schedule plot of the forward-process tab, drawn with PIL (curves cached, the marker per call)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ddpm import plots
from ddpm.plots import COLORS, MARKER, schedule_plot, schedule_tables
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


def _near(arr: np.ndarray, hex_color: str) -> np.ndarray:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(arr[..., :3].astype(int) - rgb).sum(-1) < 40


def _changed_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 60).any(axis=0))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_plot_draws_both_schedules_and_the_marker_moves_with_t(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib would now fail
    config = ScheduleConfig(name=name)
    plain = np.asarray(schedule_plot(config, width_px=600))
    assert plain.shape == (216, 600, 3)
    assert _near(plain, COLORS["linear"]).sum() > 100 and _near(plain, COLORS["cosine"]).sum() > 100
    assert _near(plain, MARKER).sum() < 50  # no marker without t
    _, panels, _ = plots._base(config, 600)
    at = {t: np.asarray(schedule_plot(config, t=t, width_px=600)) for t in (200, 700)}
    for t, image in at.items():
        cols = _changed_columns(plain, image)
        xs = [p.x(t) for p in panels]  # the line in each panel, at t's x, and nothing else changed
        assert all(any(abs(c - x) <= 5 for x in xs) for c in cols)
        assert all(any(abs(c - x) <= 2 for c in cols) for x in xs)
        column = image[:, round(xs[0])]
        assert _near(column[:, None], MARKER).sum() > 0.6 * (panels[0].bottom - panels[0].top)  # a full-height line
    assert not np.array_equal(at[200], at[700])
    assert np.array_equal(np.asarray(schedule_plot(config, t=200, width_px=600)), at[200])  # the same t, the same plot


def test_the_curves_are_drawn_once_per_schedule():
    config = ScheduleConfig(name="cosine", timesteps=321)
    schedule_plot(config, t=0)
    before = plots._base.cache_info()
    for t in range(0, 321, 16):  # slider moves: no new curves, the cached image is not changed
        schedule_plot(config, t=t)
    after = plots._base.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 21
    assert np.array_equal(np.asarray(schedule_plot(config)), np.asarray(plots._base(config, 900)[0]))
    with_t = schedule_plot(config, t=5000)  # beyond T: marked at the last step, not an error
    assert with_t.size == (900, 324)


def test_snr_axis_spans_the_data_in_decades():
    _, (ab, snr), _ = plots._base(ScheduleConfig(name="linear"), 900)
    assert (ab.y_lo, ab.y_hi, ab.log) == (0.0, 1.02, False)
    tables = schedule_tables(ScheduleConfig(name="linear"))
    values = np.concatenate([s for _, s in tables.values()])
    assert snr.log and 10.0 ** snr.y_lo <= values.min() and 10.0 ** snr.y_hi >= values.max()
    assert snr.y(10.0 ** snr.y_hi) == pytest.approx(snr.top) and snr.y(10.0 ** snr.y_lo) == pytest.approx(snr.bottom)
    assert plots._nice_ticks(999) == [0, 200, 400, 600, 800] and plots._nice_ticks(49) == [0, 10, 20, 30, 40]
