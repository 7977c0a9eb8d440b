"""Samplers: DDPM ancestral (full or respaced), DDIM and DPM-Solver++(2M), with classifier-free guidance.

Each sampler is a generator that yields a `Step` after every denoising step, so the app, the CLI and
the tests all run the same loop; `run_to_end` consumes one and returns the final images. The settings
are ddpm.options.SamplerOptions.

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

import numpy as np
import torch

from .device import choose_precision
from .guidance import EpsFn, guided_eps_fn
from .options import SamplerOptions, check_spacing
from .schedule import NoiseSchedule

MAX_SEED = 2**63 - 1


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
    draw: int = 0  # 0 = the first draw; r = redraw round r (ddpm.selfcheck.redraw_steps), re-running 0..S-1

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


def timesteps_for(T: int, steps: int, spacing: float = 1.0, *, start: int | None = None) -> list[int]:
    """The kept time steps, descending, starting at `start` (default T-1) and ending at 0.

    Step i of S sits at t_i = start (1 - i/(S-1))^spacing, rounded: spacing 1 spaces them evenly in t, larger
    powers crowd them towards t = 0, where the image's details are decided (2 is close to the "quadratic"
    spacing of Song et al. 2021, sec. D.2). Where rounding would repeat a time step near t = 0 the steps are
    pushed apart by one, so all S are distinct; the spacing is then locally even. A later start (image-to-image
    from t0) needs steps <= start + 1.
    """
    start = T - 1 if start is None else start
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= T - 1:
        raise ValueError(f"start must be a time step in 0..{T - 1}, got {start!r}")
    if not 1 <= steps <= start + 1:
        raise ValueError(f"steps must be in 1..{start + 1}, got {steps}")
    check_spacing(spacing)
    if steps == 1:
        return [int(start)]
    if float(spacing) == 1.0:
        ts = np.round(np.linspace(start, 0, steps)).astype(int)  # distinct because steps <= start + 1
    else:
        ts = np.round(start * np.linspace(1.0, 0.0, steps) ** float(spacing)).astype(int)
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


Update = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (i, x at ts[i]) -> (x at ts[i+1], x0_pred)
Merge = Callable[[int, torch.Tensor], torch.Tensor]  # (i, x after step i) -> x with a known region put back
Renoise = Callable[[int, torch.Tensor], torch.Tensor]  # (i, x at ts[i+1]) -> a draw of x at ts[i]


def _x0_and_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip: bool):
    x0_pred = schedule.x0_from_eps(x_t, t, eps)
    if clip:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = schedule.eps_from_x0(x_t, t, x0_pred)  # keep eps consistent with the clipped x0
    return x0_pred, eps


def _alpha_bars(schedule: NoiseSchedule, ts: Sequence[int]) -> list[float]:
    """alpha_bar at every kept step, then 1 (the clean image after the last step): len(ts) + 1 floats."""
    alpha_bar = schedule.alpha_bar.double()
    return [float(alpha_bar[t]) for t in ts] + [1.0]


def _t_batch(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def ddpm_update(eps_fn: EpsFn, schedule: NoiseSchedule, ts: Sequence[int], rngs: Sequence[torch.Generator], *,
                variance: str = "posterior", clip_x0: bool = True) -> Update:
    """One DDPM ancestral step (Ho et al. Algorithm 2) from ts[i] to ts[i+1], respaced over the kept steps.

    beta_t is recomputed from alpha_bar over the kept steps so that alpha_bar itself is unchanged (improved DDPM,
    sec. 4); sigma_t^2 is the posterior variance or beta_t. No noise is added at the last step.
    """
    ab = _alpha_bars(schedule, ts)

    def update(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab_t, ab_prev = ab[i], ab[i + 1]
        beta_t = 1.0 - ab_t / ab_prev
        t_batch = _t_batch(x, ts[i])
        x0_pred, _ = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        # posterior mean mu~(x_t, x0_pred)  (eq. 7)
        coef1 = beta_t * math.sqrt(ab_prev) / (1.0 - ab_t)
        coef2 = (1.0 - ab_prev) * math.sqrt(1.0 - beta_t) / (1.0 - ab_t)
        mean = coef1 * x0_pred + coef2 * x
        if i + 1 == len(ts):
            return mean, x0_pred
        var = beta_t * (1.0 - ab_prev) / (1.0 - ab_t) if variance == "posterior" else beta_t
        return mean + math.sqrt(var) * randn_per_image(rngs, tuple(x.shape[1:]), x.device), x0_pred

    return update


def ddim_update(eps_fn: EpsFn, schedule: NoiseSchedule, ts: Sequence[int], rngs: Sequence[torch.Generator], *,
                eta: float = 0.0, clip_x0: bool = True) -> Update:
    """One DDIM step (Song et al. 2021, eq. 12) from ts[i] to ts[i+1]; eta = 0 is deterministic."""
    ab = _alpha_bars(schedule, ts)

    def update(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab_t, ab_prev = ab[i], ab[i + 1]
        t_batch = _t_batch(x, ts[i])
        x0_pred, eps = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))
        # "direction pointing to x_t" plus fresh noise (eq. 12)
        x = math.sqrt(ab_prev) * x0_pred + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_per_image(rngs, tuple(x.shape[1:]), x.device)
        return x, x0_pred

    return update


def dpmpp_2m_update(eps_fn: EpsFn, schedule: NoiseSchedule, ts: Sequence[int], *, clip_x0: bool = True) -> Update:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2) from ts[i] to ts[i+1]: deterministic.

    It solves the same probability-flow ODE as DDIM, written for the data prediction x0_pred. With
    alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar) and lambda = log(alpha / sigma), a step from t to s is

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - exp(-h)) D,     h = lambda_s - lambda_t

    D = x0_pred is DDIM exactly. The other steps extrapolate with the previous step's prediction,
    D = (1 + 1/(2r)) x0_pred - 1/(2r) x0_pred_prev with r = h_prev / h: second order in h for the same one
    network call per step as DDIM. The first step has no previous prediction, and the last two use D = x0_pred
    too ("lower order final"): the step into t = 0 is several times longer in lambda than the one before it
    (r ~ 0.3-0.4), where the extrapolation would overshoot (with an exact Gaussian eps it cuts the error
    at 20 steps from 0.2 to 0.007), and the last, into alpha_bar = 1, lands on the prediction. A step run again
    (RePaint's resampling) extrapolates from the latest prediction at the step before it.
    """
    ab = _alpha_bars(schedule, ts)[:-1]
    lam = [0.5 * math.log(a / (1.0 - a)) for a in ab]
    preds: dict[int, torch.Tensor] = {}  # the latest x0_pred of each step

    def update(i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_batch = _t_batch(x, ts[i])
        x0_pred, _ = _x0_and_eps(schedule, x, t_batch, eps_fn(x, t_batch), clip_x0)
        preds[i] = x0_pred
        preds.pop(i - 2, None)
        if i + 1 == len(ts):  # into alpha_bar = 1: sigma_s = 0, the step lands on the prediction
            return x0_pred, x0_pred
        h = lam[i + 1] - lam[i]
        d = x0_pred
        if i - 1 in preds and i + 2 < len(ts):
            r = (lam[i] - lam[i - 1]) / h
            d = (1.0 + 0.5 / r) * x0_pred - (0.5 / r) * preds[i - 1]
        return math.sqrt((1.0 - ab[i + 1]) / (1.0 - ab[i])) * x + math.sqrt(ab[i + 1]) * (-math.expm1(-h)) * d, x0_pred

    return update


def run_steps(update: Update, ts: Sequence[int], x: torch.Tensor, *, merge: Merge | None = None,
              renoise: Renoise | None = None, jumps: int = 0) -> Iterator[Step]:
    """The sampling loop: x at ts[0] through every kept step, a Step yielded after each.

    merge(i, x) puts a known region back into the result of step i (RePaint). With jumps = r > 0 every step but
    the last is run r + 1 times: after the first r runs the merged result is noised back to ts[i] by renoise
    (q(x_t | x_s)) and the step is taken again, so the generated region can agree with the known one (RePaint's
    resampling, jump length 1).
    """
    for i, t in enumerate(ts):
        rounds = jumps + 1 if i + 1 < len(ts) else 1
        for r in range(rounds):
            x_next, x0_pred = update(i, x)
            if merge is not None:
                x_next = merge(i, x_next)
            if r + 1 < rounds:
                x = renoise(i, x_next)
        x = x_next
        yield Step(i, len(ts), t, x, x0_pred)


def renoise_update(schedule: NoiseSchedule, ts: Sequence[int], rngs: Sequence[torch.Generator]) -> Renoise:
    """(i, x at ts[i+1]) -> a draw of x at ts[i] from q(x_t | x_s): forward noising by one kept step,
    x_t = sqrt(alpha_bar_t / alpha_bar_s) x_s + sqrt(1 - alpha_bar_t / alpha_bar_s) z."""
    ab = _alpha_bars(schedule, ts)

    def renoise(i: int, x: torch.Tensor) -> torch.Tensor:
        a = ab[i] / ab[i + 1]
        return math.sqrt(a) * x + math.sqrt(1.0 - a) * randn_per_image(rngs, tuple(x.shape[1:]), x.device)

    return renoise


def ddpm_steps(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, rngs: Sequence[torch.Generator], *,
               steps: int, variance: str = "posterior", clip_x0: bool = True, spacing: float = 1.0) -> Iterator[Step]:
    """DDPM ancestral sampling (Ho et al. Algorithm 2) on `steps` kept time steps (timesteps_for), from x_T.

    With steps = T this is the original chain; with fewer, the chain is respaced (ddpm_update).
    """
    ts = timesteps_for(schedule.T, steps, spacing)
    return run_steps(ddpm_update(eps_fn, schedule, ts, rngs, variance=variance, clip_x0=clip_x0), ts, x_T)


def ddim_steps(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, rngs: Sequence[torch.Generator], *,
               steps: int, eta: float = 0.0, clip_x0: bool = True, spacing: float = 1.0) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12) on `steps` kept time steps (timesteps_for); eta=0 is deterministic."""
    ts = timesteps_for(schedule.T, steps, spacing)
    return run_steps(ddim_update(eps_fn, schedule, ts, rngs, eta=eta, clip_x0=clip_x0), ts, x_T)


def dpmpp_2m_steps(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int, clip_x0: bool = True,
                   spacing: float = 1.0) -> Iterator[Step]:
    """DPM-Solver++(2M) (dpmpp_2m_update) on `steps` kept time steps (timesteps_for): deterministic."""
    ts = timesteps_for(schedule.T, steps, spacing)
    return run_steps(dpmpp_2m_update(eps_fn, schedule, ts, clip_x0=clip_x0), ts, x_T)


def solver_update(eps_fn: EpsFn, schedule: NoiseSchedule, ts: Sequence[int], rngs: Sequence[torch.Generator],
                  options: SamplerOptions) -> Update:
    """The step function of options.sampler (its eta, variance and clipping) over the kept steps ts."""
    clip = options.clip_x0
    if options.sampler == "ddpm":
        return ddpm_update(eps_fn, schedule, ts, rngs, variance=options.variance, clip_x0=clip)
    if options.sampler == "dpm++2m":
        return dpmpp_2m_update(eps_fn, schedule, ts, clip_x0=clip)
    if options.sampler == "ddim":
        return ddim_update(eps_fn, schedule, ts, rngs, eta=float(options.eta), clip_x0=clip)
    raise ValueError(f"unknown sampler {options.sampler!r}; choose one of ddpm, ddim, dpm++2m")


def solver_steps(eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, rngs: Sequence[torch.Generator],
                 options: SamplerOptions, *, ts: Sequence[int] | None = None, merge: Merge | None = None,
                 jumps: int = 0) -> Iterator[Step]:
    """The generator of options.sampler from x_T (B, C, H, W) at ts[0].

    ts: the kept time steps (default: timesteps_for(T, options.steps, options.spacing), which starts at T-1);
    merge and jumps: run_steps's (inpainting). Guidance and precision are eps_fn's business (guided_eps_fn); rngs
    give the per-step noise of the stochastic samplers, one generator per image.
    """
    ts = list(ts) if ts is not None else timesteps_for(schedule.T, int(options.steps), float(options.spacing))
    renoise = renoise_update(schedule, ts, rngs) if jumps else None
    return run_steps(solver_update(eps_fn, schedule, ts, rngs, options), ts, x_T, merge=merge, renoise=renoise,
                     jumps=jumps)


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

    options.precision "auto" is resolved here, once for the whole batch (resolve_precision). Redraw rounds
    (options.redraws) are not done here: ddpm.selfcheck.redraw_steps wraps this stream (Pipeline does both).
    """
    options.validate(schedule.T, num_classes=null_label)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    check_seed(seed, n)
    options = resolve_precision(options, n, conditional=labels is not None and null_label is not None,
                                device=torch.device(device))
    y = labels.to(device) if labels is not None else None
    seeds = [int(seed) + i for i in range(n)]
    return draw_steps(model, schedule, seeds, y, options, null_label, image_shape, torch.device(device))


