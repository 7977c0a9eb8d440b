"""Start from an image: image-to-image (SDEdit), inpainting (RePaint) and seed interpolation, on the same samplers.

Image-to-image (Meng et al. 2022, "SDEdit"): the input x_0 is noised to t0 = strength (T-1) by the forward
process, x_t0 = sqrt(alpha_bar_t0) x_0 + sqrt(1 - alpha_bar_t0) eps (q(x_t0 | x_0), eps the run's own starting
noise), and the sampler runs from there on round(strength x steps) kept steps, spaced from t0 to 0 as a full run
is from T-1. strength 0 returns the input; strength 1 is plain sampling from the same noise.

Inpainting (Lugmayr et al. 2022, "RePaint"): after every step, to level s, the known region (mask False) is
replaced by the input noised to s, sqrt(alpha_bar_s) x_0 + sqrt(1 - alpha_bar_s) z, so the model only fills the
masked region and does so in agreement with the rest; the final image keeps the known pixels exactly. `jumps`
resamples every step that many more times (noise back one step, step again), RePaint's r.

Seed interpolation: spherical interpolation (slerp) of two starting noises keeps every intermediate at the norm of
Gaussian noise (a straight line between two of them passes through noise ~0.7 times too small), so each point is
a plausible x_T; a deterministic sampler then maps the path to a smooth path of images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .guidance import mixed_eps_fn
from .options import SamplerOptions
from .samplers import Step, check_seed, cpu_steps, options_eps_fn, randn_per_image, solver_steps, timesteps_for
from .schedule import NoiseSchedule

KNOWN_NOISE_SEED = 0x5EED_0F_C0FFEE  # the known region's noise: image i's second generator, seeded seed_i ^ this
MAX_JUMPS = 10  # RePaint resampling rounds per step
MAX_FRAMES = 64  # images along an interpolation path


@dataclass(frozen=True)
class Edit:
    """What a run starts from besides noise: an input image, how much of it to redraw, and what to keep.

    init: (1 or B, C, H, W) in [-1, 1], the input image(s) (ddpm.images.load_image brings any image there).
    strength: in [0, 1], the start time t0 = round(strength (T-1)); 1 ignores init outside the mask (plain noise).
    mask: (1 or B, 1, H, W) bool, True where the model generates (inpainting), False where init is kept; None
    generates everywhere (image-to-image). jumps: RePaint resampling rounds per step (needs a mask).
    notes: what was done to bring the input to the model's size and channels, for the user.
    """

    init: torch.Tensor
    strength: float = 1.0
    mask: torch.Tensor | None = None
    jumps: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)

    def validate(self, image_shape: tuple[int, int, int], n: int) -> None:
        """Raise ValueError naming what is wrong, for n images of shape image_shape (C, H, W)."""
        c, h, w = image_shape
        x = self.init
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w) or x.shape[0] not in (1, n):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the input image must be a tensor (1 or {n}, {c}, {h}, {w}) in [-1, 1] for this model, "
                             f"got {got}; ddpm.images.load_image converts any image")
        if not torch.isfinite(x).all() or float(x.min()) < -1.0 or float(x.max()) > 1.0:
            raise ValueError("the input image must hold finite values in [-1, 1]")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 <= s <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1] (0 keeps the input, 1 redraws it from noise), "
                             f"got {s!r}")
        m = self.mask
        if m is not None and (not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 4
                              or tuple(m.shape[1:]) != (1, h, w) or m.shape[0] not in (1, n)):
            got = f"{tuple(m.shape)} {m.dtype}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"the mask must be a bool tensor (1 or {n}, 1, {h}, {w}) matching the model's {w}x{h} "
                             f"images (True = generate), got {got}")
        if isinstance(self.jumps, bool) or not isinstance(self.jumps, int) or not 0 <= self.jumps <= MAX_JUMPS:
            raise ValueError(f"jumps (resampling rounds) must be an integer in 0..{MAX_JUMPS}, got {self.jumps!r}")
        if self.jumps and m is None:
            raise ValueError("jumps (RePaint resampling) need a mask: they harmonise the generated and known regions")

    def start_time(self, T: int) -> int:
        """t0 = round(strength (T-1)), the time step the input is noised to."""
        return int(round(float(self.strength) * (T - 1)))

    def timesteps(self, T: int, options: SamplerOptions) -> list[int]:
        """The kept steps from t0: round(strength x steps) of them (at least 1, at most t0 + 1), spaced like a run's."""
        if self.strength >= 1.0:
            return timesteps_for(T, int(options.steps), float(options.spacing))
        t0 = self.start_time(T)
        steps = min(max(1, round(float(self.strength) * int(options.steps))), t0 + 1)
        return timesteps_for(T, steps, float(options.spacing), start=t0)



def known_rngs(seeds: Sequence[int]) -> list[torch.Generator]:
    """The known region's noise generators: separate from the sampler's, so inpainting with nothing known draws
    exactly the noise of plain sampling."""
    return [torch.Generator().manual_seed(int(s) ^ KNOWN_NOISE_SEED) for s in seeds]


