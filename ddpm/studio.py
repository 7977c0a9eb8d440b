"""The requests behind the app (no gradio here): labels, the controls' starting settings, checking a request as a
browser or an API client sends it, the guidance sweep, and the forward-process views.

A request's settings are one ddpm.SamplerOptions (the checkpoint's recommendation with the controls' values), so the
app samples exactly what `pipe.stream(labels, seed=..., options=request.options)` samples. Every check raises
ValueError naming the bad value and the allowed range; the app turns it into gr.Error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .device import choose_precision
from .edit import Edit
from .frames import frames_by_log_snr
from .options import SamplerOptions, parse_setting
from .pipeline import Pipeline
from .guidance import guided_eps_fn
from .samplers import Step, network_batch, randn_per_image, run_to_end, solver_steps, timesteps_for
from .schedule import NoiseSchedule

IMAGE_COUNTS = (1, 4, 9, 16)
SEED_MAX = 2**32 - 1  # seeds a browser can hold exactly; images use seed .. seed + n - 1
CFG_MAX = 10.0  # the CFG slider's end; a larger recommended scale starts the slider here
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
LABEL_SEP = " · "


# -- labels ----------------------------------------------------------------------------------------
def label_choices(pipe: Pipeline) -> list[str]:
    """The class labels as shown to a person: "7 · Sneaker"; [] for an unconditional model."""
    if not pipe.conditional:
        return []
    return [f"{i}{LABEL_SEP}{name}" if name != str(i) else name for i, name in enumerate(pipe.label_names)]


def parse_label(pipe: Pipeline, value: object) -> int:
    """A class index from "7 · Sneaker", "Sneaker", "7" or 7."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*·.*", value)
        if m:
            value = m.group(1)
    if value is None or isinstance(value, (list, dict)):
        n = pipe.config.model.num_classes
        raise ValueError(f"label {value!r} is not a class; use a class index 0..{n - 1} or a class name")
    return pipe.label_index(value)  # type: ignore[arg-type]


# parse_label's rule in the browser: (label, {"names", "scales"} or null, cfg) -> the CFG slider's new value. It runs
# when the class changes, so that a Generate clicked right after it already sees the class's scale (a server round
# trip could arrive after the click): "7 · Sneaker" -> "7"; a class name (any case); an index. Anything else leaves
# the slider alone.
CLASS_SCALE_JS = """(label, rec, cfg) => {
  if (!rec || label === null || label === undefined) return cfg;
  let s = String(label).trim();
  const m = s.match(/^(\\d+)\\s*·/);
  if (m) s = m[1];
  let i = rec.names.indexOf(s.toLowerCase());
  if (i < 0 && /^\\d+$/.test(s)) i = parseInt(s, 10);
  return i >= 0 && i < rec.scales.length ? rec.scales[i] : cfg;
}"""


def class_scales(pipe: Pipeline, options: SamplerOptions) -> dict | None:
    """What CLASS_SCALE_JS needs to move the CFG slider to a class's scale: {"names", "scales"}, or None."""
    if options.class_cfg is None or not pipe.conditional:
        return None
    return {"names": [name.lower() for name in pipe.label_names], "scales": list(options.class_cfg)}


# -- requests --------------------------------------------------------------------------------------
def start_options(pipe: Pipeline) -> SamplerOptions:
    """Where the controls start: the checkpoint's recommendation, guidance scales within 0..CFG_MAX, precision auto.

    The rest of a checked recommendation (config.json "sampling" is validated on load) is within the controls'
    ranges already. Precision starts at "auto" whatever the checkpoint says: the right one depends on this machine
    and the batch, not on the model.
    """
    rec = pipe.recommended
    class_cfg = tuple(min(float(w), CFG_MAX) for w in rec.class_cfg) if rec.class_cfg is not None else None
    return rec.replace(cfg=min(float(rec.cfg), CFG_MAX), class_cfg=class_cfg, precision="auto")


@dataclass(frozen=True)
class Request:
    """A checked generation request: how to sample (options, precision resolved) and what (label, seed, count)."""

    options: SamplerOptions  # precision is "fp32" or "bf16"
    label: int | None  # None for an unconditional model
    seed: int
    n_images: int
    precision_reason: str = "chosen"  # why options.precision: "chosen", or what "auto" went by

    def labels(self) -> list[int] | None:
        return None if self.label is None else [self.label] * self.n_images

    def stream(self, pipe: Pipeline, edit: Edit | None = None) -> Iterator[Step]:
        """pipe.stream for this request: one Step per denoising step (and per redraw step); from an input image
        with `edit` (ddpm.edit: image-to-image, inpainting)."""
        n = None if self.label is not None else self.n_images
        return pipe.stream(self.labels(), n=n, seed=self.seed, options=self.options, edit=edit)

    def timesteps(self, T: int) -> list[int]:
        """The time steps this run evaluates the network at, descending."""
        return timesteps_for(T, self.options.steps, self.options.spacing)

    def describe(self) -> str:
        """"seed 0 · label 7 · 16 images · DPM-Solver++(2M), 50 steps ... · bf16 (auto: network batch 32 >= 16)"."""
        parts = [f"seed {self.seed}", f"{self.n_images} image{'s' if self.n_images > 1 else ''}",
                 f"{self.options.describe(conditional=self.label is not None)} ({self.precision_reason})"]
        if self.label is not None:
            parts.insert(1, f"label {self.label}")
        return " · ".join(parts)


