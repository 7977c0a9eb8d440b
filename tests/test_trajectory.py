"""Frames of a denoising run chosen evenly in log-SNR, and the side-by-side x_t | x0_pred frame."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.samplers import Step
from ddpm.schedule import NoiseSchedule, ScheduleConfig
from ddpm.trajectory import frame_image, frame_indices, frames_by_log_snr, step_log_snr


def test_even_values_give_even_indices():
    v = np.arange(11) * 0.5
    assert frames_by_log_snr(v, 5) == [0, 2, 5, 7, 10]  # targets 0, 1.25, 2.5, 3.75, 5 (ties: the earlier step)
    assert frames_by_log_snr(v, 11) == list(range(11))


def test_frames_follow_log_snr_not_step_count():
    v = [0.0, 0.01, 0.02, 0.03, 0.04, 1.0, 2.0, 3.0, 4.0]  # five steps crowd the start
    assert frames_by_log_snr(v, 5) == [0, 5, 6, 7, 8]
    assert frames_by_log_snr(torch.tensor(v), 5) == [0, 5, 6, 7, 8]  # tensors work too


def test_tails_beyond_the_clip_get_no_extra_frames():
    v = [-20.0, -15.0, -10.0, -8.0, -4.0, 0.0, 4.0, 8.0, 10.0]
    assert frames_by_log_snr(v, 3) == [0, 5, 8]  # middle target 0, not (-20 + 10) / 2 = -5
    assert frames_by_log_snr(v, 3, clip=(-100.0, 100.0)) == [0, 4, 8]


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_count_order_and_ends_for_real_runs(name):
    schedule = NoiseSchedule(ScheduleConfig(name=name, timesteps=1000))
    for steps in (1, 2, 3, 10, 37, 50, 250, 1000):
        v = step_log_snr(schedule, steps)
        assert v.shape == (steps,) and np.all(np.diff(v) > 0)  # the noise level falls at every step
        for k in (1, 2, 5, 36, 40, 2000):
            idx = frames_by_log_snr(v, k)
            assert len(idx) == min(k, steps)
            assert all(a < b for a, b in zip(idx, idx[1:]))
            assert idx[-1] == steps - 1
            if len(idx) > 1:
                assert idx[0] == 0
            assert idx == frame_indices(schedule, steps, k)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_gaps_are_even_in_log_snr(name):
    schedule = NoiseSchedule(ScheduleConfig(name=name, timesteps=1000))
    v = step_log_snr(schedule, 1000)
    k = 36
    idx = frames_by_log_snr(v, k)
    chosen = np.clip(v[idx], -8, 8)
    gaps = np.diff(chosen) / ((chosen[-1] - chosen[0]) / (k - 1))
    assert gaps.max() < 1.5 and gaps.min() > 0.6, gaps
    assert (v[idx] < -8).sum() == 1 and (v[idx] > 8).sum() == 1  # only the first and the last frame in the tails
    # frames evenly in steps are far less even in what the eye sees
    by_steps = np.clip(v[np.linspace(0, 999, k).round().astype(int)], -8, 8)
    assert np.diff(by_steps).max() / ((by_steps[-1] - by_steps[0]) / (k - 1)) > 2.5


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="frames"):
        frames_by_log_snr([0.0, 1.0], k)


def test_bad_values():
    with pytest.raises(ValueError, match="no steps"):
        frames_by_log_snr([], 3)
    with pytest.raises(ValueError, match="finite"):
        frames_by_log_snr([0.0, math.nan, 1.0], 2)


def test_frame_image_puts_x_t_left_and_x0_pred_right():
    x_t = -torch.ones(4, 1, 6, 6)  # black
    x0_pred = torch.ones(4, 1, 6, 6)  # white
    img = frame_image(Step(0, 10, 999, x_t, x0_pred), nrow=2, scale=3, gap=4)
    grid = 2 * 6 + 3 * 2  # 2 images of 6 px and 3 pads of 2 px
    assert img.size == ((2 * grid + 4) * 3, grid * 3)
    a = np.asarray(img)
    y = (2 + 3) * 3  # the middle of the first image row
    assert a[y, (2 + 3) * 3] == 0  # inside the first x_t image
    assert a[y, (grid + 4 + 2 + 3) * 3] == 255  # inside the first x0_pred image
    rgb = frame_image(Step(0, 1, 0, torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5)))
    assert rgb.mode == "RGB"
