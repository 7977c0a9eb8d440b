"""The model checks its own samples: a class-conditional diffusion model as a classifier, and the redraw rule.

A conditional eps-model scores how well each class explains an image x0 (Li et al. 2023, "Your diffusion model is
secretly a zero-shot classifier"; Clark & Jaini 2023): noise x0 to a few time steps t_k with known noise eps_k,

    x_k = sqrt(alpha_bar_{t_k}) x0 + sqrt(1 - alpha_bar_{t_k}) eps_k,

and compare the denoising errors e_c = mean_k ||eps_theta(x_k, t_k, c) - eps_k||^2 / D across classes c (D = pixels
per image; the same x_k for every class, so the comparison is paired). A lower e_c is a higher ELBO for class c. An
image sampled for class y whose own class does not explain it best, relative margin

    m = (min_{c != y} e_c - e_y) / e_y <= threshold,

is one the model itself reads as another class: `redraw_steps` (SamplerOptions.redraws) draws it again from
fresh noise, keeps whichever draw has the larger margin, and stops once every image passes or the rounds run out.
Rejection rather than stronger guidance: it replaces the few ambiguous samples of a class instead of pushing every
sample towards the class's prototype. On the shipped Fashion-MNIST model it buys class accuracy at about the price in
variety (FD) that a larger guidance scale pays (docs/models/fashion-mnist.md), for 1.5-2x the sampling time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .options import SamplerOptions
from .samplers import Step, draw_steps
from .schedule import NoiseSchedule

# where the check noises the image, as fractions of T: mid to high noise, where the class decides the prediction
# (with the cosine schedule, t/T = 0.3 keeps most of the image, 0.9 little but its coarse shape)
CHECK_FRACTIONS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
# redraw round r of image i uses the seed (seed_i + r * REDRAW_SEED_STRIDE) mod 2^63: far from any evaluation seed's
# images (evaluation seed s samples seeds s*N .. s*N + N - 1)
REDRAW_SEED_STRIDE = 2**40 + 1
# the check noise of the draw with sampling seed s comes from seed (s + CHECK_SEED_OFFSET) mod 2^63, not from s
# itself, whose first normal draws are that image's x_T
CHECK_SEED_OFFSET = 2**62 + 7


def check_timesteps(T: int, fractions: Sequence[float] = CHECK_FRACTIONS) -> list[int]:
    """The time steps the check noises to: round(f (T - 1)) for each fraction f in (0, 1]."""
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"check fractions must be numbers in (0, 1], got {tuple(fractions)!r}")
    return [int(round(f * (T - 1))) for f in fractions]


def check_noise(seeds: Sequence[int], k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(k, N, *shape) standard normal noise; image i's comes from its own generator seeded seeds[i], so an image
    gets the same check whatever batch it is in."""
    per_image = [torch.randn((k, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(per_image, dim=1)


@torch.no_grad()
def class_errors(model: torch.nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, *, num_classes: int,
                 seeds: Sequence[int], timesteps: Sequence[int] | None = None, precision: str = "fp32",
                 batch_size: int = 256) -> torch.Tensor:
    """Mean denoising error of every class for every image: (N, num_classes), float32.

    x0: (N, C, H, W) in [-1, 1]; seeds: one per image, for its check noise; timesteps: default check_timesteps(T).
    Costs len(timesteps) * num_classes network calls per image.
    """
    if x0.dim() != 4:
        raise ValueError(f"x0 must be (N, C, H, W), got {tuple(x0.shape)}")
    if len(seeds) != len(x0):
        raise ValueError(f"need one seed per image: {len(x0)} images, {len(seeds)} seeds")
    ts = list(timesteps) if timesteps is not None else check_timesteps(schedule.T)
    if not ts or not all(0 <= t < schedule.T for t in ts):
        raise ValueError(f"check time steps must be in 0..{schedule.T - 1}, got {ts!r}")
    device = next(model.parameters()).device
    eps = check_noise(seeds, len(ts), tuple(x0.shape[1:]))  # (K, N, C, H, W)
    x0 = x0.float().cpu()
    errors = torch.zeros(len(x0), num_classes)
    for k, t in enumerate(ts):
        a = schedule.alpha_bar[t].float()
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps[k]
        for start in range(0, len(x0), batch_size):
            xb, eb = x_t[start:start + batch_size].to(device), eps[k, start:start + batch_size].to(device)
            n = len(xb)
            tt = torch.full((n * num_classes,), t, device=device, dtype=torch.long)
            yy = torch.arange(num_classes, device=device).repeat_interleave(n)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(xb.repeat(num_classes, 1, 1, 1), tt, yy).float()
            err = (out - eb.repeat(num_classes, 1, 1, 1)).pow(2).flatten(1).mean(1)  # (num_classes * n,)
            errors[start:start + n] += err.view(num_classes, n).t().cpu()
    return errors / len(ts)


def relative_margin(errors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,): (min over the other classes of e_c - e_y) / e_y for errors (N, num_classes) and labels y (N,).
    Positive when the requested class explains the image best."""
    if errors.dim() != 2 or errors.shape[1] < 2 or labels.shape != (errors.shape[0],):
        raise ValueError(f"errors must be (N, classes >= 2) and labels (N,), got {tuple(errors.shape)} and "
                         f"{tuple(labels.shape)}")
    idx = torch.arange(len(labels))
    own = errors[idx, labels]
    others = errors.clone()
    others[idx, labels] = float("inf")
    return (others.min(1).values - own) / own.clamp_min(1e-12)


def check_seeds(sampling_seeds: Sequence[int]) -> list[int]:
    """The seeds of the check noise for draws with these sampling seeds."""
    return [(int(s) + CHECK_SEED_OFFSET) % 2**63 for s in sampling_seeds]


def redraw_seeds(seeds: Sequence[int], draw: int) -> list[int]:
    """The seeds of redraw round `draw` (0 = the original draw) for images whose original seeds are `seeds`."""
    return [(int(s) + draw * REDRAW_SEED_STRIDE) % 2**63 for s in seeds]


def redraw_steps(model: torch.nn.Module, schedule: NoiseSchedule, first: Iterator[Step], *, seeds: Sequence[int],
                 labels: torch.Tensor, options: SamplerOptions, num_classes: int, image_shape: tuple[int, int, int],
                 device: torch.device) -> Iterator[Step]:
    """Yield the finished stream `first` (images with these seeds and labels), then up to options.redraws rounds.

    After the first draw the model checks its images; those it reads as another class (relative margin <=
    options.redraw_threshold) are drawn again with the seeds of the round (redraw_seeds) and checked, each image
    keeping the draw with the larger margin. A round yields its steps (Step.draw = r) with the images not being
    redrawn held at their kept values; after the rounds, a last Step holds the kept images.
    options must have a resolved precision (fp32 or bf16), as `first` was sampled with.
    """
    last = None
    for last in first:
        yield last
    if last is None or not options.redraws:
        return
    y = labels.to(device)

    def margins(x0: torch.Tensor, idx: torch.Tensor, draw: int) -> torch.Tensor:
        draw_seeds = redraw_seeds([seeds[i] for i in idx.tolist()], draw)
        errors = class_errors(model, schedule, x0, num_classes=num_classes, seeds=check_seeds(draw_seeds),
                              precision=options.precision)
        return relative_margin(errors, y[idx].cpu())

    final, final_x0 = last.x_t.clone(), last.x0_pred.clone()
    margin = margins(final, torch.arange(len(seeds)), 0)
    redrawn = 0  # the last round that redrew anything
    for draw in range(1, int(options.redraws) + 1):
        bad = (margin <= options.redraw_threshold).nonzero().squeeze(1)
        if not len(bad):
            break
        redrawn = draw
        part = None
        for part in draw_steps(model, schedule, redraw_seeds([seeds[i] for i in bad.tolist()], draw), y[bad],
                               options, num_classes, image_shape, device, draw=draw):
            x_t, x0_pred = final.clone(), final_x0.clone()  # a consumer may keep the tensors it was given
            x_t[bad], x0_pred[bad] = part.x_t, part.x0_pred
            yield Step(part.index, part.num_steps, part.t, x_t, x0_pred, draw)
        new = margins(part.x_t, bad, draw)
        better = new > margin[bad]
        final[bad[better]], final_x0[bad[better]] = part.x_t[better], part.x0_pred[better]
        margin[bad[better]] = new[better]
    if redrawn:  # the kept draw of each image (a redraw that scored worse than the earlier draw is dropped)
        yield Step(last.index, last.num_steps, last.t, final, final_x0, redrawn)
