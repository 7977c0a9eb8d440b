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
import secrets
import tempfile
from pathlib import Path

import gradio as gr

from ddpm import handlers
from ddpm.allocator import tune_allocator
from ddpm.options import MAX_REDRAWS, MAX_SPACING, PRECISIONS
from ddpm.registry import ModelRegistry, local_checkpoints
from ddpm.studio import CFG_MAX, CLASS_SCALE_JS, GUIDANCE_SCALES, IMAGE_COUNTS, SEED_MAX
from ddpm.torch_thread import TorchThread
from ddpm.torch_thread import torch_thread as shared_torch_thread

DEFAULT_CHECKPOINT = "checkpoints/fashion-mnist"
QUEUE_SIZE = 16
RUNS_DIR = Path(tempfile.gettempdir()) / "ddpm-studio-runs"  # PNG / GIF / MP4 of finished runs (kept 10 minutes)
SAMPLER_CHOICES = [("DDIM", "ddim"), ("DPM-Solver++(2M)", "dpm++2m"), ("DDPM (ancestral)", "ddpm")]

CSS = """
.pixelated img, .pixelated video, img.pixelated { image-rendering: pixelated; }
.gradio-container { max-width: 1280px !important; margin: auto; }
#status { min-height: 2.2em; }
#header h1 { margin-bottom: 0.1em; }
.explain p { margin: 0.25em 0; }
"""

