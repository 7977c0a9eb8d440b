"""A checkpoint's recommended guidance interval (config.json "sampling"), as the Pipeline, the app's request
checks, the guidance explorer, the sampling CLI and the model card use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
from ddpm.card import model_card
from ddpm.checkpoint import CheckpointError, load_config
from ddpm.images import to_uint8
from ddpm.sample import main as sample_main
from ddpm.studio import guidance_sweep, parse_request

INTERVAL = (0.2, 0.7)
GOOD = dict(label="1 · Vertical", cfg=4.0, steps=10, seed=2, n_images=1, sampler="ddim", eta=0.0, precision="fp32")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recommending(tiny_checkpoint: Path, tmp_path: Path, with_sampling) -> Path:
    return with_sampling(tiny_checkpoint, tmp_path / "ckpt", {"cfg": 4.0, "guidance_interval": list(INTERVAL)})


def test_pipeline_exposes_the_recommendation(recommending: Path, tiny_checkpoint: Path):
    assert ddpm.load(recommending).recommended.guidance_interval == INTERVAL
    assert ddpm.load(tiny_checkpoint).recommended.guidance_interval is None


@pytest.mark.parametrize("bad", [[0.7, 0.2], [0.1], [-0.1, 0.5], [0.1, 1.5], ["a", "b"], "0.1..0.5", [True, 1]])
def test_a_bad_recommendation_is_a_clear_checkpoint_error(tiny_checkpoint: Path, tmp_path: Path, with_sampling, bad):
    folder = with_sampling(tiny_checkpoint, tmp_path / "bad", {"guidance_interval": bad})
    with pytest.raises(CheckpointError, match=r"guidance_interval must be \(lo, hi\) with 0 <= lo <= hi <= 1"):
        load_config(folder)


def test_limit_guidance_runs_the_recommended_interval(recommending: Path):
    pipe = ddpm.load(recommending)
    limited = parse_request(pipe, **GOOD, limit_guidance=True)
    full = parse_request(pipe, **GOOD, limit_guidance=False)
    assert limited.options.guidance_interval == INTERVAL and full.options.guidance_interval is None
    assert "CFG 4 for t/T in 0.2..0.7" in limited.describe()
    a = pipe.sample(limited.labels(), seed=limited.seed, options=limited.options)
    assert torch.equal(a, pipe.sample([1], seed=2, steps=10, cfg=4.0, guidance_interval=INTERVAL))
    assert not torch.equal(a, pipe.sample(full.labels(), seed=full.seed, options=full.options))
    with pytest.raises(ValueError, match="limit_guidance must be true or false, got 'yes'"):
        parse_request(pipe, **GOOD, limit_guidance="yes")


def test_limit_guidance_has_no_effect_without_a_recommendation(tiny_checkpoint: Path):
    assert parse_request(ddpm.load(tiny_checkpoint), **GOOD, limit_guidance=True).options.guidance_interval is None


def test_guidance_sweep_rows_match_single_runs_with_the_interval(recommending: Path):
    pipe = ddpm.load(recommending)
    run = parse_request(pipe, **GOOD, limit_guidance=True)
    scales = (0.0, 1.0, 4.0)
    rows = guidance_sweep(pipe, run, scales)
    for j, w in enumerate(scales):
        single = pipe.sample([1], seed=2, steps=10, cfg=w, guidance_interval=INTERVAL)  # the rest: the recommendation
        assert np.abs(to_uint8(rows[j:j + 1]).astype(int) - to_uint8(single).astype(int)).max() <= 2
    unlimited = guidance_sweep(pipe, parse_request(pipe, **GOOD), scales)
    assert not torch.equal(rows[2], unlimited[2])


def test_sample_cli_uses_the_recommendation_unless_told_otherwise(recommending: Path, tmp_path: Path):
    def images(*flags: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert sample_main(["--checkpoint", str(recommending), "--label", "1", "--n", "1", "--steps", "10",
                            "--seed", "2", "--out", str(out), *flags]) == 0
        return np.load(out)["images"]

    pipe = ddpm.load(recommending)
    expect = lambda **kw: to_uint8(pipe.sample([1], seed=2, steps=10, **kw))  # noqa: E731
    assert np.array_equal(images(), expect(guidance_interval=INTERVAL))
    assert np.array_equal(images("--full-guidance"), expect(guidance_interval=None))
    assert np.array_equal(images("--guidance-interval", "0", "0.5"), expect(guidance_interval=(0.0, 0.5)))


def test_card_states_the_recommendation(recommending: Path):
    card = model_card(recommending)
    assert "| recommended sampling | DDIM, 50 steps · CFG 4 for t/T in 0.2..0.7 · fp32 |" in card


def test_guided_at_is_the_closed_interval_of_t_over_T_minus_1():
    from ddpm.samplers import guided_at

    T = 1001  # t / (T - 1) = t / 1000
    assert all(guided_at(t, T, None) for t in (0, 500, 1000))
    inside = [t for t in range(T) if guided_at(t, T, (0.2, 0.8))]
    assert inside[0] == 200 and inside[-1] == 800 and len(inside) == 601
    assert [t for t in range(T) if guided_at(t, T, (0.0, 0.0))] == [0]
