"""The app's seed-interpolation handler, without gradio: k images along the slerp path from seed A's starting noise
to seed B's, streamed as strips, ending with the strip (PNG) and a morph from A to B (MP4, GIF).

    for update in interpolate(registry, model, seed_a=0, seed_b=1, label_a="7 · Sneaker", label_b="5 · Sandal", k=8,
                              runs_dir=Path("/tmp/runs"), steps=30):
        ...   # Live (x_t and x0_pred strips), then one Morph

It checks the request when called (ValueError naming the value and the range); app.py runs it on the torch thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .budget import UNLIMITED, Budget
from .device import choose_precision
from .edit import MAX_FRAMES
from .frames import Recorder, grid_scale
from .handlers import STREAM_RATE, Live, enlarged, new_run_dir, throttled
from .images import make_grid, save_gif_and_mp4, to_pil, to_uint8
from .options import SamplerOptions
from .registry import ModelRegistry
from .samplers import network_batch, timesteps_for
from .studio import SEED_MAX, parse_integer, parse_label, parse_request

SAME_CLASS = "same as A"  # class B's choice that keeps class A along the whole path
STRIP_PX = 1024  # live strips are enlarged to about this width
FRAME_PX = 256  # the morph's frames are enlarged to about this size

INTERPOLATE_EXPLANATION = """
**Seed interpolation.** A seed fixes the starting noise x_T. The k images here start from points on the great circle
between seed A's x_T and seed B's (slerp, spherical interpolation): every point keeps the length of Gaussian noise,
where the straight line between them would pass through noise about 0.7 times too faint, unlike anything the model
saw in training. A deterministic sampler (DPM-Solver++(2M), or DDIM with η = 0) then maps that smooth path of noises
to a smooth path of images, the first and last being seed A's and seed B's own. With two classes the guidance blends,
(1 − λ) ε(A) + λ ε(B), from A's to B's along the way.
"""


@dataclass(frozen=True)
class Morph:
    """The end of an interpolation: the strip of k images (PNG), the morph from A to B (MP4, GIF) and the images."""

    status: str
    run_info: str
    png: Path
    mp4: Path
    gif: Path
    images: torch.Tensor  # (k, C, H, W) in [-1, 1]


def deterministic(options: SamplerOptions) -> tuple[SamplerOptions, str]:
    """options with a deterministic sampler: a stochastic one (DDPM, DDIM with eta > 0) becomes DPM-Solver++(2M) at
    the same steps; and a sentence saying so ("" when nothing changed)."""
    if options.sampler == "ddpm" or (options.sampler == "ddim" and options.eta > 0):
        was = "DDPM" if options.sampler == "ddpm" else f"DDIM with eta {options.eta:g}"
        return (options.replace(sampler="dpm++2m", eta=0.0),
                f"{was} adds fresh noise at every step, which would break the path: switched to DPM-Solver++(2M), "
                f"{options.steps} steps")
    return options, ""


def strip(x: torch.Tensor, px: int = STRIP_PX) -> Image.Image:
    """(k, C, H, W) in [-1, 1] -> one row of the k images, enlarged (nearest) to about px wide."""
    return enlarged(make_grid(to_uint8(x), nrow=x.shape[0]), px)


def interpolate(registry: ModelRegistry, model: object, *, seed_a: object, seed_b: object, label_a: object = None,
                label_b: object = None, k: object = 8, limit_guidance: object = False, runs_dir: Path,
                stream_rate: float = STREAM_RATE, budget: Budget = UNLIMITED, **settings: object
                ) -> Iterator[Live | Morph]:
    """k images from seed A's noise to seed B's (pipe.interpolate): checked now, then Live strips of x_t and x0_pred
    at most stream_rate per second, then one Morph with files in a new runs_dir folder.

    label_b: None or SAME_CLASS keeps label_a. settings: SamplerOptions fields by name (a stochastic sampler is
    switched to DPM-Solver++(2M), and the status says so). budget: the cost is k x steps (x 2 for two classes)."""
    pipe = registry.get(model)
    a = parse_integer("seed A", seed_a, 0, SEED_MAX)
    b = parse_integer("seed B", seed_b, 0, SEED_MAX)
    k = parse_integer("k (images along the path)", k, 2, MAX_FRAMES)
    precision = settings.pop("precision", "auto")
    request = parse_request(pipe, label=label_a, seed=a, n_images=1, limit_guidance=limit_guidance,
                            **{**settings, "redraws": 0, "precision": "fp32"})
    labels = None
    if request.label is not None:
        lb = request.label if label_b is None or label_b == SAME_CLASS else parse_label(pipe, label_b)
        labels = (request.label, lb)
    options, switched = deterministic(request.options)
    passes = 2 if labels is not None and labels[0] != labels[1] else 1  # two classes: two guided evaluations
    budget.check_request(k, options.steps, passes=passes)
    prec, why = choose_precision(precision, passes * network_batch(k, options, conditional=labels is not None),
                                 pipe.device)
    options = options.replace(precision=prec)
    steps = budget.limit(pipe.interpolate(a, b, k=k, labels=labels, options=options))
    names = [] if labels is None else [pipe.label_names[j] for j in dict.fromkeys(labels)]
    classes = f" · {' → '.join(names)}" if names else ""
    about = f"seeds {a} → {b} · {k} images{classes}"
    info = f"{about} · {options.describe(conditional=labels is not None)} ({why})"

    def updates() -> Iterator[Live | Morph]:
        rec = Recorder(pipe.schedule, timesteps_for(pipe.T, options.steps, options.spacing), max_frames=2)
        t0 = time.perf_counter()
        yield Live(f"Sampling… {about}" + (f" · {switched}" if switched else ""))
        for step, show in throttled(steps, rec, stream_rate):
            if show:
                yield Live(f"**Step {step.index + 1} / {step.num_steps}** · t = {step.t} · {about} · "
                           f"{time.perf_counter() - t0:.1f} s", strip(step.x_t), strip(step.x0_pred))
        sample_s = time.perf_counter() - t0
        out = new_run_dir(runs_dir)
        name = f"interpolate_seed{a}_seed{b}"
        png = out / f"{name}.png"
        strip(step.x_t).save(png)
        images = to_uint8(step.x_t)
        frames = [to_pil(img, scale=grid_scale(img.shape[1], FRAME_PX)) for img in images]
        fps = min(12.0, max(3.0, k / 2))  # 8 images: 2 s from A to B
        gif, mp4 = save_gif_and_mp4(frames, out / name, fps=fps)
        yield Morph(f"**Done:** {k} images, {step.num_steps} steps in {sample_s:.2f} s · {about}"
                    + (f" · {switched}" if switched else ""), f"{info} · sampling {sample_s:.2f} s", png, mp4, gif,
                    step.x_t)

    return updates()
