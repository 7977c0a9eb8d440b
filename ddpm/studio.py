"""The logic behind the app (no gradio here): checking run settings, choosing precision, the guidance
sweep, the forward-process views, example images, and a small shared cache of loaded models.

Every check raises ValueError naming the bad value and the allowed range; the app turns it into gr.Error.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CONFIG_NAME, FORMAT
from .frames import frames_by_log_snr
from .pipeline import Pipeline, load
from .samplers import (
    MAX_REDRAWS,
    MAX_SPACING,
    SAMPLER_NAMES,
    SAMPLERS,
    SamplerOptions,
    check_spacing,
    guided_at,
    randn_per_image,
    run_to_end,
    solver_steps,
    timesteps_for,
)
from .schedule import NoiseSchedule
from .training import PRECISION_CHOICES, bf16_supported

IMAGE_COUNTS = (1, 4, 9, 16)
SEED_MAX = 2**32 - 1  # seeds a browser can hold exactly; images use seed .. seed + n - 1
CFG_MAX = 10.0
AUTO_BF16_MIN_BATCH = 16  # below this, bf16 autocast saves little and costs a cast per layer
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


# -- run settings ----------------------------------------------------------------------------------
def _number(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    allowed = f"an integer in {lo}..{hi}"
    v = _number(name, value, allowed)
    if not v.is_integer() or not lo <= v <= hi:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(v)


@functools.cache
def bf16_available() -> bool:
    """Whether bf16 autocast works on this CPU (checked once)."""
    return bf16_supported(torch.device("cpu"))


def network_batch(n_images: int, cfg: float, conditional: bool) -> int:
    """Images per network call: CFG runs the conditional and unconditional halves in one batch."""
    return 2 * n_images if conditional and cfg not in (0.0, 1.0) else n_images


def choose_precision(choice: str, batch: int) -> tuple[str, str]:
    """(precision, why) for a precision choice; "auto" = bf16 for a network batch >= 16 where supported."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if choice == "bf16":
        if not bf16_available():
            raise ValueError("precision 'bf16' is not supported on this CPU; choose auto or fp32")
        return "bf16", "chosen"
    if choice == "fp32":
        return "fp32", "chosen"
    if batch < AUTO_BF16_MIN_BATCH:
        return "fp32", f"auto: network batch {batch} < {AUTO_BF16_MIN_BATCH}"
    if not bf16_available():
        return "fp32", "auto: bf16 not supported here"
    return "bf16", f"auto: network batch {batch} >= {AUTO_BF16_MIN_BATCH}"


@dataclass(frozen=True)
class RunSettings:
    """A checked generation request. label is None for an unconditional model."""

    label: int | None
    cfg: float
    steps: int
    seed: int
    n_images: int
    sampler: str
    eta: float
    precision: str  # resolved: "fp32" or "bf16"
    precision_reason: str
    guidance_interval: tuple[float, float] | None = None  # CFG only for t/T in [lo, hi] (w = 1 elsewhere)
    spacing: float = 1.0  # time-step spacing power (1 = even steps in t)
    redraws: int = 0  # rounds of redrawing the images the model reads as another class (ddpm.selfcheck)

    def stream_kwargs(self) -> dict:
        """Keyword arguments for Pipeline.stream."""
        return dict(seed=self.seed, sampler=self.sampler, steps=self.steps, cfg=self.cfg, eta=self.eta,
                    precision=self.precision, guidance_interval=self.guidance_interval, spacing=self.spacing,
                    redraws=self.redraws)

    def timesteps(self, T: int) -> list[int]:
        """The time steps this run evaluates the network at, descending."""
        return timesteps_for(T, self.steps, self.spacing)

    def labels(self) -> list[int] | None:
        return None if self.label is None else [self.label] * self.n_images

    def describe(self) -> str:
        sampler = f"DDIM (eta {self.eta:g})" if self.sampler == "ddim" else SAMPLER_NAMES[self.sampler]
        parts = [f"seed {self.seed}", f"{self.n_images} image{'s' if self.n_images > 1 else ''}",
                 f"{sampler}, {self.steps} steps" + (f" (spacing {self.spacing:g})" if self.spacing != 1.0 else "")]
        if self.label is not None:
            parts.insert(1, f"label {self.label}")
            parts.append(f"CFG {self.cfg:g}" + (" for t/T in {:g}..{:g}".format(*self.guidance_interval)
                                                if self.guidance_interval else ""))
            if self.redraws:
                parts.append(f"up to {self.redraws} redraw round{'s' if self.redraws > 1 else ''}")
        parts.append(f"{self.precision} ({self.precision_reason})")
        return " · ".join(parts)


