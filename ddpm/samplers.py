"""Samplers: DDPM ancestral (full or respaced), DDIM and DPM-Solver++(2M), with classifier-free guidance.

Each sampler is a generator that yields a `Step` after every denoising step, so the app, the CLI and
the tests all run the same loop; `run_to_end` consumes one and returns the final images.

Notation (code name -> paper name), for a step from time step t to the previous kept step s < t:

    alpha_bar_t, alpha_bar_prev   alpha-bar at t and at s (1 after the last step)        Ho et al. eq. 4
    eps                           the (guided) noise prediction eps_theta(x_t, t, y)
    x0_pred                       (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)    eq. 15
    beta_t (respaced)             1 - alpha_bar_t / alpha_bar_prev                         improved DDPM, respace.py
    posterior_variance            beta_t (1 - alpha_bar_prev) / (1 - alpha_bar_t)          "beta tilde", eq. 7
    sigma (DDIM)                  eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
                                                                                            Song et al. eq. 16
    lambda_t                      log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)), half the log-SNR  Lu et al. 2022
    h                             lambda_s - lambda_t > 0, the step in lambda                        (DPM-Solver++)

Classifier-free guidance (Ho & Salimans 2022) here is

    eps = eps_uncond + w * (eps_cond - eps_uncond)

so w = 0 is unconditional, w = 1 plain conditional, w > 1 guided (`class_cfg` gives each class its own w).
The other common convention, eps = (1 + w') eps_cond - w' eps_uncond, is the same with w = 1 + w'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .schedule import NoiseSchedule
from .selfcheck import check_seeds, class_errors, redraw_seeds, relative_margin

SamplerName = Literal["ddpm", "ddim", "dpm++2m"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m")
SAMPLER_NAMES: dict[str, str] = {"ddpm": "DDPM ancestral", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}
VARIANCES: tuple[str, ...] = ("posterior", "beta")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
MAX_SEED = 2**63 - 1
MAX_REDRAWS = 5
MAX_SPACING = 4.0  # the largest time-step spacing power


@dataclass(frozen=True)
class Step:
    """One denoising step, from time step `t` to the next kept (smaller) time step.

    index: 0-based step number; num_steps: total steps of the run; t: the time step the model was just
    evaluated at; x_t: the sample after this step (the final image after the last), (B, C, H, W) float32 on
    the CPU; x0_pred: the model's prediction of the clean image at this step, same shape, in [-1, 1] when
    clipping is on.
    """

    index: int
    num_steps: int
    t: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    draw: int = 0  # 0 = the first draw; r = redraw round r (SamplerOptions.redraws), whose steps re-run 0..S-1

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


@dataclass(frozen=True)
class SamplerOptions:
    """Everything that decides a sampling run besides the model, the labels and the seed."""

    sampler: str = "ddim"  # "ddpm" (ancestral), "ddim" or "dpm++2m" (DPM-Solver++(2M), deterministic)
    steps: int = 50  # number of network evaluations, 1..T; T with "ddpm" is the original chain
    cfg: float = 3.0  # guidance scale w; 0 = unconditional, 1 = conditional
    eta: float = 0.0  # DDIM only: 0 = deterministic, 1 = DDPM-like noise
    variance: str = "posterior"  # DDPM only: "posterior" (beta tilde) or "beta" (full T steps only)
    clip_x0: bool = True  # clip x0_pred to [-1, 1] at each step
    guidance_interval: tuple[float, float] | None = None  # apply CFG only for t/T in [lo, hi]; else w = 1
    precision: str = "fp32"  # network precision: "fp32" or "bf16" (autocast)
    spacing: float = 1.0  # kept time steps at t = (T-1) (1 - i/(S-1))^spacing: 1 = even, 2 = quadratic
    class_cfg: tuple[float, ...] | None = None  # one w per class (index = label); replaces cfg for every image
    redraws: int = 0  # rounds of redrawing the images the model reads as another class (ddpm.selfcheck); 0 = off
    redraw_threshold: float = 0.0  # redraw when the own class's relative margin is <= this

    def validate(self, T: int, num_classes: int | None = None) -> None:
        """Raise ValueError naming what is wrong. num_classes: the model's (None = unconditional), for class_cfg."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {self.steps!r}")
        if not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg (guidance scale) must be a finite number >= 0, got {self.cfg!r}")
        if self.class_cfg is not None and (
            not isinstance(self.class_cfg, (tuple, list)) or not self.class_cfg
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                       for w in self.class_cfg)):
            raise ValueError("class_cfg must be a sequence of finite guidance scales >= 0, one per class, "
                             f"got {self.class_cfg!r}")
        if self.class_cfg is not None and num_classes is None:
            raise ValueError("class_cfg needs a class-conditional model")
        if self.class_cfg is not None and len(self.class_cfg) != num_classes:
            raise ValueError(f"class_cfg needs one guidance scale per class: {num_classes} classes, "
                             f"got {len(self.class_cfg)} scales")
        if not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {self.eta!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"unknown variance {self.variance!r}; choose one of {', '.join(VARIANCES)}")
        if self.sampler == "ddpm" and self.variance == "beta" and self.steps != T:
            raise ValueError(
                f"variance='beta' is only allowed with all {T} steps; respaced DDPM ({self.steps} steps) "
                "needs variance='posterior' (sigma^2 = beta is several times worse at few steps)"
            )
        check_spacing(self.spacing)
        if isinstance(self.redraws, bool) or not isinstance(self.redraws, (int, np.integer)) \
                or not 0 <= self.redraws <= MAX_REDRAWS:
            raise ValueError(f"redraws must be an integer in 0..{MAX_REDRAWS} (0 = off), got {self.redraws!r}")
        if self.redraws and num_classes is None:
            raise ValueError("redraws need a class-conditional model: the check asks which class explains an image")
        if isinstance(self.redraw_threshold, bool) or not isinstance(self.redraw_threshold, (int, float)) \
                or not -1.0 <= self.redraw_threshold <= 1.0:
            raise ValueError(f"redraw_threshold must be a number in [-1, 1], got {self.redraw_threshold!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.guidance_interval}")