def network_batch(n: int, options: SamplerOptions, *, conditional: bool) -> int:
    """Rows per network call for n images: guidance runs the conditional and unconditional halves in one batch."""
    guided = options.class_cfg is not None or options.cfg not in (0.0, 1.0)
    return 2 * n if conditional and guided else n


def resolve_precision(options: SamplerOptions, n: int, *, conditional: bool,
                      device: torch.device = torch.device("cpu")) -> SamplerOptions:
    """options with precision "auto" replaced by what ddpm.device.choose_precision picks for this batch."""
    if options.precision != "auto":
        return options
    precision, _ = choose_precision("auto", network_batch(n, options, conditional=conditional), device)
    return options.replace(precision=precision)


def options_eps_fn(model: torch.nn.Module, schedule: NoiseSchedule, y: torch.Tensor | None, options: SamplerOptions,
                   null_label: int | None, device: torch.device) -> EpsFn:
    """The guided noise prediction for labels y (B,) at options' guidance (cfg or class_cfg, interval, precision)."""
    if options.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be resolved to fp32 or bf16 here, got {options.precision!r}")
    cfg: float | torch.Tensor = float(options.cfg)
    if options.class_cfg is not None:
        if y is None:
            raise ValueError("class_cfg needs a class-conditional model and labels")
        cfg = torch.tensor([float(w) for w in options.class_cfg], device=device)[y]
    return guided_eps_fn(model, y, cfg=cfg, null_label=null_label, T=schedule.T,
                         guidance_interval=options.guidance_interval, precision=options.precision)