def parse_run(pipe: Pipeline, *, label: object, cfg: object, steps: object, seed: object, n_images: object,
              sampler: object, eta: object = 0.0, precision: object = "auto",
              limit_guidance: object = False, spacing: object = 1.0, redraws: object = 0) -> RunSettings:
    """Check raw request values (as a browser or an API client sends them) against the model.

    limit_guidance: apply CFG only in the checkpoint's recommended interval of noise levels (Pipeline.guidance_interval);
    no effect for a model that recommends none. redraws: rounds of drawing again the images the model itself reads
    as another class (0..MAX_REDRAWS); an unconditional model has no classes to check, so it ignores them.
    """
    T = pipe.T
    steps_i = _integer("steps", steps, 1, T)
    seed_i = _integer("seed", seed, 0, SEED_MAX)
    n = _number("number of images", n_images, f"one of {', '.join(map(str, IMAGE_COUNTS))}")
    if n not in IMAGE_COUNTS:
        raise ValueError(f"number of images must be one of {', '.join(map(str, IMAGE_COUNTS))}, got {n_images!r}")
    cfg_f = _number("cfg (guidance scale)", cfg, f"a finite number in 0..{CFG_MAX:g}")
    if not 0.0 <= cfg_f <= CFG_MAX:
        raise ValueError(f"cfg (guidance scale) must be a finite number in 0..{CFG_MAX:g}, got {cfg!r}")
    if not isinstance(sampler, str) or sampler.lower() not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    eta_f = _number("eta", eta, "a number in 0..1")
    if not 0.0 <= eta_f <= 1.0:
        raise ValueError(f"eta must be a number in 0..1, got {eta!r}")
    spacing_f = _number("spacing", spacing, f"a number in 1..{MAX_SPACING:g}")
    check_spacing(spacing_f)
    redraws_i = _integer("redraws", redraws, 0, MAX_REDRAWS) if pipe.conditional else 0
    label_i = parse_label(pipe, label) if pipe.conditional else None
    if not isinstance(precision, str):
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if not isinstance(limit_guidance, bool):
        raise ValueError(f"limit_guidance must be true or false, got {limit_guidance!r}")
    prec, why = choose_precision(precision, network_batch(int(n), cfg_f, pipe.conditional))
    interval = pipe.guidance_interval if limit_guidance else None
    return RunSettings(label_i, cfg_f, steps_i, seed_i, int(n), sampler.lower(), eta_f, prec, why, interval, spacing_f,
                       redraws_i)


# -- guidance explorer -----------------------------------------------------------------------------
@torch.no_grad()
def guidance_sweep(pipe: Pipeline, run: RunSettings, scales: Sequence[float] = GUIDANCE_SCALES) -> torch.Tensor:
    """The first image of `run` (seed, label, sampler, steps) at each CFG scale: (len(scales), C, H, W) in [-1, 1].

    All scales go through the network in one batch (cond and uncond halves, 2 * len(scales) rows) and every
    row uses the generator of `run.seed`, so row j is the image a 1-image run at cfg = scales[j] gives
    (with run.guidance_interval, every row is unguided, w = 1, outside the interval, as in that run).
    """
    if run.label is None:
        raise ValueError("the guidance explorer needs a class-conditional model")
    k = len(scales)
    rngs = [torch.Generator().manual_seed(run.seed) for _ in range(k)]
    x_T = randn_per_image(rngs, pipe.image_shape, pipe.device)
    w = torch.tensor([float(s) for s in scales], device=pipe.device).view(-1, 1, 1, 1)  # (k, 1, 1, 1)
    y = torch.full((k,), run.label, dtype=torch.long, device=pipe.device)
    null = torch.full_like(y, pipe.config.model.num_classes)
    autocast = run.precision == "bf16"
    interval = run.guidance_interval

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            if not guided_at(int(t[0]), pipe.T, interval):
                return pipe.model(x, t, y).float()  # outside the interval every row is plain conditional
            eps = pipe.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).float()
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + w * (eps_cond - eps_uncond)  # per-row guidance scale

    options = SamplerOptions(sampler=run.sampler, steps=run.steps, eta=run.eta, spacing=run.spacing)
    return run_to_end(solver_steps(eps_fn, pipe.schedule, x_T, rngs, options)).clamp(-1, 1).cpu()


# -- forward process -------------------------------------------------------------------------------
def image_to_model(image: np.ndarray, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """A uint8 picture (H, W), (H, W, C) of any size -> (1, C, S, S) in [-1, 1] at the model's size."""
    from .data import fit_images, to_model_range

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 1|3|4), got {a.shape}")
    a = a[..., :3]
    x = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)[None]  # (1, C, H, W)
    c, s = image_shape[0], image_shape[1]
    h, w = x.shape[-2:]
    m = min(h, w)
    x = x[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]  # centre square
    return to_model_range(fit_images(x, size=s, channels=c))


