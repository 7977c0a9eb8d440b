"""The app's handlers, without gradio: each takes the values a page (or an API client) sends and returns plain data.

    for update in generate(registry, model, label="7 · Sneaker", seed=0, n_images=4, runs_dir=Path("/tmp/runs"),
                           cfg=2.5, steps=50, sampler="dpm++2m"):   # any SamplerOptions field by name
        ...   # Live (status, enlarged x_t and x0_pred), then one Finished (files, recorded frames, images)

Bad input raises ValueError naming the value and the allowed range (app.py shows it as gr.Error). Every handler that
samples takes the server's `budget` (ddpm.budget): a request over its cap is refused before anything runs, and a run
longer than its time limit stops with a BudgetError (a ValueError). Every handler that touches a model must run on the
torch thread (ddpm.torch_thread): app.py wraps them so.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .budget import UNLIMITED, Budget
from .device import choose_precision
from .frames import Frame, Recorder, Throttle, grid_scale, to_grid
from .images import load_image, to_pil, to_uint8
from .options import SamplerOptions
from .pipeline import Pipeline
from .plots import schedule_plot
from .registry import ModelRegistry
from .samplers import Step
from .schedule import NoiseSchedule
from .studio import (
    GUIDANCE_SCALES,
    SEED_MAX,
    Request,
    class_scales,
    forward_noise,
    guidance_sweep,
    label_choices,
    log_snr_timesteps,
    parse_integer,
    parse_request,
    q_sample_at,
    start_options,
)

STREAM_RATE = 15.0  # live updates per second at most (the browser lags behind faster generators)
LIVE_PX = 384  # live x_t / x0_pred images are enlarged to about this width
RUN_FILES_TTL_S = 600  # the app's server copies a run's files into its own cache at once; ours go after this
Gallery = list[tuple[Image.Image, str]]  # (image, caption) per item


# the page's explanations (markdown), beside the status lines and captions below
EXPLANATION = """
**xₜ** is the sample at time step t. Sampling starts from pure Gaussian noise at t = T − 1, and every step removes
a little noise until t = 0 leaves an image.

**x₀ prediction.** At every step the network estimates the noise ε in xₜ. Solving xₜ = √ᾱₜ · x₀ + √(1 − ᾱₜ) · ε
for x₀ gives the model's current guess of the final image: a blurry average early on, sharp by the end.

**CFG (classifier-free guidance)** runs the network with and without the class label and pushes further along
the difference: ε = ε_uncond + w · (ε_cond − ε_uncond). w = 0 ignores the label, w = 1 is plain conditional
sampling, a larger w gives more typical but less varied images. A model may recommend guiding only in an
interval of noise levels: at the noisiest steps, where the outline is decided, a little guidance fixes the class
and a lot pulls every sample towards the same few shapes; at the cleanest steps it changes little.

**Steps** is the number of network evaluations. The model learned T noise levels; DDIM jumps over most of them
(about 50 is plenty), DDPM ancestral adds fresh noise at every step and needs more. DPM-Solver++(2M) follows the
same path as DDIM but also uses the previous step's x₀ prediction to take curved steps: the same cost per step,
closer to where many small steps would land.