def cpu_steps(steps: Iterator[Step], *, draw: int = 0) -> Iterator[Step]:
    """The same Steps on the CPU, tagged with `draw`, the final image clamped to [-1, 1]."""
    for step in steps:
        x_t = step.x_t.clamp(-1.0, 1.0) if step.is_last else step.x_t
        yield Step(step.index, step.num_steps, step.t, x_t.cpu(), step.x0_pred.cpu(), draw)


def draw_steps(model: torch.nn.Module, schedule: NoiseSchedule, seeds: Sequence[int], y: torch.Tensor | None,
               options: SamplerOptions, null_label: int | None, image_shape: tuple[int, int, int],
               device: torch.device, *, draw: int = 0) -> Iterator[Step]:
    """One pass of the sampler over the images with these seeds (image i: a generator seeded seeds[i]).

    Every Step is on the CPU, tagged with `draw`; the final image is clamped to [-1, 1].
    """
    eps_fn = options_eps_fn(model, schedule, y, options, null_label, device)
    rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x_T = randn_per_image(rngs, image_shape, device)
    return cpu_steps(solver_steps(eps_fn, schedule, x_T, rngs, options), draw=draw)


def run_to_end(steps: Iterator[Step]) -> torch.Tensor:
    """Consume a sampler generator; return the final x_0, (B, C, H, W) in [-1, 1]."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the sampler yielded no steps")
    return last.x_t
