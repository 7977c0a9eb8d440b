"""DDPM Studio: watch a diffusion model denoise, live, in the browser. Wiring only (page: app_layout.py, logic: ddpm/).

    python app.py                                     # the embedded checkpoint, checkpoints/fashion-mnist
    python app.py --checkpoint runs/fashion-mnist     # any checkpoint folder
    python app.py --hub user/repo@rev                 # a Hugging Face Hub repo (or DDPM_HUB_REPO=user/repo)

The address is --host / --port, else GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0:7860),
else 127.0.0.1:7860. Hosting limits: DDPM_MAX_COST, DDPM_TIME_LIMIT_S (ddpm.budget) and DDPM_QUEUE_SIZE.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import argparse
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app_layout import CSS, PRIVATE, control_updates, edit_tab, forward_tab, generate_tab, interpolate_tab
from ddpm import edit_handlers, handlers, interp_handlers
from ddpm.allocator import tune_allocator
from ddpm.budget import Budget, queue_size_from_env
from ddpm.images import grid_image, png_data_url
from ddpm.registry import ModelRegistry, local_checkpoints
from ddpm.torch_thread import TorchThread
from ddpm.torch_thread import torch_thread as shared_torch_thread

DEFAULT_CHECKPOINT = "checkpoints/fashion-mnist"
RUNS_DIR = Path(tempfile.gettempdir()) / "ddpm-studio-runs"  # PNG / GIF / MP4 of finished runs (kept 10 minutes)
QUEUE_POLL_S = 0.005  # how often gradio's queue looks for new work (see calm_queue)
RUN = dict(concurrency_id="model", concurrency_limit=1)  # every sampling run: one at a time, through the queue


def _checked(fn, *args, **kwargs):
    """Call fn; a ValueError (bad input, unloadable model) becomes a gr.Error shown on the page."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from e


def _streamed(o: SimpleNamespace, show: Callable[[object], dict], fn, *args, **kwargs) -> Iterator[dict]:
    """fn's updates as show(u). A ValueError (bad input, over the server's budget or time limit), at the call or while
    it runs, goes into o.status (what was streamed stays) and is raised as gr.Error: the page's toast, a client's
    AppError."""
    try:
        for u in fn(*args, **kwargs):
            yield show(u)
    except ValueError as e:
        yield {o.status: f"⚠️ {e}"}
        raise gr.Error(str(e), print_exception=False) from e


def _from_env(read: Callable[[], object]) -> object:
    """read() (a setting from the environment); a bad value stops start-up with its message."""
    try:
        return read()
    except ValueError as e:
        raise SystemExit(f"ddpm-studio: {e}") from e


def shown(u, o: SimpleNamespace) -> dict:
    """A streamed update (handlers.Live / Finished, interp_handlers.Morph) as updates of panel o's components."""
    scrubs = hasattr(o, "scrubber")  # a panel of app_layout.run_panel: recorded frames and their scrubber
    if isinstance(u, (handlers.Finished, interp_handlers.Morph)):
        done = {o.final: str(u.png), o.video: str(u.mp4), o.files: [str(u.png), str(u.gif), str(u.mp4)],
                o.status: u.status, o.run_info: u.run_info}
        if scrubs:
            last = len(u.frames) - 1
            done.update({o.frames: u.frames, o.scrubber: gr.update(maximum=last, value=last, interactive=True)})
        return done
    # While a run streams, its result components show nothing (not the last run's result). They get a value, None,
    # with every update: gradio rebuilds each output left out of an update as a new component (~1.2 ms for an
    # image, a video, a file list: most of a frame's server time), where None costs next to nothing.
    cleared = {getattr(o, n): None for n in ("final", "video", "files") if hasattr(o, n)}  # the forward tab has none
    if u.x_t is None:
        return {o.status: u.status, **cleared, **({o.scrubber: gr.update(interactive=False)} if scrubs else {})}
    return {o.live_xt: png_data_url(u.x_t), o.live_x0: png_data_url(u.x0_pred), o.status: u.status, **cleared}