def check_spacing(spacing: float) -> None:
    """Raise ValueError unless spacing is a number in [1, MAX_SPACING]."""
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.floating)) \
            or not 1.0 <= float(spacing) <= MAX_SPACING:
        raise ValueError(f"spacing must be a number in 1..{MAX_SPACING:g} (1 = even steps, 2 = quadratic), got {spacing!r}")


def timesteps_for(T: int, steps: int, spacing: float = 1.0) -> list[int]:
    """The kept time steps, descending, always starting at T-1 and ending at 0.

    Step i of S sits at t_i = (T-1) (1 - i/(S-1))^spacing, rounded: spacing 1 spaces them evenly in t, larger
    powers crowd them towards t = 0, where the image's details are decided (2 is close to the "quadratic"
    spacing of Song et al. 2021, sec. D.2). Where rounding would repeat a time step near t = 0 the steps are
    pushed apart by one, so all S are distinct; the spacing is then locally even.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    check_spacing(spacing)
    if steps == 1:
        return [T - 1]
    if float(spacing) == 1.0:
        ts = np.round(np.linspace(T - 1, 0, steps)).astype(int)  # distinct because steps <= T
    else:
        ts = np.round((T - 1) * np.linspace(1.0, 0.0, steps) ** float(spacing)).astype(int)
    for i in range(1, steps):  # strictly descending ...
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts = np.maximum(ts, np.arange(steps - 1, -1, -1))  # ... and never below the steps still to come (ends at 0)
    return [int(t) for t in ts]


def check_seed(seed: int, n: int) -> None:
    """Raise ValueError unless seed, ..., seed + n - 1 are all valid seeds."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED - n:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED - n}, got {seed!r}")


def make_rngs(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image: image i gets seed + i, so it is the same image alone or in a batch."""
    check_seed(seed, n)
    return [torch.Generator().manual_seed(int(seed) + i) for i in range(n)]


def randn_per_image(rngs: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(len(rngs), *shape) standard normal noise, each row from its own CPU generator, then moved."""
    return torch.stack([torch.randn(shape, generator=g) for g in rngs]).to(device)


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


def _x0_and_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip: bool):
    x0_pred = schedule.x0_from_eps(x_t, t, eps)
    if clip:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = schedule.eps_from_x0(x_t, t, x0_pred)  # keep eps consistent with the clipped x0
    return x0_pred, eps