def _number(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def parse_integer(name: str, value: object, lo: int, hi: int) -> int:
    """An integer in lo..hi from a raw value (a browser sends 3.0 for 3); ValueError naming name and the range."""
    allowed = f"an integer in {lo}..{hi}"
    v = _number(name, value, allowed)
    if not v.is_integer() or not lo <= v <= hi:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(v)


def parse_request(pipe: Pipeline, *, label: object, seed: object, n_images: object, limit_guidance: object = False,
                  **settings: object) -> Request:
    """Check raw values (as a browser or an API client sends them: numbers may be floats) against the model.

    settings: SamplerOptions fields by name (sampler=, steps=, cfg=, ...), over the checkpoint's recommendation;
    precision may be "auto" (resolved for this batch). limit_guidance: guide only in the recommended interval of
    noise levels (pipe.recommended.guidance_interval; none when it recommends none). An unconditional model has no
    classes: it ignores label and redraws.
    """
    seed_i = parse_integer("seed", seed, 0, SEED_MAX)
    counts = ", ".join(map(str, IMAGE_COUNTS))
    n = _number("number of images", n_images, f"one of {counts}")
    if n not in IMAGE_COUNTS:
        raise ValueError(f"number of images must be one of {counts}, got {n_images!r}")
    values = {name: parse_setting(name, value) for name, value in settings.items()}
    if "cfg" in values and not 0.0 <= values["cfg"] <= CFG_MAX:
        raise ValueError(f"cfg (guidance scale) must be a finite number in 0..{CFG_MAX:g}, got {settings['cfg']!r}")
    if not isinstance(limit_guidance, bool):
        raise ValueError(f"limit_guidance must be true or false, got {limit_guidance!r}")
    label_i = parse_label(pipe, label) if pipe.conditional else None
    if not pipe.conditional:
        values.pop("redraws", None)
    precision = values.pop("precision", "auto")
    interval = pipe.recommended.guidance_interval if limit_guidance and pipe.conditional else None
    options = pipe.options(pipe.recommended, **values, guidance_interval=interval)  # cfg drops class_cfg
    prec, why = choose_precision(precision, network_batch(int(n), options, conditional=pipe.conditional),
                                 pipe.device)
    return Request(options.replace(precision=prec), label_i, seed_i, int(n), why)


# -- guidance explorer -----------------------------------------------------------------------------
@torch.no_grad()
def guidance_sweep(pipe: Pipeline, request: Request, scales: Sequence[float] = GUIDANCE_SCALES, *,
                   limit: Callable[[Iterator[Step]], Iterator[Step]] = iter) -> torch.Tensor:
    """The request's first image (seed, label, sampler, steps, interval) at each CFG scale: (len(scales), C, H, W).

    All scales go through the network in one batch (2 * len(scales) rows where guided) and every row uses the
    generator of request.seed, so row j is the image a 1-image request at cfg = scales[j] gives. The request's
    precision is used as it is (the app chooses it for the sweep's batch). limit: wraps the steps (a server's time
    limit, ddpm.budget.Budget.limit).
    """
    if request.label is None:
        raise ValueError("the guidance explorer needs a class-conditional model")
    k = len(scales)
    rngs = [torch.Generator().manual_seed(request.seed) for _ in range(k)]
    x_T = randn_per_image(rngs, pipe.image_shape, pipe.device)
    y = torch.full((k,), request.label, dtype=torch.long, device=pipe.device)
    opts = request.options
    eps_fn = guided_eps_fn(pipe.model, y, cfg=torch.tensor([float(w) for w in scales], device=pipe.device),
                           null_label=pipe.config.model.num_classes, T=pipe.T,
                           guidance_interval=opts.guidance_interval, precision=opts.precision)  # a w per row
    return run_to_end(limit(solver_steps(eps_fn, pipe.schedule, x_T, rngs, opts))).clamp(-1, 1).cpu()


# -- forward process -------------------------------------------------------------------------------
def forward_noise(x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The fixed eps (x0's shape) that shows q(x_t | x_0), so sliding t changes only the noise level.

    The numbers of torch.randn on a generator seeded `seed`: a sampler's first draw for image 0 of that seed, so
    SDEdit from x_0 with strength t / (T-1) and this seed starts from exactly this x_t ("denoise from here").
    """
    return torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))


def q_sample_at(schedule: NoiseSchedule, x0: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) at one time step t for every row of x0 (B, C, H, W)."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < schedule.T:
        raise ValueError(f"t must be an integer in 0..{schedule.T - 1}, got {t!r}")
    return schedule.q_sample(x0, torch.full((x0.shape[0],), int(t), dtype=torch.long), eps)


def log_snr_timesteps(schedule: NoiseSchedule, k: int) -> list[int]:
    """k time steps, ascending, evenly spaced in (clipped) log-SNR: a strip from clean to noise."""
    descending = list(range(schedule.T - 1, -1, -1))
    ls = [float(schedule.log_snr[t]) for t in descending]  # increasing
    return sorted(descending[i] for i in frames_by_log_snr(ls, k))
