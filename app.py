"""DDPM Studio: watch a diffusion model denoise, live, in the browser. Layout and wiring only; the logic is in ddpm/.

    python app.py                                     # the embedded checkpoint, checkpoints/fashion-mnist
    python app.py --checkpoint runs/fashion-mnist     # any checkpoint folder
    python app.py --hub user/repo@rev                 # a Hugging Face Hub repo (or DDPM_HUB_REPO=user/repo)

The address is --host / --port, else GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0:7860),
else 127.0.0.1:7860.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import argparse
import dataclasses
import math
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from ddpm.allocator import tune_allocator
from ddpm.checkpoint import DEFAULT_SAMPLING
from ddpm.frames import Frame, Recorder, Throttle, grid_scale, to_grid
from ddpm.images import to_pil, to_uint8
from ddpm.pipeline import Pipeline
from ddpm.plots import schedule_plot
from ddpm.samplers import MAX_REDRAWS, MAX_SPACING, SAMPLERS
from ddpm.studio import (
    CFG_MAX,
    GUIDANCE_SCALES,
    IMAGE_COUNTS,
    PRECISION_CHOICES,
    SEED_MAX,
    ModelRegistry,
    choose_precision,
    forward_noise,
    image_to_model,
    label_choices,
    local_checkpoints,
    log_snr_timesteps,
    parse_run,
    q_sample_at,
)
from ddpm.torch_thread import TorchThread
from ddpm.torch_thread import torch_thread as shared_torch_thread

DEFAULT_CHECKPOINT = "checkpoints/fashion-mnist"
STREAM_RATE = 15.0  # live updates per second at most (the browser lags behind faster generators)
LIVE_PX = 384  # live x_t / x0_pred images are enlarged to about this width
QUEUE_SIZE = 16
RUNS_DIR = Path(tempfile.gettempdir()) / "ddpm-studio-runs"  # PNG / GIF / MP4 of finished runs
RUN_FILES_TTL_S = 600  # gradio copies them into its own cache at once; ours are removed after this
SAMPLER_CHOICES = [("DDIM", "ddim"), ("DPM-Solver++(2M)", "dpm++2m"), ("DDPM (ancestral)", "ddpm")]

CSS = """
.pixelated img, .pixelated video, img.pixelated { image-rendering: pixelated; }
.gradio-container { max-width: 1280px !important; margin: auto; }
#status { min-height: 2.2em; }
#header h1 { margin-bottom: 0.1em; }
.explain p { margin: 0.25em 0; }
"""

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

FORWARD_EXPLANATION = """
Training runs the other way: take a real image x₀ and add Gaussian noise in one jump,
**q(xₜ | x₀) = N(√ᾱₜ · x₀, (1 − ᾱₜ) I)**; the network learns to predict that noise. ᾱₜ is the share of the
image's variance left at step t, and the signal-to-noise ratio is SNRₜ = ᾱₜ / (1 − ᾱₜ). The strip shows xₜ at
steps spaced evenly in log-SNR, where the image visibly fades; the plot compares this model's schedule with the
other one.
"""


# -- small helpers -------------------------------------------------------------------------------
def _checked(fn, *args, **kwargs):
    """Call fn; a ValueError (bad input, unloadable model) becomes a gr.Error shown on the page."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from e


def _enlarged(grid, px: int = LIVE_PX):
    return to_pil(grid, scale=grid_scale(grid.shape[1], px))