def ddpm_steps(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    rngs: Sequence[torch.Generator],
    *,
    steps: int,
    variance: str = "posterior",
    clip_x0: bool = True,
    spacing: float = 1.0,
) -> Iterator[Step]:
    """DDPM ancestral sampling (Ho et al. Algorithm 2) on `steps` kept time steps (timesteps_for).

    With steps = T this is the original chain; with fewer, the chain is respaced: beta_t is recomputed
    from alpha_bar over the kept steps so that alpha_bar itself is unchanged (improved DDPM, sec. 4).
    sigma_t^2 is the posterior variance (default) or beta_t (the paper's two choices). No noise is
    added at the last step.
    """
    ts = timesteps_for(schedule.T, steps, spacing)
    alpha_bar = schedule.alpha_bar.double()
    x = x_T
    shape = tuple(x_T.shape[1:])
    for i, t in enumerate(ts):
        ab_t = float(alpha_bar[t])
        ab_prev = float(alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        beta_t = 1.0 - ab_t / ab_prev
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0_pred, _ = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        # posterior mean mu~(x_t, x0_pred)  (eq. 7)
        coef1 = beta_t * math.sqrt(ab_prev) / (1.0 - ab_t)
        coef2 = (1.0 - ab_prev) * math.sqrt(1.0 - beta_t) / (1.0 - ab_t)
        mean = coef1 * x0_pred + coef2 * x
        if i + 1 < len(ts):
            var = beta_t * (1.0 - ab_prev) / (1.0 - ab_t) if variance == "posterior" else beta_t
            x = mean + math.sqrt(var) * randn_per_image(rngs, shape, x.device)
        else:
            x = mean
        yield Step(i, len(ts), t, x, x0_pred)


def ddim_steps(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    rngs: Sequence[torch.Generator],
    *,
    steps: int,
    eta: float = 0.0,
    clip_x0: bool = True,
    spacing: float = 1.0,
) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12) on `steps` kept time steps (timesteps_for); eta=0 is deterministic."""
    ts = timesteps_for(schedule.T, steps, spacing)
    alpha_bar = schedule.alpha_bar.double()
    x = x_T
    shape = tuple(x_T.shape[1:])
    for i, t in enumerate(ts):
        ab_t = float(alpha_bar[t])
        ab_prev = float(alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0_pred, eps = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
        # "direction pointing to x_t" plus fresh noise (eq. 12)
        x = math.sqrt(ab_prev) * x0_pred + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_per_image(rngs, shape, x.device)
        yield Step(i, len(ts), t, x, x0_pred)


def dpmpp_2m_steps(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    steps: int,
    clip_x0: bool = True,
    spacing: float = 1.0,
) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on `steps` kept time steps (timesteps_for): deterministic.

    It solves the same probability-flow ODE as DDIM, written for the data prediction x0_pred. With
    alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) and lambda = log(alpha / sigma), a step from t to s is

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - exp(-h)) D,     h = lambda_s - lambda_t

    D = x0_pred is DDIM exactly. The other steps extrapolate with the previous step's prediction,
    D = (1 + 1/(2r)) x0_pred - 1/(2r) x0_pred_prev with r = h_prev / h: second order in h for the same one
    network call per step as DDIM. The first step has no previous prediction, and the last two use D = x0_pred
    too ("lower order final"): the step into t = 0 is several times longer in lambda than the one before it
    (r ~ 0.3-0.4), where the extrapolation would overshoot (with an exact Gaussian eps it cuts the error
    at 20 steps from 0.2 to 0.007), and the last, into alpha_bar = 1, lands on the prediction.
    """
    ts = timesteps_for(schedule.T, steps, spacing)
    alpha_bar = schedule.alpha_bar.double()
    ab = [float(alpha_bar[t]) for t in ts]
    lam = [0.5 * math.log(a / (1.0 - a)) for a in ab]
    x = x_T
    x0_prev: torch.Tensor | None = None
    for i, t in enumerate(ts):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0_pred, _ = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        if i + 1 == len(ts):  # into alpha_bar = 1: sigma_s = 0, the step lands on the prediction
            yield Step(i, len(ts), t, x0_pred, x0_pred)
            break
        h = lam[i + 1] - lam[i]
        d = x0_pred
        if x0_prev is not None and i + 2 < len(ts):
            r = (lam[i] - lam[i - 1]) / h
            d = (1.0 + 0.5 / r) * x0_pred - (0.5 / r) * x0_prev
        x = math.sqrt((1.0 - ab[i + 1]) / (1.0 - ab[i])) * x + math.sqrt(ab[i + 1]) * (-math.expm1(-h)) * d
        x0_prev = x0_pred
        yield Step(i, len(ts), t, x, x0_pred)


def solver_steps(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, rngs: Sequence[torch.Generator],
                 options: SamplerOptions) -> Iterator[Step]:
    """The generator of options.sampler (its steps, eta, variance, clipping and spacing) from x_T (B, C, H, W).

    Guidance and precision are eps_fn's business (guided_eps_fn); rngs give the per-step noise of the stochastic
    samplers, one generator per image.
    """
    steps, clip, spacing = int(options.steps), options.clip_x0, float(options.spacing)
    if options.sampler == "ddpm":
        return ddpm_steps(eps_fn, schedule, x_T, rngs, steps=steps, variance=options.variance, clip_x0=clip,
                          spacing=spacing)
    if options.sampler == "dpm++2m":
        return dpmpp_2m_steps(eps_fn, schedule, x_T, steps=steps, clip_x0=clip, spacing=spacing)
    if options.sampler == "ddim":
        return ddim_steps(eps_fn, schedule, x_T, rngs, steps=steps, eta=float(options.eta), clip_x0=clip,
                          spacing=spacing)
    raise ValueError(f"unknown sampler {options.sampler!r}; choose one of {', '.join(SAMPLERS)}")


