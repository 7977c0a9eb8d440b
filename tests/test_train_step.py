"""ddpm.train_step, checked against closed forms: the first loss is E[eps^2] = 1, t and label dropout are drawn
right, a step's batch is the same in any process, and the EMA and learning-rate warm-ups follow their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm.train_config import TrainConfig
from ddpm.train_step import EMA, BatchSampler, lr_at, make_global_batch
from ddpm.training import train


def test_first_loss_is_one(tmp_path, synthetic_dataset, tiny_train_config_factory):
    """The output layer starts at zero, so eps_pred = 0 and the first loss is E[eps^2] = 1."""
    losses = []
    train(tiny_train_config_factory(tmp_path, steps=1, batch_size=64), dataset=synthetic_dataset, progress=False,
          on_step=lambda step, loss: losses.append(loss))
    n = 64 * 12 * 12
    assert losses[0] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def _batch(data, step: int, size: int, *, T: int, label_dropout: float = 0.1, seed: int = 0):
    return make_global_batch(data, BatchSampler(len(data), seed), step, size, T=T, seed=seed,
                             label_dropout=label_dropout, null_label=data.num_classes)


def test_t_is_uniform_over_exactly_0_to_T_minus_1(synthetic_dataset):
    T = 1000
    t = torch.cat([_batch(synthetic_dataset, step, 4096, T=T).t for step in range(8)])  # 32768 draws
    assert int(t.min()) == 0 and int(t.max()) == T - 1  # both ends are trained; T itself never appears
    counts = torch.bincount(t * 4 // T, minlength=4).double()  # per quarter of the t range
    expected = len(t) / 4
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 0.75)).all(), counts
    small = torch.cat([_batch(synthetic_dataset, step, 256, T=5).t for step in range(4)])
    assert set(small.tolist()) == {0, 1, 2, 3, 4}


def test_label_dropout_is_per_sample(synthetic_dataset):
    null = synthetic_dataset.num_classes
    fractions = []
    for step in range(20):
        b = _batch(synthetic_dataset, step, 128, T=1000)
        kept = b.y != null
        fractions.append(float((~kept).double().mean()))
        idx = BatchSampler(len(synthetic_dataset), 0).indices(step, 128)
        assert torch.equal(b.y[kept], synthetic_dataset.labels[idx][kept])  # the others keep their true label
    # ~10% null labels inside every batch, never all-or-nothing
    assert all(0.0 < f < 0.3 for f in fractions), fractions
    assert float(np.mean(fractions)) == pytest.approx(0.1, abs=5 * math.sqrt(0.09 / (20 * 128)))
    assert not (_batch(synthetic_dataset, 0, 128, T=1000, label_dropout=0.0).y == null).any()


def test_same_step_same_batch_any_process_count(synthetic_dataset):
    a = _batch(synthetic_dataset, 3, 64, T=1000)
    b = _batch(synthetic_dataset, 3, 64, T=1000)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.y, b.y) and torch.equal(a.x0, b.x0)
    half = a.slice(1, 32)
    assert torch.equal(half.t, a.t[32:])
    assert float(a.x0.min()) >= -1.0 and float(a.x0.max()) <= 1.0


def test_ema_decay_warm_up_and_update():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    for k, expected in ((0, 0.1), (8, 0.5), (90, 0.91), (10**7, 0.999)):
        assert ema.decay_at(k) == pytest.approx(min(0.999, (1 + k) / (10 + k)))
        assert ema.decay_at(k) == pytest.approx(expected, rel=1e-6)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.sub_(2.0)
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.update(model, 0)  # decay 0.1: the average moves 90% of the way
    for k in before:
        torch.testing.assert_close(ema.shadow[k], 0.1 * before[k] + 0.9 * after[k])
    ema.update(model, 10**7)  # decay 0.999 once warmed up
    for k in before:
        prev = 0.1 * before[k] + 0.9 * after[k]
        torch.testing.assert_close(ema.shadow[k], 0.999 * prev + 0.001 * after[k])
    target = nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


def test_init_from_without_ema_warm_up():
    """Weights that are already trained get the full EMA decay from the first update."""
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99, warmup=False)
    assert ema.decay_at(0) == ema.decay_at(5) == 0.99
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)
    torch.testing.assert_close(ema.shadow["weight"], before["weight"] + 0.01)


def test_lr_warm_up_and_schedules():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="constant")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == lr_at(109, cfg) == pytest.approx(1e-3)
    cos = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine")
    assert lr_at(10, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: cos(pi/2) = 0
    assert lr_at(110, cos) == pytest.approx(1e-4)  # 10% at the end
    lrs = [lr_at(s, cos) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # warmup-stable-decay: constant, then a linear cool-down over the last 20 steps to lr / 20 at the final step
    wsd = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="constant", decay_steps=20)
    assert lr_at(9, wsd) == lr_at(89, wsd) == lr_at(90, wsd) == pytest.approx(1e-3)
    assert lr_at(100, wsd) == pytest.approx(0.5e-3)
    assert lr_at(109, wsd) == pytest.approx(1e-3 / 20)
    # on a cosine schedule the cool-down multiplies it
    cos_decay = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine", decay_steps=100)
    assert lr_at(60, cos_decay) == pytest.approx(lr_at(60, cos) * 50 / 100)
