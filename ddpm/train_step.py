"""The pure pieces of one optimisation step, each checked against a closed form in tests/test_train_step.py.

    BatchSampler, make_global_batch  -> the step's examples, t ~ U{0..T-1}, eps ~ N(0, I), dropped labels, flips
    diffusion_loss                   -> Ho et al. eq. 14: ||eps - eps_theta(x_t, t, y)||^2
    lr_at                            -> warm-up, then constant or cosine, then an optional linear cool-down
    EMA                              -> the averaged weights that are shipped
    LossStats                        -> the loss per quarter of the t range, for the log

Determinism: every random draw of a training step (which examples, t, eps, dropped labels, flips) comes from a
generator seeded by (seed, step) for the WHOLE global batch, and each process / micro-batch takes its slice. So a
run gives the same result whatever the number of processes or gradient-accumulation steps (up to float summation
order), and resuming needs only the step counter and the dropout RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageDataset, to_model_range
from .schedule import NoiseSchedule
from .train_config import TrainConfig


class EMA:
    """Exponential moving average of a model's parameters (and copies of its buffers), kept in fp32.

    With warmup (random initial weights) the decay ramps up as min(decay, (1 + k) / (10 + k)) so the average
    soon forgets the random start; without it (weights that are already trained) the full decay applies from
    the first update.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        d = self.decay_at(updates)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimisation step `step` (0-based).

    Linear warm-up over warmup_steps, then constant or cosine down to 10% at the last step; with decay_steps = K > 0
    the last K steps are also scaled by a linear cool-down (steps - step) / K, reaching lr / K at the final step
    (warmup-stable-decay). A constant-lr run is thus a valid shorter run at every checkpoint, and can be extended
    with --resume and finished with a cool-down: `--steps N --decay-steps K` gives the same lr at every step as a
    fresh run with those flags.
    """
    if step < cfg.warmup_steps:
        lr = cfg.lr * (step + 1) / cfg.warmup_steps
    elif cfg.lr_schedule == "constant":
        lr = cfg.lr
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    if cfg.decay_steps > 0:
        lr *= min(1.0, max(0, cfg.steps - step) / cfg.decay_steps)
    return lr


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s random draws (negative steps: the data order of epoch -1 - step)."""
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


class BatchSampler:
    """The indices of every global batch: epochs of random permutations, each from (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, -1 - epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int, global_batch: int) -> torch.Tensor:
        start, out = step * global_batch, []
        while len(out) < global_batch:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.n - offset, global_batch - len(out))
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
        return torch.tensor(out, dtype=torch.long)


@dataclass
class GlobalBatch:
    """One step's examples and noise for all processes: x0 (G, C, H, W) in [-1, 1], t (G,), eps, y (G,) or None."""

    x0: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    y: torch.Tensor | None

    def slice(self, part: int, size: int) -> GlobalBatch:
        """Examples part * size .. (part + 1) * size: one process's micro-batch."""
        s = slice(part * size, (part + 1) * size)
        return GlobalBatch(self.x0[s], self.t[s], self.eps[s], None if self.y is None else self.y[s])


def make_global_batch(data: ImageDataset, sampler: BatchSampler, step: int, global_batch: int, *,
                      T: int, seed: int, label_dropout: float, null_label: int | None) -> GlobalBatch:
    """All random draws of a step, from one generator seeded by (seed, step). t is uniform over 0..T-1."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    idx = sampler.indices(step, global_batch)
    x0 = to_model_range(data.images[idx])
    if data.hflip:
        flip = torch.rand(global_batch, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, T, (global_batch,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    y = None
    if null_label is not None and data.labels is not None:
        y = data.labels[idx].clone()
        drop = torch.rand(global_batch, generator=g) < label_dropout  # per sample
        y[drop] = null_label
    return GlobalBatch(x0, t, eps, y)


def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, batch: GlobalBatch, *, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The simple loss of Ho et al. (eq. 14): mean ||eps - eps_theta(x_t, t, y)||^2. Returns (loss, per-example loss)."""
    device = next(model.parameters()).device
    x0, t, eps = batch.x0.to(device), batch.t.to(device), batch.eps.to(device)
    x_t = schedule.q_sample(x0, batch.t, eps)
    y = batch.y.to(device) if batch.y is not None else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        eps_pred = model(x_t, t, y)
    per_example = F.mse_loss(eps_pred.float(), eps, reduction="none").flatten(1).mean(1)
    return per_example.mean(), per_example.detach()


class LossStats:
    """Running mean of the loss overall and per quarter of the t range (which noise levels are learned)."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)
        self.counts = torch.zeros(4, dtype=torch.float64)

    def add(self, t: torch.Tensor, per_example: torch.Tensor) -> None:
        q = (t * 4 // self.T).clamp(0, 3)
        self.sums.index_add_(0, q, per_example.double())
        self.counts.index_add_(0, q, torch.ones_like(per_example, dtype=torch.float64))

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        return float(self.sums.sum() / self.counts.sum().clamp(min=1))

    def quarters(self) -> dict[str, float | None]:
        return {f"loss_q{i}": (float(self.sums[i] / self.counts[i]) if self.counts[i] else None) for i in range(4)}