# -- the app ---------------------------------------------------------------------------------------------
def build_demo(checkpoint: str | None = None, hub: str | None = None, *, checkpoints_dir: str = "checkpoints",
               torch_thread: TorchThread | None = None, budget: Budget | None = None,
               queue_size: int | None = None) -> gr.Blocks:
    """The Blocks app. Models: `hub` (if given), then `checkpoint` (default checkpoints/fashion-mnist), then
    the other checkpoint folders in `checkpoints_dir`. A model that fails to load is reported on the page and
    the next one is used.

    budget: what one request may cost (default: DDPM_MAX_COST, DDPM_TIME_LIMIT_S); queue_size: how many requests
    may wait (default: DDPM_QUEUE_SIZE, else 16; 0 = no limit). A bad variable stops start-up with its message.

    Models load, and every handler that touches them runs, on `torch_thread` (default: the process's one,
    ddpm.torch_thread): gradio's worker threads would each start an OpenMP team of their own, which slows
    sampling on a 2-core machine by about 1.9x (bench/bench_threads.py).
    """
    tt = torch_thread or shared_torch_thread()
    budget = budget or _from_env(Budget.from_env)
    queue_size = _from_env(queue_size_from_env) if queue_size is None else queue_size or None
    preferred = [s for s in (hub, checkpoint or DEFAULT_CHECKPOINT) if s]
    registry = ModelRegistry([*preferred, *local_checkpoints(checkpoints_dir)])
    try:
        start, _, failures = tt.call(registry.first_loadable, preferred)
    except ValueError as e:
        raise SystemExit(f"ddpm-studio: {e}") from e
    notice = "".join(f"⚠️ Could not load `{s}`: {e}. Using `{start}` instead.\n\n" for s, e in failures.items())
    v0 = tt.call(handlers.select_model, registry, start, fallback=start)  # the page as it starts
    # g, e, i, f: the components of the tabs Generate, Start from an image, Interpolate and Forward process, made by
    # app_layout below (SimpleNamespaces); the handlers read them when they run

    # ---- handlers: ddpm's on the torch thread, their results mapped onto the components --------------------------
    def generate(model, label, cfg, steps, seed, n_images, sampler, eta, precision, limit_guidance=False, spacing=1.0,
                 redraws=0):
        """Stream x_t and x0_pred while sampling, then the final grid, GIF, MP4 and the recorded frames."""
        yield from _streamed(g, lambda u: shown(u, g), handlers.generate, registry, model, label=label, seed=seed,
                             n_images=n_images, limit_guidance=limit_guidance, runs_dir=RUNS_DIR, budget=budget,
                             cfg=cfg, steps=steps, sampler=sampler, eta=eta, precision=precision, spacing=spacing,
                             redraws=redraws)

    def edit(model, image, mask, invert, strength, label, cfg, steps, seed, n_images, sampler, eta, precision,
             limit_guidance=False, spacing=1.0, jumps=0):
        """Image-to-image (and inpainting where the mask is painted), streamed like Generate."""
        def show(u):
            return {e.view: u.view, e.notes: u.notes} if isinstance(u, edit_handlers.Prepared) else shown(u, e)

        yield from _streamed(e, show, edit_handlers.edit, registry, model, image=image, mask=mask, invert=invert,
                             strength=strength, jumps=jumps, label=label, seed=seed, n_images=n_images,
                             limit_guidance=limit_guidance, runs_dir=RUNS_DIR, budget=budget, cfg=cfg, steps=steps,
                             sampler=sampler, eta=eta, precision=precision, spacing=spacing)

    def interpolate(model, seed_a, seed_b, label_a, label_b, k, cfg, steps, sampler, eta, precision,
                    limit_guidance=False, spacing=1.0):
        """k images from seed A's noise to seed B's: live strips, then the strip and the morph."""
        yield from _streamed(i, lambda u: shown(u, i), interp_handlers.interpolate, registry, model, seed_a=seed_a,
                             seed_b=seed_b, label_a=label_a, label_b=label_b, k=k, limit_guidance=limit_guidance,
                             runs_dir=RUNS_DIR, budget=budget, cfg=cfg, steps=steps, sampler=sampler, eta=eta,
                             precision=precision, spacing=spacing)

    def denoise_from_here(model, x0_small, t, seed, label):
        """The sampler from the forward tab's x_t down to t = 0, streamed in that tab."""
        def show(u):
            if isinstance(u, handlers.Finished):
                return {f.live_xt: png_data_url(grid_image(u.images)), f.status: u.status}
            return shown(u, f)

        yield from _streamed(f, show, edit_handlers.denoise_from_here, registry, model, x0=x0_small, t=t, seed=seed,
                             label=label, runs_dir=RUNS_DIR, budget=budget)

    def scrub(index, recorded):
        """Show a recorded step of the finished run (no re-sampling)."""
        u = _checked(handlers.scrub, index, recorded)
        return png_data_url(u.x_t), png_data_url(u.x0_pred), u.status

    def explore(model, label, steps, seed, sampler, eta, precision, limit_guidance=False, spacing=1.0):
        """The same seed and label at several CFG scales, side by side."""
        return _checked(handlers.explore, registry, model, label=label, seed=seed, limit_guidance=limit_guidance,
                        budget=budget, steps=steps, sampler=sampler, eta=eta, precision=precision, spacing=spacing)

    def select_model(model):
        """Switch model: relabel the controls for it. On failure, report it and go back to the first model."""
        v = handlers.select_model(registry, model, fallback=start)
        labels = gr.update(choices=v.labels, value=v.labels[0] if v.labels else None, visible=v.conditional)
        return {model_dd: v.source, model_note: gr.update(value=v.note, visible=bool(v.note)), model_info: v.facts,
                **control_updates(g, v), **control_updates(e, v), **control_updates(i, v),
                g.extra: gr.update(value=v.options.redraws, visible=v.conditional),
                g.explorer: gr.update(visible=v.conditional), f.label: labels,
                f.t: gr.update(maximum=v.T - 1, value=min(v.T // 4, v.T - 1))}

    def example_choices(model):
        """The model's examples for the forward and the edit tab, and whether a new picture starts inverted."""
        names = _checked(handlers.example_choices, registry, model)
        return [gr.update(choices=names, value=names[0] if names else None), gr.update(choices=names, value=None),
                edit_handlers.invert_default(registry, model)]

    def pick_example(model, name):
        """The chosen example as x_0; a stale name (from the model before a switch) changes nothing."""
        x = _checked(handlers.pick_example, registry, model, name)
        return (x.x0, x.view) if x else (gr.skip(), gr.skip())

    def edit_example(model, name):
        """The chosen example in the editor and under the mask (examples are light on dark already: no inverting)."""
        value = _checked(edit_handlers.editor_example, registry, model, name)
        return (gr.skip(),) * 3 if value is None else (value, value, False)

    def new_sketch(model):
        """A white canvas in the editor and under the mask, Invert as the model needs it, and no example named."""
        value, invert = edit_handlers.new_sketch(registry, model)
        return value, value, invert, None

    def invert_default(model):
        """Invert as the model needs it for a new picture (an upload: a photo on white, most likely)."""
        return edit_handlers.invert_default(registry, model)

    def upload_x0(model, image):
        x = _checked(handlers.upload_x0, registry, model, image)
        return (x.x0, x.view) if x else (None, None)

    def forward_view(model, x0_small, t, seed=0):
        """q(x_t | x_0) at t, a log-SNR strip from x_0 to noise, and the schedule plot with t marked."""
        v = _checked(handlers.forward_view, registry, model, x0_small, t, seed)
        return v.x_t, v.text, v.strip, v.plot

    # on the torch thread (scrub only shows recorded frames)
    (generate, edit, interpolate, denoise_from_here, explore, select_model, example_choices, pick_example,
     edit_example, new_sketch, invert_default, upload_x0, forward_view) = map(tt.wrap, (
        generate, edit, interpolate, denoise_from_here, explore, select_model, example_choices, pick_example,
        edit_example, new_sketch, invert_default, upload_x0, forward_view))

    # ---- layout ----------------------------------------------------------------------------------
    with gr.Blocks(title="DDPM Studio", delete_cache=(600, 1800)) as demo:
        x0_state = gr.State(None)  # this session's forward-process x_0, uint8 (H, W, C) at the model's size
        gr.Markdown("# DDPM Studio\nWatch a denoising diffusion model turn noise into an image, step by step.",
                    elem_id="header")
        gr.Markdown(budget.describe(queue_size), elem_id="limits")  # what a request may cost on this server
        model_note = gr.Markdown(notice, visible=bool(notice), elem_id="model-note")
        with gr.Row():
            model_dd = gr.Dropdown(registry.sources, value=start, label="Model", scale=1,
                                   info="Local checkpoint folders (and the Hub repo given at start-up)")
            model_info = gr.Markdown(v0.facts, elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Generate", elem_id="generate-tab"):
                g = generate_tab(v0)
            with gr.Tab("Start from an image", elem_id="edit-tab"):
                e = edit_tab(v0)
            with gr.Tab("Interpolate", elem_id="interpolate-tab"):
                i = interpolate_tab(v0)
            with gr.Tab("Forward process", elem_id="forward-tab"):
                f = forward_tab(v0)

        # ---- wiring ------------------------------------------------------------------------------
        def settings(c):  # a tab's sampling controls in the order of the handlers' parameters
            return [c.cfg, c.steps, c.seed, c.count, c.sampler, c.eta, c.precision, c.interval, c.spacing]

        def run(o, fn, inputs, outputs, name, **kwargs):
            """o.run starts fn (streamed, queued with every other run), o.stop cancels it."""
            event = o.run.click(fn, inputs, outputs, api_name=name, show_progress="full",
                                show_progress_on=[o.live_xt, o.live_x0], **RUN, **kwargs)
            o.stop.click(lambda: "Stopped.", None, o.status, cancels=[event], queue=False, **PRIVATE)
            return event

        def panel(o):
            return [o.live_xt, o.live_x0, o.status, o.final, o.video, o.files]

        run(g, generate, [model_dd, g.label, *settings(g), g.extra], [*panel(g), g.frames, g.scrubber, g.run_info],
            "generate", preprocess=False)
        explore_event = g.explore.click(
            explore, [model_dd, g.label, g.steps, g.seed, g.sampler, g.eta, g.precision, g.interval, g.spacing],
            g.gallery, api_name="guidance_explorer", preprocess=False, **RUN)
        g.stop.click(None, cancels=[explore_event], queue=False, **PRIVATE)
        run(e, edit, [model_dd, e.image, e.mask, e.invert, e.strength, e.label, *settings(e), e.extra],
            [*panel(e), e.frames, e.scrubber, e.run_info, e.view, e.notes], "edit")  # preprocessed: the editors
        run(i, interpolate, [model_dd, i.seed, i.seed_b, i.label, i.label_b, i.count, i.cfg, i.steps, i.sampler, i.eta,
                             i.precision, i.interval, i.spacing], [*panel(i), i.run_info], "interpolate",
            preprocess=False)
        run(f, denoise_from_here, [model_dd, x0_state, f.t, f.seed, f.label], [f.live_xt, f.live_x0, f.status],
            "denoise_from_here", preprocess=False)
        g.scrubber.input(scrub, [g.scrubber, g.frames], [g.live_xt, g.live_x0, g.status], api_name="scrub",
                         trigger_mode="always_last", concurrency_limit=4, show_progress="hidden")
        e.scrubber.input(scrub, [e.scrubber, e.frames], [e.live_xt, e.live_x0, e.status], trigger_mode="always_last",
                         concurrency_limit=4, show_progress="hidden", **PRIVATE)
        e.example.input(edit_example, [model_dd, e.example], [e.image, e.mask, e.invert], **PRIVATE)
        e.sketch.click(new_sketch, model_dd, [e.image, e.mask, e.invert, e.example], **PRIVATE)
        e.image.upload(invert_default, model_dd, e.invert, **PRIVATE)
        for changed in (e.image.upload, e.image.change, e.image.clear):  # the mask editor shows the new picture
            changed(lambda image: _checked(edit_handlers.mask_canvas, image), e.image, e.mask,  # no model: any thread
                    trigger_mode="always_last", show_progress="hidden", **PRIVATE)
        forward_inputs, forward_outputs = [model_dd, x0_state, f.t, f.seed], [f.xt, f.text, f.strip, f.plot]
        model_dd.input(
            select_model, model_dd,
            [model_dd, model_note, model_info, *control_updates(g, v0), *control_updates(e, v0),
             *control_updates(i, v0), g.extra, g.explorer, f.label, f.t], concurrency_id="model", **PRIVATE,
        ).then(example_choices, model_dd, [f.example, e.example, e.invert], **PRIVATE)
        f.example.change(pick_example, [model_dd, f.example], [x0_state, f.x0], **PRIVATE).then(
            forward_view, forward_inputs, forward_outputs, **PRIVATE)
        f.x0.upload(upload_x0, [model_dd, f.x0], [x0_state, f.x0], **PRIVATE).then(
            forward_view, forward_inputs, forward_outputs, **PRIVATE)
        f.t.input(forward_view, forward_inputs, forward_outputs, api_name="forward", trigger_mode="always_last",
                  concurrency_limit=2, show_progress="hidden")
        f.seed.input(forward_view, forward_inputs, forward_outputs, trigger_mode="always_last", **PRIVATE)
        demo.load(example_choices, model_dd, [f.example, e.example, e.invert], **PRIVATE)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)  # when full, gradio turns a request away
    calm_queue(demo)
    return demo


def calm_queue(demo: gr.Blocks, poll_s: float = QUEUE_POLL_S) -> None:
    """Let gradio's queue look for new work every poll_s instead of every 1 ms. Its 1 ms poll costs ~4% of a core
    while the app is idle (5% measured here), taken from torch's two cores while it samples; at 5 ms, ~2.6%, and a
    run starts at most 5 ms later. The attribute is gradio 6's own (not public): if a release drops it, this does nothing."""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = poll_s


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