# -- the app -------------------------------------------------------------------------------------
def _checked(fn, *args, **kwargs):
    """Call fn; a ValueError (bad input, unloadable model) becomes a gr.Error shown on the page."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from e


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
        start, _, failures = tt.call(registry.first_loadable, preferred)
    except ValueError as e:
        raise SystemExit(f"ddpm-studio: {e}") from e
    notice = "".join(f"⚠️ Could not load `{s}`: {e}. Using `{start}` instead.\n\n" for s, e in failures.items())
    v0 = tt.call(handlers.select_model, registry, start, fallback=start)  # the page as it starts
    o0 = v0.options  # where the controls start: the model's recommendation

    # ---- handlers: ddpm.handlers on the torch thread, their results mapped onto the components ----------------
    def generate(model, label, cfg, steps, seed, n_images, sampler, eta, precision, limit_guidance=False, spacing=1.0,
                 redraws=0):
        """Stream x_t and x0_pred while sampling, then the final grid, GIF, MP4 and the recorded frames."""
        for u in _checked(handlers.generate, registry, model, label=label, seed=seed, n_images=n_images,
                          limit_guidance=limit_guidance, runs_dir=RUNS_DIR, cfg=cfg, steps=steps, sampler=sampler,
                          eta=eta, precision=precision, spacing=spacing, redraws=redraws):
            if isinstance(u, handlers.Finished):
                yield {final_img: str(u.png), video: str(u.mp4), files: [str(u.png), str(u.gif), str(u.mp4)],
                       frames: u.frames, status: u.status, run_info: u.run_info,
                       scrubber: gr.update(maximum=len(u.frames) - 1, value=len(u.frames) - 1, interactive=True)}
            elif u.x_t is None:
                yield {status: u.status, scrubber: gr.update(interactive=False)}
            else:
                yield {live_xt: u.x_t, live_x0: u.x0_pred, status: u.status}

    def scrub(index, recorded):
        """Show a recorded step of the finished run (no re-sampling)."""
        u = _checked(handlers.scrub, index, recorded)
        return u.x_t, u.x0_pred, u.status

    def explore(model, label, steps, seed, sampler, eta, precision, limit_guidance=False, spacing=1.0):
        """The same seed and label at several CFG scales, side by side."""
        return _checked(handlers.explore, registry, model, label=label, seed=seed, limit_guidance=limit_guidance,
                        steps=steps, sampler=sampler, eta=eta, precision=precision, spacing=spacing)

    def select_model(model):
        """Switch model: relabel the controls for it. On failure, report it and go back to the first model."""
        v = handlers.select_model(registry, model, fallback=start)
        return {
            model_dd: v.source,
            model_note: gr.update(value=v.note, visible=bool(v.note)),
            model_info: v.facts,
            label_dd: gr.update(choices=v.labels, value=v.labels[0] if v.labels else None, visible=v.conditional),
            cfg_sl: gr.update(value=v.cfg, visible=v.conditional, info=v.cfg_info),
            class_scales: v.class_scales,
            interval_cb: gr.update(value=v.interval is not None, visible=v.interval is not None,
                                   label=v.interval_label),
            steps_sl: gr.update(maximum=v.T, value=v.options.steps),
            sampler_rd: v.options.sampler,
            eta_sl: gr.update(value=v.options.eta, visible=v.options.sampler == "ddim"),
            spacing_sl: v.options.spacing,
            redraws_sl: gr.update(value=v.options.redraws, visible=v.conditional),
            explorer: gr.update(visible=v.conditional),
            t_sl: gr.update(maximum=v.T - 1, value=min(v.T // 4, v.T - 1)),
        }

    def example_choices(model):
        names = _checked(handlers.example_choices, registry, model)
        return gr.update(choices=names, value=names[0] if names else None)

    def pick_example(model, name):
        """The chosen example as x_0; a stale name (from the model before a switch) changes nothing."""
        x = _checked(handlers.pick_example, registry, model, name)
        return (x.x0, x.view) if x else (gr.skip(), gr.skip())

    def upload_x0(model, image):
        x = _checked(handlers.upload_x0, registry, model, image)
        return (x.x0, x.view) if x else (None, None)

    def forward_view(model, x0_small, t):
        """q(x_t | x_0) at t, a log-SNR strip from x_0 to noise, and the schedule plot with t marked."""
        v = _checked(handlers.forward_view, registry, model, x0_small, t)
        return v.x_t, v.text, v.strip, v.plot

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
            model_info = gr.Markdown(v0.facts, elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Generate"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=300):
                        label_dd = gr.Dropdown(v0.labels, value=v0.labels[0] if v0.labels else None, label="Class",
                                               visible=v0.conditional, allow_custom_value=True)
                        cfg_sl = gr.Slider(0, CFG_MAX, value=v0.cfg, step=0.25, label="CFG scale (guidance)",
                                           visible=v0.conditional, info=v0.cfg_info)
                        class_scales = gr.JSON(v0.class_scales, visible=False)  # read by CLASS_SCALE_JS
                        interval_cb = gr.Checkbox(v0.interval is not None, label=v0.interval_label,
                                                  visible=v0.interval is not None, elem_id="interval",
                                                  info="the model's recommendation: the CFG scale applies only "
                                                       "inside this range; outside it sampling is plain "
                                                       "conditional (w = 1)")
                        steps_sl = gr.Slider(1, v0.T, value=o0.steps, step=1, label="Steps")
                        with gr.Row(equal_height=True):
                            seed_nb = gr.Number(value=0, label="Seed", precision=None, scale=3, min_width=120)
                            dice_btn = gr.Button("Random seed", scale=2, min_width=100)
                        count_rd = gr.Radio(list(IMAGE_COUNTS), value=4, label="Number of images")
                        with gr.Accordion("Advanced", open=False):
                            sampler_rd = gr.Radio(SAMPLER_CHOICES, value=o0.sampler, label="Sampler")
                            eta_sl = gr.Slider(0, 1, value=o0.eta, step=0.1, label="DDIM eta (0 = deterministic)",
                                               visible=o0.sampler == "ddim")
                            spacing_sl = gr.Slider(1, MAX_SPACING, value=o0.spacing, step=0.25,
                                                   label="Time-step spacing", elem_id="spacing",
                                                   info="where the steps fall: t = (T-1)(1 - i/(S-1))^p; 1 = evenly "
                                                        "in t, 2 = quadratic (more steps at low noise, where the "
                                                        "details form)")
                            redraws_sl = gr.Slider(0, MAX_REDRAWS, value=o0.redraws, step=1, label="Redraw rounds",
                                                   visible=v0.conditional, elem_id="redraws",
                                                   info="the model checks each finished image: one it reads as "
                                                        "another class is drawn again from new noise, up to this "
                                                        "many times (0 = off)")
                            precision_rd = gr.Radio(list(PRECISIONS), value=o0.precision, label="Precision",
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
                with gr.Column(visible=v0.conditional, variant="panel") as explorer:
                    with gr.Row(equal_height=True):
                        with gr.Column(scale=4):
                            gr.Markdown(handlers.EXPLORER_EXPLANATION)
                        explore_btn = gr.Button("Compare guidance scales", scale=1, min_width=200)
                    gallery = gr.Gallery(show_label=False, columns=len(GUIDANCE_SCALES), format="png", height=210,
                                         object_fit="contain", elem_classes="pixelated", elem_id="explorer",
                                         allow_preview=False)
                with gr.Accordion("What am I looking at?", open=True):
                    gr.Markdown(handlers.EXPLANATION, elem_classes="explain")
            with gr.Tab("Forward process"):
                gr.Markdown(handlers.FORWARD_EXPLANATION, elem_classes="explain")
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        example_dd = gr.Dropdown([], label="Example image")
                        x0_img = gr.Image(label="x_0 (or upload your own)", sources=["upload"], type="numpy",
                                          format="png", elem_classes="pixelated", height=260)
                    with gr.Column(scale=2):
                        t_sl = gr.Slider(0, v0.T - 1, value=v0.T // 4, step=1, label="time step t")
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