def _new_run_dir() -> Path:
    """A fresh folder for one run's files; folders older than RUN_FILES_TTL_S are removed on the way."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in RUNS_DIR.iterdir():
        try:
            if now - old.stat().st_mtime > RUN_FILES_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    path = RUNS_DIR / uuid.uuid4().hex
    path.mkdir()
    return path


def _model_facts(pipe: Pipeline) -> str:
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


def _interval_label(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "Guide only in the recommended interval"
    return "Guide only for t/T in {:g}..{:g}".format(*interval)


def _defaults(pipe: Pipeline) -> dict:
    """Recommended settings from the checkpoint's config.json ("sampling"), within the controls' ranges."""
    s, fallback = pipe.config.recommended_sampling(), DEFAULT_SAMPLING
    steps = s["steps"] if isinstance(s["steps"], int) and not isinstance(s["steps"], bool) else fallback["steps"]
    cfg = s["cfg"] if isinstance(s["cfg"], (int, float)) and not isinstance(s["cfg"], bool) else fallback["cfg"]
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    spacing = s["spacing"] if finite(s["spacing"]) else fallback["spacing"]
    eta = s["eta"] if finite(s["eta"]) else fallback["eta"]
    redraws = s["redraws"] if isinstance(s["redraws"], int) and not isinstance(s["redraws"], bool) else 0
    w = lambda v: float(min(max(v, 0.0), CFG_MAX))  # noqa: E731
    per_class = tuple(w(v) for v in s["class_cfg"]) if s["class_cfg"] is not None and pipe.conditional else None
    return {
        "eta": float(min(max(eta, 0.0), 1.0)),
        "spacing": float(min(max(spacing, 1.0), MAX_SPACING)),
        "interval": pipe.guidance_interval,
        "steps": int(min(max(steps, 1), pipe.T)),
        "cfg": per_class[0] if per_class else w(cfg),  # the class dropdown starts at class 0
        "class_cfg": per_class,  # one recommended scale per class (config.json validated it), or None
        "sampler": s["sampler"] if s["sampler"] in SAMPLERS else fallback["sampler"],
        "redraws": int(min(max(redraws, 0), MAX_REDRAWS)) if pipe.conditional else 0,
    }


def _class_scales(pipe: Pipeline) -> dict | None:
    """What the browser needs to move the CFG slider to a class's recommended scale: {"names", "scales"}, or None."""
    per_class = _defaults(pipe)["class_cfg"]
    if per_class is None:
        return None
    return {"names": [name.lower() for name in pipe.label_names], "scales": list(per_class)}


# Runs in the browser when the class changes, so that a Generate clicked right after it already sees the class's
# scale (a server round trip could arrive after the click). The label is read as studio.parse_label reads it:
# "7 · Sneaker" -> "7"; a class name (any case); an index. Anything else leaves the slider alone.
CLASS_SCALE_JS = """(label, rec, cfg) => {
  if (!rec || label === null || label === undefined) return cfg;
  let s = String(label).trim();
  const m = s.match(/^(\\d+)\\s*·/);
  if (m) s = m[1];
  let i = rec.names.indexOf(s.toLowerCase());
  if (i < 0 && /^\\d+$/.test(s)) i = parseInt(s, 10);
  return i >= 0 && i < rec.scales.length ? rec.scales[i] : cfg;
}"""


def _cfg_info(d: dict) -> str:
    """The CFG slider's note: where its value comes from when the model recommends a scale per class.

    "" (no note) otherwise: an update with info=None would leave the previous model's note in place.
    """
    if d["class_cfg"] is None:
        return ""
    return "this model recommends a scale per class; picking a class sets its scale"