**Redraw rounds.** When an image is done, the model checks it itself: it noises the image again at several noise
levels and asks which class's prediction explains it best. An image it reads as another class (a "Sneaker" that
looks more like a sandal) is drawn again from new noise, and the trajectory of the redraw is streamed too. Like a
larger CFG scale it trades variety for class fidelity, but it touches only the few ambiguous images instead of
pushing every one towards its class; with two rounds a run takes about twice as long.
"""

EXPLORER_EXPLANATION = ("### Guidance explorer\nThe same seed, class, sampler and steps at CFG "
                        + ", ".join(f"{w:g}" for w in GUIDANCE_SCALES)
                        + ": watch the images get more typical as w grows. With *Guide only for t/T in* ticked, the "
                        "scales differ only inside that interval (small changes); untick it to see guidance at every "
                        "step.")

FORWARD_EXPLANATION = """
Training runs the other way: take a real image x₀ and add Gaussian noise in one jump,
**q(xₜ | x₀) = N(√ᾱₜ · x₀, (1 − ᾱₜ) I)**; the network learns to predict that noise. ᾱₜ is the share of the
image's variance left at step t, and the signal-to-noise ratio is SNRₜ = ᾱₜ / (1 − ᾱₜ). The strip shows xₜ at
steps spaced evenly in log-SNR, where the image visibly fades; the plot compares this model's schedule with the
other one.
"""


def enlarged(grid: np.ndarray, px: int = LIVE_PX) -> Image.Image:
    """A uint8 (H, W, C) grid enlarged nearest-neighbour to about px pixels wide."""
    return to_pil(grid, scale=grid_scale(grid.shape[1], px))


# -- the model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelView:
    """What the page shows for a model: its facts, its classes, and where its controls start."""

    source: str
    note: str  # why this is not the model asked for, or ""
    facts: str  # one line: parameters, schedule, dataset, training steps
    labels: list[str]  # "7 · Sneaker", ...; [] for an unconditional model
    options: SamplerOptions  # the controls' start (studio.start_options)
    T: int
    class_scales: dict | None  # for studio.CLASS_SCALE_JS: {"names", "scales"}, or None (one scale for all)

    @property
    def conditional(self) -> bool:
        return bool(self.labels)

    @property
    def cfg(self) -> float:
        """The CFG slider's start: the first class's scale (the class dropdown starts there)."""
        return self.options.cfg_for(0 if self.conditional else None)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The recommended guidance interval, behind the "guide only in ..." checkbox (None: no checkbox)."""
        return self.options.guidance_interval if self.conditional else None

    @property
    def interval_label(self) -> str:
        if self.interval is None:
            return "Guide only in the recommended interval"
        return "Guide only for t/T in {:g}..{:g}".format(*self.interval)

    @property
    def cfg_info(self) -> str:
        """The CFG slider's note ("" for none: the page must clear the previous model's note)."""
        return "this model recommends a scale per class; picking a class sets its scale" if self.class_scales else ""


def model_facts(pipe: Pipeline) -> str:
    """"`source` · 1.23M-parameter UNet · cosine schedule, T = 1000 · 28px fashion-mnist · trained 30,000 steps"."""
    c = pipe.config
    params = sum(p.numel() for p in pipe.model.parameters())
    trained = c.training.get("steps")
    parts = [f"`{pipe.source}`", f"{params / 1e6:.2f}M-parameter UNet",
             f"{c.schedule.name} schedule, T = {pipe.T}", f"{c.model.image_size}px {c.dataset}"]
    if trained:
        parts.append(f"trained {trained:,} steps")
    if not pipe.conditional:
        parts.append("unconditional")
    return " · ".join(parts)


def model_view(pipe: Pipeline, note: str = "") -> ModelView:
    """The view of a loaded model; note: why it is shown instead of the one asked for."""
    options = start_options(pipe)
    return ModelView(pipe.source, note, model_facts(pipe), label_choices(pipe), options, pipe.T,
                     class_scales(pipe, options))


def select_model(registry: ModelRegistry, model: object, *, fallback: str) -> ModelView:
    """The view of `model`; if it cannot be loaded, the view of `fallback` with a note saying why."""
    try:
        return model_view(registry.get(model))
    except (ValueError, OSError) as e:
        return model_view(registry.get(fallback), f"⚠️ could not load `{model}`: {e}. Using `{fallback}` instead.")


# -- generate ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Live:
    """A streamed update: the status line, and the x_t and x0_pred grids at the model's resolution (the page enlarges
    them, pixelated: a 4x4 grid of 28x28 images is a 122-pixel PNG, ~10x cheaper to encode and send than a 384-pixel
    one; None: keep what is shown)."""

    status: str
    x_t: Image.Image | None = None
    x0_pred: Image.Image | None = None


@dataclass(frozen=True)
class Finished:
    """The end of a run: its files, its recorded frames (for the scrubber) and the final images."""

    status: str
    run_info: str  # the request in words, and the time taken
    png: Path  # the final grid, enlarged
    gif: Path  # the trajectory, x_t | x0_pred
    mp4: Path
    frames: list[Frame]
    images: torch.Tensor  # (B, C, H, W) in [-1, 1]