def sample_steps(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    *,
    n: int,
    labels: torch.Tensor | None,
    seed: int,
    options: SamplerOptions = SamplerOptions(),
    null_label: int | None = None,
    image_shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
) -> Iterator[Step]:
    """Sample n images step by step. Image i uses its own generator seeded seed+i (x_T and every step's noise).

    With options.redraws = R > 0 (conditional models), the finished images are checked by the model itself
    (ddpm.selfcheck): those it reads as another class are drawn again from fresh noise, up to R rounds, keeping
    each image's draw with the larger margin. A redraw round yields its steps again (Step.draw = r), with the
    images not being redrawn held at their final values; the last Step yielded holds the kept images.
    """
    options.validate(schedule.T, num_classes=null_label)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    device = torch.device(device)
    check_seed(seed, n)
    seeds = [int(seed) + i for i in range(n)]
    y = labels.to(device) if labels is not None else None
    last = None
    for last in _draw_steps(model, schedule, seeds, y, options, null_label, image_shape, device, draw=0):
        yield last
    if not options.redraws or y is None or null_label is None:
        return

    def margins(x0: torch.Tensor, idx: torch.Tensor, draw: int) -> torch.Tensor:
        draw_seeds = redraw_seeds([seeds[i] for i in idx.tolist()], draw)
        errors = class_errors(model, schedule, x0, num_classes=null_label, seeds=check_seeds(draw_seeds),
                              precision=options.precision)
        return relative_margin(errors, y[idx].cpu())

    final, final_x0 = last.x_t.clone(), last.x0_pred.clone()
    margin = margins(final, torch.arange(n), 0)
    redrawn = 0  # the last round that redrew anything
    for draw in range(1, int(options.redraws) + 1):
        bad = (margin <= options.redraw_threshold).nonzero().squeeze(1)
        if not len(bad):
            break
        redrawn = draw
        part = None
        for part in _draw_steps(model, schedule, redraw_seeds([seeds[i] for i in bad.tolist()], draw), y[bad],
                                options, null_label, image_shape, device, draw=draw):
            x_t, x0_pred = final.clone(), final_x0.clone()
            x_t[bad], x0_pred[bad] = part.x_t, part.x0_pred
            yield Step(part.index, part.num_steps, part.t, x_t, x0_pred, draw)
        new = margins(part.x_t, bad, draw)
        better = new > margin[bad]
        final[bad[better]], final_x0[bad[better]] = part.x_t[better], part.x0_pred[better]
        margin[bad[better]] = new[better]
    if redrawn:  # the kept draw of each image (a redraw that scored worse than the earlier draw is dropped)
        yield Step(last.index, last.num_steps, last.t, final, final_x0, redrawn)


def _draw_steps(model: torch.nn.Module, schedule: NoiseSchedule, seeds: Sequence[int], y: torch.Tensor | None,
                options: SamplerOptions, null_label: int | None, image_shape: tuple[int, int, int],
                device: torch.device, *, draw: int) -> Iterator[Step]:
    """One pass of the sampler over the images with these seeds (image i: a generator seeded seeds[i])."""
    rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x_T = randn_per_image(rngs, image_shape, device)
    cfg: float | torch.Tensor = float(options.cfg)
    if options.class_cfg is not None:
        if y is None:
            raise ValueError("class_cfg needs a class-conditional model and labels")
        cfg = torch.tensor([float(w) for w in options.class_cfg], device=device)[y]
    eps_fn = guided_eps_fn(
        model, y, cfg=cfg, null_label=null_label, T=schedule.T,
        guidance_interval=options.guidance_interval, precision=options.precision,
    )
    for step in solver_steps(eps_fn, schedule, x_T, rngs, options):
        x_t = step.x_t.clamp(-1.0, 1.0) if step.is_last else step.x_t  # the final image is clamped
        yield Step(step.index, step.num_steps, step.t, x_t.cpu(), step.x0_pred.cpu(), draw)


def run_to_end(steps: Iterator[Step]) -> torch.Tensor:
    """Consume a sampler generator; return the final x_0, (B, C, H, W) in [-1, 1]."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the sampler yielded no steps")
    return last.x_t