def edit_steps(model: torch.nn.Module, schedule: NoiseSchedule, seeds: Sequence[int], y: torch.Tensor | None,
               options: SamplerOptions, null_label: int | None, image_shape: tuple[int, int, int],
               device: torch.device, edit: Edit) -> Iterator[Step]:
    """The sampler run from the input image (image i: generators seeded seeds[i]); Steps on the CPU.

    With strength 0 no step runs: one Step (t = 0) holds the input itself (inside a mask too: nothing is redrawn).
    """
    edit.validate(image_shape, len(seeds))
    n = len(seeds)
    x0 = edit.init.to(device).float().expand(n, *image_shape)
    if edit.strength <= 0.0:
        x = x0.cpu().clone()
        return iter([Step(0, 1, 0, x, x.clone())])
    rngs = [torch.Generator().manual_seed(int(s)) for s in seeds]
    eps = randn_per_image(rngs, image_shape, device)  # the noise plain sampling starts from
    ts = edit.timesteps(schedule.T, options)
    if edit.strength >= 1.0:
        x_start = eps
    else:
        x_start = schedule.q_sample(x0, torch.full((n,), ts[0], dtype=torch.long), eps)  # q(x_t0 | x_0)
    merge = None
    if edit.mask is not None:
        merge = known_merge(schedule, ts, x0, edit.mask.to(device).expand(n, 1, *image_shape[1:]), known_rngs(seeds))
    eps_fn = options_eps_fn(model, schedule, y, options, null_label, device)
    return cpu_steps(solver_steps(eps_fn, schedule, x_start, rngs, options, ts=ts, merge=merge, jumps=edit.jumps))


def known_merge(schedule: NoiseSchedule, ts: Sequence[int], x0: torch.Tensor, generate: torch.Tensor,
                rngs: Sequence[torch.Generator]):
    """RePaint's merge after step i: where `generate` is False, x is the input noised to ts[i+1] (after the last
    step: the input itself, bit for bit)."""
    alpha_bar = schedule.alpha_bar.double()
    shape = tuple(x0.shape[1:])

    def merge(i: int, x: torch.Tensor) -> torch.Tensor:
        if i + 1 == len(ts):
            return torch.where(generate, x, x0)
        ab = float(alpha_bar[ts[i + 1]])
        known = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * randn_per_image(rngs, shape, x.device)
        return torch.where(generate, x, known)

    return merge


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between a and b (same shape; each row flattened is one vector), at lam in [0, 1].

    slerp = sin((1 - lam) theta) / sin(theta) a + sin(lam theta) / sin(theta) b, theta the angle between a and b;
    lam 0 gives a and lam 1 gives b exactly. Parallel vectors fall back to the straight line.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double().flatten(1), b.double().flatten(1)
    lam = torch.as_tensor(lam, dtype=torch.float64).reshape(-1, 1)
    cos = (a64 * b64).sum(1, keepdim=True) / (a64.norm(dim=1, keepdim=True) * b64.norm(dim=1, keepdim=True))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    straight = sin.abs() < 1e-6
    wa = torch.where(straight, 1.0 - lam, torch.sin((1.0 - lam) * theta) / torch.where(straight, 1.0, sin))
    wb = torch.where(straight, lam, torch.sin(lam * theta) / torch.where(straight, 1.0, sin))
    out = wa * a64 + wb * b64
    out = torch.where(lam == 0.0, a64, torch.where(lam == 1.0, b64, out))
    return out.to(a.dtype).reshape(a.shape)


def interpolation_noise(seed_a: int, seed_b: int, k: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """k starting noises (k, C, H, W) along the great circle from seed_a's x_T to seed_b's (ends included)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_FRAMES:
        raise ValueError(f"k (images along the path) must be an integer in 2..{MAX_FRAMES}, got {k!r}")
    for s in (seed_a, seed_b):
        check_seed(s, 1)
    a = torch.randn(image_shape, generator=torch.Generator().manual_seed(seed_a)).unsqueeze(0)
    b = torch.randn(image_shape, generator=torch.Generator().manual_seed(seed_b)).unsqueeze(0)
    lam = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    return slerp(a.expand(k, *image_shape), b.expand(k, *image_shape), lam)



def interpolate_steps(model: torch.nn.Module, schedule: NoiseSchedule, seed_a: int, seed_b: int, k: int,
                      labels: tuple[torch.Tensor, torch.Tensor] | None, options: SamplerOptions,
                      null_label: int | None, image_shape: tuple[int, int, int], device: torch.device
                      ) -> Iterator[Step]:
    """Sample the k images of the slerp path from seed_a's noise to seed_b's, as one batch; Steps on the CPU.

    labels: (class of A, class of B), each a (1,) long tensor, or None for an unconditional model; with two
    classes image j is guided by (1 - lam_j) eps(x, A) + lam_j eps(x, B), lam_j = j / (k - 1). The sampler must
    be deterministic (DPM-Solver++(2M), or DDIM with eta 0): fresh noise at every step would break the path.
    """
    if options.sampler == "ddpm" or (options.sampler == "ddim" and options.eta > 0):
        raise ValueError("interpolation needs a deterministic sampler: dpm++2m, or ddim with eta 0 (got "
                         f"{options.sampler}{' eta ' + str(options.eta) if options.sampler == 'ddim' else ''})")
    x_T = interpolation_noise(seed_a, seed_b, k, image_shape).to(device)
    if labels is None:
        eps_fn = options_eps_fn(model, schedule, None, options, null_label, device)
    else:
        y_a, y_b = (lab.to(device).expand(k) for lab in labels)
        eps_fn = options_eps_fn(model, schedule, y_a, options, null_label, device)
        if not torch.equal(y_a, y_b):
            eps_b = options_eps_fn(model, schedule, y_b, options, null_label, device)
            eps_fn = mixed_eps_fn(eps_fn, eps_b, torch.linspace(0.0, 1.0, k))
    return cpu_steps(solver_steps(eps_fn, schedule, x_T, [], options))