def new_run_dir(root: Path, *, ttl_s: float = RUN_FILES_TTL_S) -> Path:
    """A fresh folder under root for one run's files; folders older than ttl_s are removed on the way."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if now - old.stat().st_mtime > ttl_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    path = root / uuid.uuid4().hex
    path.mkdir()
    return path


def generate(registry: ModelRegistry, model: object, *, label: object, seed: object, n_images: object,
             limit_guidance: object = False, runs_dir: Path, stream_rate: float = STREAM_RATE,
             budget: Budget = UNLIMITED, **settings: object) -> Iterator[Live | Finished]:
    """Check the request (ValueError now, not at the first next()), then stream the run: Live updates at most
    stream_rate per second (the first and last step always), then one Finished with files in a new runs_dir folder.

    settings: SamplerOptions fields by name, as the page's controls send them (studio.parse_request). budget: its
    cost is images x steps x (1 + redraws)."""
    pipe = registry.get(model)
    request = parse_request(pipe, label=label, seed=seed, n_images=n_images, limit_guidance=limit_guidance,
                            **settings)
    o = request.options
    budget.check_request(request.n_images, o.steps, redraws=o.redraws if request.label is not None else 0)
    name = f"ddpm_seed{request.seed}" + (f"_label{request.label}" if request.label is not None else "")
    return stream_run(budget.limit(request.stream(pipe)), pipe.schedule, request.timesteps(pipe.T), runs_dir=runs_dir,
                      stream_rate=stream_rate, name=name, about=f"seed {request.seed}", info=request.describe(),
                      checking=bool(request.options.redraws))


def throttled(steps: Iterator[Step], rec: Recorder, stream_rate: float) -> Iterator[tuple[Step, bool]]:
    """Every step (recorded in rec) and whether to show it now: at most stream_rate per second, the steps of a plan
    even in log-SNR that fits that rate (timed on the first step), and the first and last step always."""
    throttle, plan, pending = Throttle(stream_rate), None, False
    t0 = time.perf_counter()
    for step in steps:
        rec.add(step)
        if plan is None:  # after the first step: how many frames fit into the run at stream_rate
            plan = rec.stream_plan(int(stream_rate * (time.perf_counter() - t0) * rec.num_steps) + 1)
        pending = pending or step.index in plan
        show = step.is_last or (pending and throttle.ready())
        if show:
            throttle.mark()
            pending = False
        yield step, show


def stream_run(steps: Iterator[Step], schedule: NoiseSchedule, timesteps: Sequence[int], *, runs_dir: Path,
               stream_rate: float, name: str, about: str, info: str, checking: bool = False
               ) -> Iterator[Live | Finished]:
    """Stream a run's Steps (over `timesteps`, descending) as Live updates, then one Finished: the final grid (PNG)
    and the trajectory x_t | x0_pred (GIF, MP4), files `name`.* in a new runs_dir folder. Generate and the edit
    tabs share it.

    about: the status line's tail ("seed 3"); info: the request in words (Finished.run_info); checking: redraw
    checks follow the last step (the status says so).
    """
    rec = Recorder(schedule, timesteps)
    t0 = time.perf_counter()
    yield Live(f"Sampling… {about}")
    for step, show in throttled(steps, rec, stream_rate):
        if show:
            redraw = (f"**Redraw {step.draw}**: the images the model read as another class, again · " if step.draw
                      else "")
            check = " · checking the images…" if step.is_last and checking else ""
            yield Live(f"{redraw}**Step {step.index + 1} / {step.num_steps}** · t = {step.t} · {about} · "
                       f"{time.perf_counter() - t0:.1f} s{check}",
                       to_pil(to_grid(step.x_t)), to_pil(to_grid(step.x0_pred)))
    sample_s = time.perf_counter() - t0
    out = new_run_dir(runs_dir)
    final = to_grid(step.x_t)
    png = out / f"{name}.png"
    to_pil(final, scale=grid_scale(final.shape[1], 512)).save(png)
    gif, mp4 = rec.save_animations(out / name)
    total_s = time.perf_counter() - t0
    rounds = f" · {step.draw} redraw round{'s' if step.draw > 1 else ''}" if step.draw else ""
    yield Finished(f"**Done:** {step.num_steps} step{'s' if step.num_steps > 1 else ''} in {sample_s:.2f} s · "
                   f"{about}{rounds}", f"{info} · sampling {sample_s:.2f} s, files {total_s - sample_s:.2f} s",
                   png, gif, mp4, rec.frames, step.x_t)


def scrub(index: object, recorded: list[Frame]) -> Live:
    """A recorded step of the finished run (no sampling): the x_t and x0_pred it showed, and its caption."""
    if not recorded:
        raise ValueError("nothing recorded yet: press Generate first")
    if isinstance(index, bool) or not isinstance(index, (int, float)) or not 0 <= index <= len(recorded) - 1:
        raise ValueError(f"frame must be a number in 0..{len(recorded) - 1}, got {index!r}")
    f = recorded[int(round(index))]
    return Live(f"Recorded {f.caption}", to_pil(f.x_t), to_pil(f.x0_pred))


# -- the guidance explorer ---------------------------------------------------------------------------
def explore(registry: ModelRegistry, model: object, *, label: object, seed: object, limit_guidance: object = False,
            budget: Budget = UNLIMITED, **settings: object) -> Gallery:
    """The same seed and label at each of GUIDANCE_SCALES, side by side: [(image, "CFG w"), ...].

    settings: SamplerOptions fields by name (not cfg: the sweep sets it). budget: its cost is one image per scale x
    steps."""
    pipe = registry.get(model)
    precision = settings.pop("precision", "auto")
    request = parse_request(pipe, label=label, seed=seed, n_images=1, limit_guidance=limit_guidance,
                            **settings, cfg=0.0, precision="fp32")
    if request.label is None:
        raise ValueError("the guidance explorer needs a class-conditional model")
    prec, _ = choose_precision(precision, 2 * len(GUIDANCE_SCALES), pipe.device)  # the sweep's own batch
    budget.check_request(len(GUIDANCE_SCALES), request.options.steps)
    sweep = Request(request.options.replace(precision=prec), request.label, request.seed, 1)
    grids = to_uint8(guidance_sweep(pipe, sweep, GUIDANCE_SCALES, limit=budget.limit))
    scale = grid_scale(grids.shape[2], 160)
    return [(to_pil(g, scale=scale), f"CFG {w:g}") for g, w in zip(grids, GUIDANCE_SCALES)]


# -- the forward process -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ForwardInput:
    """The forward process's x_0: uint8 (H, W, C) at the model's size, and its enlarged view."""

    x0: np.ndarray
    view: Image.Image


@dataclass(frozen=True)
class ForwardView:
    """q(x_t | x_0) at t (None without an x_0), its numbers in words, a log-SNR strip, and the schedule plot."""

    x_t: Image.Image | None
    text: str
    strip: Gallery | None
    plot: Image.Image


def example_choices(registry: ModelRegistry, model: object) -> list[str]:
    """The names of the model's example images (shipped, else generated)."""
    return [name for name, _ in registry.examples(model)]