# -- the app -------------------------------------------------------------------------------------
def build_demo(checkpoint: str | None = None, hub: str | None = None, *, checkpoints_dir: str = "checkpoints",
               torch_thread: TorchThread | None = None) -> gr.Blocks:
    """The Blocks app. Models: `hub` (if given), then `checkpoint` (default checkpoints/fashion-mnist), then
    the other checkpoint folders in `checkpoints_dir`. A model that fails to load is reported on the page and
    the next one is used.

    Models load, and every handler that touches them runs, on `torch_thread` (default: the process's one,
    ddpm.torch_thread): gradio's worker threads would each start an OpenMP team of their own, which slows
    sampling on a 2-core machine by about 1.9x (bench/bench_threads.py).
    """
    tt = torch_thread or shared_torch_thread()
    preferred = [s for s in (hub, checkpoint or DEFAULT_CHECKPOINT) if s]
    registry = ModelRegistry([*preferred, *local_checkpoints(checkpoints_dir)])
    try:
        start, pipe0, failures = tt.call(registry.first_loadable, preferred)
    except ValueError as e:
        raise SystemExit(f"ddpm-studio: {e}") from e
    notice = "".join(f"⚠️ Could not load `{s}`: {e}. Using `{start}` instead.\n\n" for s, e in failures.items())
    d0 = _defaults(pipe0)
    labels0 = label_choices(pipe0)

    # ---- handlers (closures over the shared, read-only registry; per-user data lives in gr.State) ----
    def generate(model, label, cfg, steps, seed, n_images, sampler, eta, precision, limit_guidance=False, spacing=1.0,
                 redraws=0):
        """Stream x_t and x0_pred while sampling, then the final grid, GIF, MP4 and the recorded frames."""
        pipe = _checked(registry.get, model)
        run = _checked(parse_run, pipe, label=label, cfg=cfg, steps=steps, seed=seed, n_images=n_images,
                       sampler=sampler, eta=eta, precision=precision, limit_guidance=limit_guidance, spacing=spacing,
                       redraws=redraws)
        rec = Recorder(pipe.schedule, run.timesteps(pipe.T))
        throttle, plan, pending = Throttle(STREAM_RATE), None, False
        t0 = time.perf_counter()
        yield {status: f"Sampling… seed {run.seed}", scrubber: gr.update(interactive=False)}
        stream = pipe.stream(run.labels(), n=None if pipe.conditional else run.n_images, **run.stream_kwargs())
        for step in stream:
            rec.add(step)
            if plan is None:  # after the first step: how many frames fit into the run at STREAM_RATE
                plan = rec.stream_plan(int(STREAM_RATE * (time.perf_counter() - t0) * run.steps) + 1)
            pending = pending or step.index in plan
            if step.is_last or (pending and throttle.ready()):
                throttle.mark()
                pending = False
                redraw = (f"**Redraw {step.draw}**: the images the model read as another class, again · "
                          if step.draw else "")
                checking = " · checking the images…" if step.is_last and run.redraws else ""
                yield {
                    live_xt: _enlarged(to_grid(step.x_t)),
                    live_x0: _enlarged(to_grid(step.x0_pred)),
                    status: f"{redraw}**Step {step.index + 1} / {step.num_steps}** · t = {step.t} · "
                            f"seed {run.seed} · {time.perf_counter() - t0:.1f} s{checking}",
                }
        sample_s = time.perf_counter() - t0
        out = _new_run_dir()
        name = f"ddpm_seed{run.seed}" + (f"_label{run.label}" if run.label is not None else "")
        final = to_grid(step.x_t)
        png = out / f"{name}.png"
        to_pil(final, scale=grid_scale(final.shape[1], 512)).save(png)
        gif, mp4 = rec.save_gif(out / f"{name}.gif"), rec.save_mp4(out / f"{name}.mp4")
        total_s = time.perf_counter() - t0
        yield {
            final_img: str(png),
            video: str(mp4),
            files: [str(png), str(gif), str(mp4)],
            frames: rec.frames,
            scrubber: gr.update(minimum=0, maximum=len(rec.frames) - 1, value=len(rec.frames) - 1, interactive=True),
            status: f"**Done:** {run.steps} steps in {sample_s:.2f} s · seed {run.seed}"
                    + (f" · {step.draw} redraw round{'s' if step.draw > 1 else ''}" if step.draw else ""),
            run_info: f"{run.describe()} · sampling {sample_s:.2f} s, files {total_s - sample_s:.2f} s",
        }

    def scrub(index, recorded):
        """Show a recorded step of the finished run (no re-sampling)."""
        if not recorded:
            raise gr.Error("nothing recorded yet: press Generate first")
        if isinstance(index, bool) or not isinstance(index, (int, float)) or not 0 <= index <= len(recorded) - 1:
            raise gr.Error(f"frame must be a number in 0..{len(recorded) - 1}, got {index!r}")
        f: Frame = recorded[int(round(index))]
        return _enlarged(f.x_t), _enlarged(f.x0_pred), f"Recorded {f.caption}"

    def explore(model, label, steps, seed, sampler, eta, precision, limit_guidance=False, spacing=1.0):
        """The same seed and label at several CFG scales, side by side."""
        pipe = _checked(registry.get, model)
        run = _checked(parse_run, pipe, label=label, cfg=0.0, steps=steps, seed=seed, n_images=1,
                       sampler=sampler, eta=eta, precision=precision, limit_guidance=limit_guidance, spacing=spacing)
        if run.label is None:
            raise gr.Error("the guidance explorer needs a class-conditional model")
        prec, why = _checked(choose_precision, precision, 2 * len(GUIDANCE_SCALES))
        run = dataclasses.replace(run, precision=prec, precision_reason=why)
        from ddpm.studio import guidance_sweep

        x = guidance_sweep(pipe, run, GUIDANCE_SCALES)
        grids = to_uint8(x)
        scale = grid_scale(grids.shape[2], 160)
        return [(to_pil(g, scale=scale), f"CFG {w:g}") for g, w in zip(grids, GUIDANCE_SCALES)]

    def select_model(model):
        """Switch model: relabel the controls for it. On failure, report it and go back to the first model."""
        note = ""
        try:
            pipe = registry.get(model)
        except ValueError as e:
            note = f"⚠️ could not load `{model}`: {e}. Using `{start}` instead."
            model, pipe = start, registry.get(start)
        d, labels = _defaults(pipe), label_choices(pipe)
        cond = pipe.conditional
        return {
            model_dd: model,
            model_note: gr.update(value=note, visible=bool(note)),
            model_info: _model_facts(pipe),
            label_dd: gr.update(choices=labels, value=labels[0] if labels else None, visible=cond),
            cfg_sl: gr.update(value=d["cfg"], visible=cond, info=_cfg_info(d)),
            class_scales: _class_scales(pipe),
            interval_cb: gr.update(value=d["interval"] is not None, visible=d["interval"] is not None,
                                   label=_interval_label(d["interval"])),
            steps_sl: gr.update(maximum=pipe.T, value=d["steps"]),
            sampler_rd: d["sampler"],
            eta_sl: gr.update(value=d["eta"], visible=d["sampler"] == "ddim"),
            spacing_sl: d["spacing"],
            redraws_sl: gr.update(value=d["redraws"], visible=cond),
            explorer: gr.update(visible=cond),
            t_sl: gr.update(maximum=pipe.T - 1, value=min(pipe.T // 4, pipe.T - 1)),
        }

    def example_choices(model):
        names = [name for name, _ in _checked(registry.examples, model)]
        return gr.update(choices=names, value=names[0] if names else None)

    def pick_example(model, name):
        """The chosen example as the forward process's x_0 (model size, uint8) and its enlarged view.

        A name that is not one of the model's examples is a stale event (the list changes with the model, and the
        old name's change can arrive after the switch): it changes nothing, and the new list's event follows.
        """
        for n, image in _checked(registry.examples, model):
            if n == name:
                return image, _enlarged(image, 224)
        return gr.skip(), gr.skip()

    def upload_x0(model, image):
        if image is None:
            return None, None
        pipe = _checked(registry.get, model)
        small = to_uint8(_checked(image_to_model, image, pipe.image_shape))[0]
        return small, _enlarged(small, 224)

    def forward_view(model, x0_small, t):
        """q(x_t | x_0) at t, a log-SNR strip from x_0 to noise, and the schedule plot with t marked."""
        pipe = _checked(registry.get, model)
        if x0_small is None:
            return None, "Pick an example or upload an image.", None, schedule_plot(pipe.schedule.config)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not float(t).is_integer():
            raise gr.Error(f"t must be an integer in 0..{pipe.T - 1}, got {t!r}")
        t = int(t)
        x0 = _checked(image_to_model, x0_small, pipe.image_shape)
        eps = forward_noise(x0)
        x_t = _checked(q_sample_at, pipe.schedule, x0, t, eps)
        ab, log_snr = float(pipe.schedule.alpha_bar[t]), float(pipe.schedule.log_snr[t])
        snr = math.exp(log_snr)
        text = (f"**t = {t}**\n\nᾱₜ = {ab:.5f}\n\nsignal scale √ᾱₜ = {ab ** 0.5:.3f}\n\n"
                f"noise scale √(1 − ᾱₜ) = {(1 - ab) ** 0.5:.3f}\n\nSNRₜ = {snr:.3g} (log-SNR {log_snr:+.2f})")
        ts = log_snr_timesteps(pipe.schedule, 8)
        strip = [(_enlarged(to_uint8(q_sample_at(pipe.schedule, x0, s, eps))[0], 112), f"t = {s}") for s in ts]
        return _enlarged(to_uint8(x_t)[0], 224), text, strip, schedule_plot(pipe.schedule.config, t=t)

    # on the torch thread (scrub only shows recorded frames)
    generate, explore, select_model, example_choices, pick_example, upload_x0, forward_view = map(
        tt.wrap, (generate, explore, select_model, example_choices, pick_example, upload_x0, forward_view))

    # ---- layout ----------------------------------------------------------------------------------
    with gr.Blocks(title="DDPM Studio", delete_cache=(600, 1800)) as demo:
        frames = gr.State([], time_to_live=3600)  # this session's recorded run (list of ddpm.frames.Frame)
        x0_state = gr.State(None)  # this session's forward-process x_0, uint8 (H, W, C) at the model's size
        gr.Markdown("# DDPM Studio\nWatch a denoising diffusion model turn noise into an image, step by step.",
                    elem_id="header")
        model_note = gr.Markdown(notice, visible=bool(notice), elem_id="model-note")
        with gr.Row():
            model_dd = gr.Dropdown(registry.sources, value=start, label="Model", scale=1,
                                   info="Local checkpoint folders (and the Hub repo given at start-up)")
            model_info = gr.Markdown(_model_facts(pipe0), elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Generate"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=300):
                        label_dd = gr.Dropdown(labels0, value=labels0[0] if labels0 else None, label="Class",
                                               visible=pipe0.conditional, allow_custom_value=True)
                        cfg_sl = gr.Slider(0, CFG_MAX, value=d0["cfg"], step=0.25, label="CFG scale (guidance)",
                                           visible=pipe0.conditional, info=_cfg_info(d0))
                        class_scales = gr.JSON(_class_scales(pipe0), visible=False)  # read by CLASS_SCALE_JS
                        interval_cb = gr.Checkbox(d0["interval"] is not None, label=_interval_label(d0["interval"]),
                                                  visible=d0["interval"] is not None, elem_id="interval",
                                                  info="the model's recommendation: the CFG scale applies only "
                                                       "inside this range; outside it sampling is plain "
                                                       "conditional (w = 1)")
                        steps_sl = gr.Slider(1, pipe0.T, value=d0["steps"], step=1, label="Steps")
                        with gr.Row(equal_height=True):
                            seed_nb = gr.Number(value=0, label="Seed", precision=None, scale=3, min_width=120)
                            dice_btn = gr.Button("Random seed", scale=2, min_width=100)
                        count_rd = gr.Radio(list(IMAGE_COUNTS), value=4, label="Number of images")
                        with gr.Accordion("Advanced", open=False):
                            sampler_rd = gr.Radio(SAMPLER_CHOICES, value=d0["sampler"], label="Sampler")
                            eta_sl = gr.Slider(0, 1, value=d0["eta"], step=0.1, label="DDIM eta (0 = deterministic)",
                                               visible=d0["sampler"] == "ddim")
                            spacing_sl = gr.Slider(1, MAX_SPACING, value=d0["spacing"], step=0.25,
                                                   label="Time-step spacing", elem_id="spacing",
                                                   info="where the steps fall: t = (T-1)(1 - i/(S-1))^p; 1 = evenly "
                                                        "in t, 2 = quadratic (more steps at low noise, where the "
                                                        "details form)")
                            redraws_sl = gr.Slider(0, MAX_REDRAWS, value=d0["redraws"], step=1, label="Redraw rounds",
                                                   visible=pipe0.conditional, elem_id="redraws",
                                                   info="the model checks each finished image: one it reads as "
                                                        "another class is drawn again from new noise, up to this "
                                                        "many times (0 = off)")
                            precision_rd = gr.Radio(list(PRECISION_CHOICES), value="auto", label="Precision",
                                                    info="auto = bf16 when the network batch is 16 or more")
                        with gr.Row():
                            gen_btn = gr.Button("Generate", variant="primary", scale=2)
                            stop_btn = gr.Button("Stop", variant="stop", scale=1)
                    with gr.Column(scale=2):
                        status = gr.Markdown("Press **Generate** to start.", elem_id="status")
                        with gr.Row():
                            live_xt = gr.Image(label="xₜ (current sample)", format="png", elem_classes="pixelated",
                                               interactive=False, buttons=["fullscreen"], elem_id="live-xt")
                            live_x0 = gr.Image(label="x₀ prediction", format="png", elem_classes="pixelated",
                                               interactive=False, buttons=["fullscreen"], elem_id="live-x0")
                        scrubber = gr.Slider(0, 1, value=0, step=1, label="Scrub the finished run (recorded steps)",
                                             interactive=False, elem_id="scrubber")
                with gr.Row(equal_height=False):
                    final_img = gr.Image(label="Final images (PNG)", format="png", elem_classes="pixelated", height=300,
                                         interactive=False, buttons=["download", "fullscreen"], elem_id="final")
                    video = gr.Video(label="Trajectory: xₜ | x₀ prediction (MP4)", autoplay=True, loop=True, height=300,
                                     interactive=False, elem_classes="pixelated", elem_id="video")
                    with gr.Column():
                        files = gr.File(label="Downloads: PNG, GIF, MP4", file_count="multiple", interactive=False,
                                        elem_id="files")
                        run_info = gr.Markdown(elem_id="run-info")
                with gr.Column(visible=pipe0.conditional, variant="panel") as explorer:
                    with gr.Row(equal_height=True):
                        with gr.Column(scale=4):
                            gr.Markdown("### Guidance explorer\nThe same seed, class, sampler and steps at CFG "
                                        + ", ".join(f"{w:g}" for w in GUIDANCE_SCALES)
                                        + ": watch the images get more typical as w grows. With *Guide only for t/T in* "
                                        "ticked, the scales differ only inside that interval (small changes); untick "
                                        "it to see guidance at every step.")
                        explore_btn = gr.Button("Compare guidance scales", scale=1, min_width=200)
                    gallery = gr.Gallery(show_label=False, columns=len(GUIDANCE_SCALES), format="png", height=210,
                                         object_fit="contain", elem_classes="pixelated", elem_id="explorer",
                                         allow_preview=False)
                with gr.Accordion("What am I looking at?", open=True):
                    gr.Markdown(EXPLANATION, elem_classes="explain")
            with gr.Tab("Forward process"):
                gr.Markdown(FORWARD_EXPLANATION, elem_classes="explain")
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        example_dd = gr.Dropdown([], label="Example image")
                        x0_img = gr.Image(label="x_0 (or upload your own)", sources=["upload"], type="numpy",
                                          format="png", elem_classes="pixelated", height=260)
                    with gr.Column(scale=2):
                        t_sl = gr.Slider(0, pipe0.T - 1, value=pipe0.T // 4, step=1, label="time step t")
                        with gr.Row():
                            xt_img = gr.Image(label="x_t ~ q(x_t | x_0)", format="png", interactive=False,
                                              elem_classes="pixelated", height=260)
                            forward_text = gr.Markdown()
                strip = gr.Gallery(label="x_t at steps evenly spaced in log-SNR", columns=8, format="png",
                                   height=170, object_fit="contain", elem_classes="pixelated")
                plot_img = gr.Image(label="Noise schedule", format="png", interactive=False, elem_id="schedule-plot")

        # ---- wiring ------------------------------------------------------------------------------
        run_inputs = [model_dd, label_dd, cfg_sl, steps_sl, seed_nb, count_rd, sampler_rd, eta_sl, precision_rd,
                      interval_cb, spacing_sl, redraws_sl]
        gen_event = gen_btn.click(
            generate, run_inputs,
            [live_xt, live_x0, status, final_img, video, files, frames, scrubber, run_info],
            api_name="generate", preprocess=False, concurrency_id="model", concurrency_limit=1,
            show_progress="full", show_progress_on=[live_xt, live_x0],
        )
        explore_event = explore_btn.click(
            explore, [model_dd, label_dd, steps_sl, seed_nb, sampler_rd, eta_sl, precision_rd, interval_cb, spacing_sl],
            gallery,
            api_name="guidance_explorer", preprocess=False, concurrency_id="model", concurrency_limit=1,
        )
        stop_btn.click(lambda: "Stopped.", None, status, cancels=[gen_event, explore_event], queue=False,
                       api_visibility="private")
        dice_btn.click(lambda: secrets.randbelow(SEED_MAX + 1), None, seed_nb, queue=False, api_visibility="private")
        label_dd.change(None, [label_dd, class_scales, cfg_sl], cfg_sl, js=CLASS_SCALE_JS, queue=False,
                        api_visibility="private")
        sampler_rd.change(lambda s: gr.update(visible=s == "ddim"), sampler_rd, eta_sl, queue=False,
                          api_visibility="private")
        scrubber.input(scrub, [scrubber, frames], [live_xt, live_x0, status], api_name="scrub",
                       trigger_mode="always_last", concurrency_limit=4, show_progress="hidden")
        forward_inputs = [model_dd, x0_state, t_sl]
        forward_outputs = [xt_img, forward_text, strip, plot_img]
        model_dd.input(
            select_model, model_dd,
            [model_dd, model_note, model_info, label_dd, cfg_sl, class_scales, interval_cb, steps_sl, sampler_rd,
             eta_sl, spacing_sl, redraws_sl, explorer, t_sl],
            api_visibility="private", concurrency_id="model",
        ).then(example_choices, model_dd, example_dd, api_visibility="private")
        example_dd.change(pick_example, [model_dd, example_dd], [x0_state, x0_img], api_visibility="private").then(
            forward_view, forward_inputs, forward_outputs, api_visibility="private")
        x0_img.upload(upload_x0, [model_dd, x0_img], [x0_state, x0_img], api_visibility="private").then(
            forward_view, forward_inputs, forward_outputs, api_visibility="private")
        t_sl.input(forward_view, forward_inputs, forward_outputs, api_name="forward", trigger_mode="always_last",
                   concurrency_limit=2, show_progress="hidden")
        demo.load(example_choices, model_dd, example_dd, api_visibility="private")
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def launch(demo: gr.Blocks, *, host: str | None = None, port: int | None = None, **kwargs):
    """demo.launch with the app's theme and CSS; host / port None defer to GRADIO_SERVER_NAME / _PORT."""
    return demo.launch(server_name=host, server_port=port, theme=gr.themes.Default(primary_hue="orange"), css=CSS,
                       footer_links=["api", "gradio"], state_session_capacity=256, **kwargs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--checkpoint", default=None, help=f"checkpoint folder (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--hub", default=os.environ.get("DDPM_HUB_REPO") or None,
                   help="Hugging Face Hub repo REPO[@REV] to load first (default: $DDPM_HUB_REPO)")
    args = p.parse_args(argv)
    tune_allocator()
    launch(build_demo(args.checkpoint, args.hub), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
