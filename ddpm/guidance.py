"""Classifier-free guidance (Ho & Salimans 2022) as a noise-prediction function eps(x_t, t).

    eps = eps_uncond + w * (eps_cond - eps_uncond)

w = 0 is unconditional, w = 1 plain conditional, w > 1 guided; a guidance interval applies w only for t/T in
[lo, hi] (w = 1 elsewhere). `mixed_eps_fn` blends two such predictions per image, which is guidance towards the
blended conditional prediction (the guided eps is linear in eps_cond).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,C,H,W), t (B,)) -> eps (B,C,H,W)


def guided_at(t: int, T: int, guidance_interval: tuple[float, float] | None) -> bool:
    """Whether CFG applies at time step t: always without an interval, else only for t/T in [lo, hi]."""
    return guidance_interval is None or guidance_interval[0] <= t / max(T - 1, 1) <= guidance_interval[1]


def guided_eps_fn(
    model: torch.nn.Module,
    labels: torch.Tensor | None,
    *,
    cfg: float | torch.Tensor,
    null_label: int | None,
    T: int,
    guidance_interval: tuple[float, float] | None = None,
    precision: str = "fp32",
) -> EpsFn:
    """The (guided) noise prediction as a function of (x_t, t).

    cfg: one guidance scale w, or a tensor (B,) with one per image. Conditional and unconditional predictions
    come from ONE batched forward pass; w = 1 and w = 0 (and unconditional models) need only one half, so they
    skip the other.
    """
    if isinstance(cfg, torch.Tensor):
        if labels is not None and cfg.shape != labels.shape:
            raise ValueError(f"per-image guidance scales need one per label: shape {tuple(cfg.shape)} for "
                             f"{len(labels)} labels")
        # one scale for the whole batch: the same arithmetic (and the same shortcuts) as a plain cfg
        cfg = float(cfg[0]) if bool((cfg == cfg[0]).all()) else cfg.float().view(-1, 1, 1, 1)
    autocast = precision == "bf16"

    def net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x, t, y).float()

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if labels is None or null_label is None:
            return net(x, t, None)
        w = cfg if guided_at(int(t[0]), T, guidance_interval) else 1.0
        if not isinstance(w, torch.Tensor) and w == 1.0:
            return net(x, t, labels)
        null = torch.full_like(labels, null_label)
        if not isinstance(w, torch.Tensor) and w == 0.0:
            return net(x, t, null)
        eps_cond, eps_uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return eps_uncond + w * (eps_cond - eps_uncond)

    return eps_fn


def mixed_eps_fn(eps_a: EpsFn, eps_b: EpsFn, lam: torch.Tensor) -> EpsFn:
    """(1 - lam) eps_a + lam eps_b, with lam (B,) in [0, 1] one weight per image (lam 0: eps_a, 1: eps_b)."""
    w = lam.float().view(-1, 1, 1, 1)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - w.to(x.device)) * eps_a(x, t) + w.to(x.device) * eps_b(x, t)

    return eps_fn