def forward_noise(x0: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The fixed eps used to show q(x_t | x_0), so sliding t changes only the noise level."""
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


# -- example images --------------------------------------------------------------------------------
def example_name(stem: str) -> str:
    """"7_Sneaker" -> "7 · Sneaker"; "Ankle_boot" stays readable as "Ankle boot"."""
    m = re.fullmatch(r"(\d+)_(.+)", stem)
    return f"{m.group(1)}{LABEL_SEP}{m.group(2).replace('_', ' ')}" if m else stem.replace("_", " ")


def load_examples(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 (H, W, C)) for every PNG in folder/examples, sorted by file name; [] when absent."""
    from PIL import Image

    ex = Path(folder) / "examples"
    out = []
    for p in sorted(ex.glob("*.png")) if ex.is_dir() else []:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB" if im.mode in ("RGB", "RGBA", "P") else "L"))
        out.append((example_name(p.stem), a if a.ndim == 3 else a[..., None]))
    return out


def generated_examples(pipe: Pipeline, *, steps: int = 20, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """One sample per class (or four for an unconditional model), for models shipped without examples."""
    from .images import to_uint8

    steps = min(steps, pipe.T)
    if pipe.conditional:
        names = label_choices(pipe)
        x = pipe.sample(labels=list(range(len(names))), seed=seed, steps=steps, cfg=2.0)
        labels = [f"{name} (generated)" for name in names]
    else:
        x = pipe.sample(n=4, seed=seed, steps=steps)
        labels = [f"sample {i + 1} (generated)" for i in range(4)]
    return list(zip(labels, to_uint8(x)))


# -- models ----------------------------------------------------------------------------------------
def local_checkpoints(root: str | Path = "checkpoints") -> list[str]:
    """Sub-folders of root that hold a diffusion checkpoint's config.json, sorted.

    A folder whose config.json declares another format (the evaluation classifiers shipped beside the models)
    is left out; one whose config.json cannot be read stays in, so that the app reports why it fails to load.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir()
                  if p.is_dir() and (p / CONFIG_NAME).is_file() and _declared_format(p / CONFIG_NAME) in (None, FORMAT))


def _declared_format(path: Path) -> str | None:
    """The "format" a config.json declares, or None if it declares none or cannot be read."""
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d.get("format") if isinstance(d, dict) and isinstance(d.get("format"), str) else None


class ModelRegistry:
    """The checkpoints a server offers (local folders, Hub ids) and the last few loaded, shared by all users.

    Only sources listed here can be loaded: a request naming anything else is refused.
    """

    def __init__(self, sources: Sequence[str], *, cache_size: int = 2) -> None:
        self.sources = list(dict.fromkeys(str(s) for s in sources))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Pipeline] = OrderedDict()
        self._examples: dict[str, list[tuple[str, np.ndarray]]] = {}
        self._lock = threading.Lock()

    def get(self, source: object) -> Pipeline:
        """The loaded pipeline of a listed source (ddpm.load, cached). Raises ValueError / CheckpointError."""
        if not isinstance(source, str) or source not in self.sources:
            raise ValueError(f"unknown model {source!r}; choose one of {', '.join(self.sources)}")
        with self._lock:
            if source in self._cache:
                self._cache.move_to_end(source)
                return self._cache[source]
            pipe = load(source)
            self._cache[source] = pipe
            while len(self._cache) > self.cache_size:
                old, _ = self._cache.popitem(last=False)
                self._examples.pop(old, None)
            return pipe

    def first_loadable(self, preferred: Sequence[str]) -> tuple[str, Pipeline, dict[str, str]]:
        """The first of `preferred` (then of all sources) that loads, and {source: error} for those that failed.

        Sources that failed are dropped from the list. Raises ValueError when none loads.
        """
        failures: dict[str, str] = {}
        for source in list(dict.fromkeys([*preferred, *self.sources])):
            try:
                pipe = self.get(source)
            except (ValueError, OSError) as e:
                failures[source] = str(e)
                continue
            self.sources = [s for s in self.sources if s not in failures]
            return source, pipe, failures
        raise ValueError("no model could be loaded: " + "; ".join(f"{s}: {e}" for s, e in failures.items()))

    def examples(self, source: str) -> list[tuple[str, np.ndarray]]:
        """The model's shipped example images (folder/examples/*.png), else generated ones; cached."""
        pipe = self.get(source)
        with self._lock:
            if source not in self._examples:
                from .hub import resolve_checkpoint

                try:
                    shipped = load_examples(resolve_checkpoint(source))
                except (ValueError, OSError):
                    shipped = []
                self._examples[source] = shipped or generated_examples(pipe)
            return self._examples[source]