def pick_example(registry: ModelRegistry, model: object, name: object) -> ForwardInput | None:
    """The named example as x_0. None for a name that is not one of the model's examples: a stale event (the list
    changes with the model, and the old name's change can arrive after the switch), which changes nothing."""
    for n, image in registry.examples(model):
        if n == name:
            return ForwardInput(image, enlarged(image, 224))
    return None


def upload_x0(registry: ModelRegistry, model: object, image: np.ndarray | None) -> ForwardInput | None:
    """An uploaded picture (uint8, any size) as x_0 at the model's size; None when the upload was cleared."""
    if image is None:
        return None
    pipe = registry.get(model)
    small = to_uint8(load_image(image, pipe.image_shape)[0])[0]
    return ForwardInput(small, enlarged(small, 224))


def forward_x_t(pipe: Pipeline, x0: np.ndarray, t: object, seed: object = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_0, eps, x_t = q_sample(x_0, t, eps)), each (1, C, H, W), for the forward tab's uint8 x0 and noise seed."""
    t = parse_integer("t", t, 0, pipe.T - 1)
    x0_model = load_image(x0, pipe.image_shape)[0]
    eps = forward_noise(x0_model, parse_integer("noise seed", seed, 0, SEED_MAX))
    return x0_model, eps, q_sample_at(pipe.schedule, x0_model, t, eps)


def forward_view(registry: ModelRegistry, model: object, x0: np.ndarray | None, t: object,
                 seed: object = 0) -> ForwardView:
    """q(x_t | x_0) at t (noise from `seed`), a strip from x_0 to noise evenly in log-SNR, and the schedule plot with
    t marked."""
    pipe = registry.get(model)
    if x0 is None:
        return ForwardView(None, "Pick an example or upload an image.", None, schedule_plot(pipe.schedule.config))
    x0_model, eps, x_t = forward_x_t(pipe, x0, t, seed)
    t = int(t)
    ab, log_snr = float(pipe.schedule.alpha_bar[t]), float(pipe.schedule.log_snr[t])
    text = (f"**t = {t}**\n\nᾱₜ = {ab:.5f}\n\nsignal scale √ᾱₜ = {ab ** 0.5:.3f}\n\n"
            f"noise scale √(1 − ᾱₜ) = {(1 - ab) ** 0.5:.3f}\n\nSNRₜ = {math.exp(log_snr):.3g} (log-SNR {log_snr:+.2f})")
    strip = [(enlarged(to_uint8(q_sample_at(pipe.schedule, x0_model, s, eps))[0], 112), f"t = {s}")
             for s in log_snr_timesteps(pipe.schedule, 8)]
    return ForwardView(enlarged(to_uint8(x_t)[0], 224), text, strip, schedule_plot(pipe.schedule.config, t=t))
