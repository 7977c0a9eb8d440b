"""research/heldout_loss.py: the held-out eps-MSE against closed forms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ddpm.schedule import NoiseSchedule, ScheduleConfig

_spec = importlib.util.spec_from_file_location("heldout_loss", Path(__file__).with_name("heldout_loss.py"))
heldout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heldout)


class Zero(torch.nn.Module):
    def forward(self, x, t, y=None):
        return torch.zeros_like(x)


class FromX0(torch.nn.Module):
    """Knows x0 = 0 (the images below are all mid-grey): x_t = sqrt(1 - alpha_bar) eps, so eps = x_t / sqrt(1 - alpha_bar)."""

    def __init__(self, schedule):
        super().__init__()
        self.s = schedule

    def forward(self, x, t, y=None):
        return x / self.s.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)


def test_a_network_that_predicts_zero_scores_the_noise_variance_and_an_exact_one_scores_zero():
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=1000))
    grey = torch.zeros(64, 1, 8, 8)  # x0 = 0 in [-1, 1]
    r = heldout.heldout_loss(Zero(), schedule, grey, None, draws=4, precision="fp32", batch_size=50)
    assert r["loss"] == pytest.approx(1.0, abs=0.03)  # E[eps^2] = 1 over 16,384 normal draws (sd of the mean ~0.011)
    assert all(r[f"q{q}"] == pytest.approx(1.0, abs=0.08) for q in range(4))
    exact = heldout.heldout_loss(FromX0(schedule), schedule, grey, None, draws=4, precision="fp32")
    assert exact["loss"] < 1e-10
    # the same draws for every model: the comparison is paired
    again = heldout.heldout_loss(Zero(), schedule, grey, None, draws=4, precision="fp32", batch_size=7)
    assert again == pytest.approx(r)
    assert heldout.heldout_loss(Zero(), schedule, grey, None, draws=4, seed=1, precision="fp32") != r


def test_the_command_compares_checkpoints_on_the_same_test_images(tiny_checkpoint, synthetic_dataset_factory, capsys,
                                                                    monkeypatch):
    # a trained tiny model beats predicting zero by a margin on its own (synthetic) data's held-out images
    # the synthetic data drawn with another seed: images the tiny model was not trained on
    monkeypatch.setattr(heldout, "load_split", lambda *a, **kw: synthetic_dataset_factory(seed=1))
    assert heldout.main([str(tiny_checkpoint), str(tiny_checkpoint), "--n", "60", "--draws", "2",
                         "--precision", "fp32"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"| {tiny_checkpoint}")]
    assert len(lines) == 2 and lines[0] == lines[1]
    loss = float(lines[0].split("|")[3])
    assert 0 < loss < 0.9
    assert heldout.main([str(tiny_checkpoint), "--n", "61"]) == 2
    assert "--n must be a multiple of the 3 classes" in capsys.readouterr().err


def test_auto_precision_is_fp32_where_bf16_is_unsupported(monkeypatch):
    """A CPU without bf16 would emulate it, about ten times slower: auto must run fp32 there, bf16 where supported."""
    import ddpm.device

    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=100))
    grey = torch.full((20, 1, 8, 8), 128, dtype=torch.uint8)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen.append(torch.is_autocast_enabled("cpu"))
            return torch.zeros_like(x)

    for supported in (False, True):  # the project's own check, as training uses it
        monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device, s=supported: s)
        seen.clear()
        heldout.heldout_loss(Spy(), schedule, grey, None, draws=1, precision="auto")
        assert seen and all(on == supported for on in seen)
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="bf16 autocast is not supported"):
        heldout.heldout_loss(Spy(), schedule, grey, None, draws=1, precision="bf16")
