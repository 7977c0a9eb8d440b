"""ddpm.frames: log-SNR frame choice, throttling, recording and the after-run animations."""

from __future__ import annotations

import base64
import io
import math

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.frames import (
    LOG_SNR_RANGE,
    Recorder,
    Throttle,
    frames_by_log_snr,
    grid_scale,
    side_by_side,
    step_log_snr,
    to_grid,
)
from ddpm.images import png_data_url, save_gif, save_mp4
from ddpm.samplers import Step, timesteps_for
from ddpm.schedule import NoiseSchedule, ScheduleConfig


def test_frames_by_log_snr_spacing_beats_step_spacing_on_linear_schedule():
    schedule = NoiseSchedule(ScheduleConfig(name="linear"))
    ls = step_log_snr(schedule, timesteps_for(1000, 1000))
    idx = frames_by_log_snr(ls, 20)
    assert len(idx) == 20 and idx == sorted(set(idx)) and idx[0] == 0 and idx[-1] == 999
    gaps = np.diff(np.clip([ls[i] for i in idx], *LOG_SNR_RANGE))
    # evenly in log-SNR: every gap close to the ideal 12/19 (within one step's log-SNR change near the ends)
    assert np.all(gaps > 0) and gaps.max() < 2.5 * gaps.min()
    # step-uniform frames would put most frames at SNR < 1 (log-SNR < 0) on the linear schedule
    uniform = np.round(np.linspace(0, 999, 20)).astype(int)
    assert sum(ls[i] < 0 for i in uniform) >= 14
    assert sum(ls[i] < 0 for i in idx[1:-1]) <= 11


def test_frames_by_log_snr_counts_and_errors():
    ls = [-10.0, -9.0, 0.0, 0.1, 9.0, math.inf]
    assert frames_by_log_snr(ls, 100) == list(range(6))  # never more than n, all distinct
    assert frames_by_log_snr(ls, 1) == [5]
    assert len(frames_by_log_snr(ls, 4)) == 4
    assert frames_by_log_snr([], 5) == []
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            frames_by_log_snr(ls, bad)
    with pytest.raises(ValueError, match="non-decreasing"):
        frames_by_log_snr([1.0, 0.0], 2)


def test_step_log_snr_matches_schedule():
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=100))
    ts = timesteps_for(100, 10)
    ls = step_log_snr(schedule, ts)
    assert len(ls) == 10 and ls[-1] == math.inf
    a = float(schedule.alpha_bar[ts[1]])
    assert ls[0] == pytest.approx(math.log(a / (1 - a)), rel=1e-4)


def test_throttle_with_fake_clock():
    now = [0.0]
    th = Throttle(10.0, clock=lambda: now[0])
    assert th.ready()
    th.mark()
    now[0] = 0.05
    assert not th.ready()
    now[0] = 0.1
    assert th.ready()
    with pytest.raises(ValueError, match="rate must be positive"):
        Throttle(0)


def test_grid_and_side_by_side():
    x = torch.linspace(-1, 1, 4 * 1 * 5 * 5).reshape(4, 1, 5, 5)
    g = to_grid(x)
    assert g.shape == (2 * 5 + 3 * 2, 2 * 5 + 3 * 2, 1) and g.dtype == np.uint8
    img = side_by_side(g, g, scale=3, gap=4)
    assert img.size == ((2 * g.shape[1] + 4) * 3, g.shape[0] * 3)
    assert grid_scale(28, 448) == 16 and grid_scale(1000, 448) == 1


def _fake_run(schedule, steps, n=4):
    ts = timesteps_for(schedule.T, steps)
    for i, t in enumerate(ts):
        x = torch.full((n, 1, 6, 6), -1.0 + 2.0 * i / max(steps - 1, 1))
        yield Step(i, steps, t, x, -x)


def test_recorder_keeps_log_snr_frames_and_writes_gif_and_mp4(tmp_path):
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=200))
    rec = Recorder(schedule, timesteps_for(200, 100), max_frames=12)
    kept = [rec.add(s) for s in _fake_run(schedule, 100)]
    assert sum(f is not None for f in kept) == 12 == len(rec.frames)
    assert rec.frames[0].index == 0 and rec.frames[-1].index == 99
    assert rec.frames[-1].caption == f"step 100/100 · t = {rec.frames[-1].t}"
    assert rec.stream_plan(5) <= set(range(100)) and len(rec.stream_plan(5)) == 5

    gif, mp4 = rec.save_animations(tmp_path / "run")
    with Image.open(gif) as im:
        assert im.n_frames == 12
        w, h = im.size
    with av.open(str(mp4)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = list(c.decode(stream))
    assert len(decoded) >= 12
    assert (decoded[0].width, decoded[0].height) == (w + w % 2, h + h % 2)
    # the first frame shows x_t = -1 (black) on the left and x0_pred = +1 (white) on the right
    first = decoded[0].to_ndarray(format="gray")
    scale = w // (2 * 18 + 8)  # two 2x2 grids of 6 px images with 2 px padding (18 px), 8 px apart
    y = x = 4 * scale + scale // 2  # inside the first image of a grid
    assert first[y, x] < 40 and first[y, (18 + 8) * scale + x] > 215


def test_save_animations_writes_the_same_gif_and_mp4_as_one_at_a_time(tmp_path):
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=200))
    rec = Recorder(schedule, timesteps_for(200, 30), max_frames=10)
    for s in _fake_run(schedule, 30):
        rec.add(s)
    gif, mp4 = rec.save_animations(tmp_path / "both" / "run")
    assert (gif.name, mp4.name) == ("run.gif", "run.mp4")
    frames = rec.animation()  # at the Recorder's 10 frames per second
    alone_gif, alone_mp4 = save_gif(frames, tmp_path / "a.gif", fps=10), save_mp4(frames, tmp_path / "a.mp4", fps=10)
    assert gif.read_bytes() == alone_gif.read_bytes()
    decoded = []
    for path in (mp4, alone_mp4):
        with av.open(str(path)) as c:
            decoded.append([f.to_ndarray(format="gray") for f in c.decode(c.streams.video[0])])
    assert len(decoded[0]) == len(decoded[1]) >= 10
    assert all(np.array_equal(a, b) for a, b in zip(*decoded))


def test_a_data_url_holds_the_image_losslessly():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8))
    url = png_data_url(img)
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as back:
        assert back.format == "PNG" and np.array_equal(np.asarray(back), np.asarray(img))


def test_recorder_without_frames_refuses_animation(tmp_path):
    schedule = NoiseSchedule(ScheduleConfig(timesteps=10))
    with pytest.raises(ValueError, match="no frames"):
        Recorder(schedule, timesteps_for(10, 5)).save_animations(tmp_path / "x")
