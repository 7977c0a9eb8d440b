"""The page of app.py: one builder per tab, and the controls and panels several tabs share. Components only: the
handlers and the events between tabs are wired in app.py.

Each builder returns a SimpleNamespace of its tab's components (t.run, t.stop, t.status, t.live_xt, ...), so that
app.py names them the same way in every tab.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from types import SimpleNamespace

import gradio as gr

from ddpm import edit_handlers, handlers, interp_handlers
from ddpm.edit import MAX_FRAMES, MAX_JUMPS
from ddpm.handlers import ModelView
from ddpm.options import MAX_REDRAWS, MAX_SPACING, PRECISIONS
from ddpm.studio import CFG_MAX, CLASS_SCALE_JS, GUIDANCE_SCALES, IMAGE_COUNTS, SEED_MAX

SAMPLER_CHOICES = [("DDIM", "ddim"), ("DPM-Solver++(2M)", "dpm++2m"), ("DDPM (ancestral)", "ddpm")]
PRIVATE = dict(api_visibility="private")  # an event that is not part of the HTTP API
PX = edit_handlers.EDITOR_PX
LIVE_HEIGHT = 400  # px of the live x_t / x0_pred panels: the model-resolution grids are scaled up to fill them

CSS = """
.pixelated img, .pixelated video, img.pixelated, .pixelated canvas { image-rendering: pixelated; }
.live img { display: block; width: 100%; object-fit: contain; }  /* small live grids fill the panel */
.live label[data-testid="block-label"] > span { display: none; }  /* gr.HTML's code icon: these are pictures */
.gradio-container { max-width: 1280px !important; margin: auto; }
.status { min-height: 2.2em; }
#header h1 { margin-bottom: 0.1em; }
#limits p { margin: 0; font-size: 0.9em; opacity: 0.75; }
.explain p { margin: 0.25em 0; }
"""


# -- shared pieces -----------------------------------------------------------------------------------------
def live_frame(label: str, elem_id: str, *, height: int | None = None) -> gr.HTML:
    """A streamed frame (x_t or x0_pred while a run goes): its value is a PNG data URL (ddpm.images.png_data_url),
    shown as an <img> that the page scales up pixelated. Not a gr.Image: gradio files every image it is given
    (PNG again, a hash, its cache, path checks, then a second request from the browser), ~3 ms per image per frame
    on the two cores torch samples on; a data URL costs gradio next to nothing."""
    alt, style = label.replace('"', "'"), f"height: {height}px" if height else "height: auto"
    return gr.HTML(None, label=label, show_label=True, container=True, elem_id=elem_id,
                   elem_classes=["pixelated", "live"], min_height=height, js_on_load=None,
                   html_template=f"${{value ? '<img src=\"' + value + '\" alt=\"{alt}\" style=\"{style}\">' : ''}}")


def sampling_controls(c: SimpleNamespace, v0: ModelView, *, pair: bool = False,
                      extra: Callable[[], gr.Slider] | None = None, prefix: str = "") -> None:
    """A tab's sampling controls, added to c, at the model's recommendation: class, CFG, interval, steps, seed, image
    count and, under Advanced, sampler, eta, spacing, `extra()` (the tab's own slider) and precision. pair: classes
    A and B, seeds A and B and a number of images along a path (interpolation)."""
    o0 = v0.options
    c.label = gr.Dropdown(v0.labels, value=v0.labels[0] if v0.labels else None, label="Class A" if pair else "Class",
                          visible=v0.conditional, allow_custom_value=True)
    c.label_b = gr.Dropdown([interp_handlers.SAME_CLASS, *v0.labels], value=interp_handlers.SAME_CLASS,
                            label="Class B", visible=v0.conditional, info="guidance blends from A's class to B's"
                            ) if pair else None
    c.cfg = gr.Slider(0, CFG_MAX, value=v0.cfg, step=0.25, label="CFG scale (guidance)", visible=v0.conditional,
                      info=v0.cfg_info)
    c.scales = gr.JSON(v0.class_scales, visible=False)  # read by CLASS_SCALE_JS
    c.interval = gr.Checkbox(v0.interval is not None, label=v0.interval_label, visible=v0.interval is not None,
                             elem_id=f"{prefix}interval", info="the model's recommendation: the CFG scale applies only "
                             "inside this range; outside it sampling is plain conditional (w = 1)")
    c.steps = gr.Slider(1, v0.T, value=o0.steps, step=1, label="Steps")
    with gr.Row(equal_height=True):
        c.seed = gr.Number(value=0, label="Seed A" if pair else "Seed", precision=None, scale=3, min_width=100)
        c.seed_b = gr.Number(value=1, label="Seed B", precision=None, scale=3, min_width=100) if pair else None
        c.dice = gr.Button("Random seeds" if pair else "Random seed", scale=2, min_width=100)
    c.count = (gr.Slider(2, MAX_FRAMES, value=8, step=1, label="Images along the path (k)") if pair else
               gr.Radio(list(IMAGE_COUNTS), value=4, label="Number of images"))
    with gr.Accordion("Advanced", open=False):
        c.sampler = gr.Radio(SAMPLER_CHOICES, value=o0.sampler, label="Sampler")
        c.eta = gr.Slider(0, 1, value=o0.eta, step=0.1, label="DDIM eta (0 = deterministic)",
                          visible=o0.sampler == "ddim")
        c.spacing = gr.Slider(1, MAX_SPACING, value=o0.spacing, step=0.25, label="Time-step spacing",
                              elem_id=f"{prefix}spacing", info="where the steps fall: t = (T-1)(1 - i/(S-1))^p; 1 = "
                              "evenly in t, 2 = quadratic (more steps at low noise, where the details form)")
        c.extra = extra() if extra else None
        c.precision = gr.Radio(list(PRECISIONS), value=o0.precision, label="Precision",
                               info="auto = bf16 when the network batch is 16 or more")
    # the controls' own events, in the browser or without the queue: random seeds, a class's CFG scale, eta shown
    seeds = [c.seed] + ([c.seed_b] if pair else [])
    c.dice.click(lambda: [secrets.randbelow(SEED_MAX + 1) for _ in seeds], None, seeds, queue=False, **PRIVATE)
    c.label.change(None, [c.label, c.scales, c.cfg], c.cfg, js=CLASS_SCALE_JS, queue=False, **PRIVATE)
    c.sampler.change(lambda s: gr.update(visible=s == "ddim"), c.sampler, c.eta, queue=False, **PRIVATE)


def control_updates(c: SimpleNamespace, v: ModelView) -> dict:
    """The updates that move a tab's sampling controls to model view v."""
    u = {c.label: gr.update(choices=v.labels, value=v.labels[0] if v.labels else None, visible=v.conditional),
         c.cfg: gr.update(value=v.cfg, visible=v.conditional, info=v.cfg_info), c.scales: v.class_scales,
         c.interval: gr.update(value=v.interval is not None, visible=v.interval is not None, label=v.interval_label),
         c.steps: gr.update(maximum=v.T, value=v.options.steps), c.sampler: v.options.sampler,
         c.eta: gr.update(value=v.options.eta, visible=v.options.sampler == "ddim"), c.spacing: v.options.spacing}
    if c.label_b is not None:
        u[c.label_b] = gr.update(choices=[interp_handlers.SAME_CLASS, *v.labels], value=interp_handlers.SAME_CLASS,
                                 visible=v.conditional)
    return u


def buttons(o: SimpleNamespace, label: str) -> None:
    """A run button and its Stop button, added to o."""
    with gr.Row():
        o.run = gr.Button(label, variant="primary", scale=2)
        o.stop = gr.Button("Stop", variant="stop", scale=1)


def run_panel(o: SimpleNamespace, p: str) -> None:
    """The status line, live x_t and x0_pred, and the scrubber of a streamed run, added to o (elem_ids start with p)."""
    o.status = gr.Markdown("Press the button to start.", elem_id=f"{p}status", elem_classes="status")
    with gr.Row():
        o.live_xt = live_frame("xₜ (current sample)", f"{p}live-xt", height=LIVE_HEIGHT)
        o.live_x0 = live_frame("x₀ prediction", f"{p}live-x0", height=LIVE_HEIGHT)
    o.scrubber = gr.Slider(0, 1, value=0, step=1, label="Scrub the finished run (recorded steps)", interactive=False,
                           elem_id=f"{p}scrubber")
    o.frames = gr.State([], time_to_live=3600)  # this session's recorded run (a list of ddpm.frames.Frame)


def results_row(o: SimpleNamespace, p: str, *, label: str = "Final images (PNG)",
                what: str = "Trajectory: xₜ | x₀ prediction", wide: bool = False) -> None:
    """The final image, the MP4 and the downloads of a run, added to o (elem_ids start with p); wide: the final
    image (a strip) on a row of its own above the others."""
    final = dict(label=label, format="png", elem_classes="pixelated", interactive=False, elem_id=f"{p}final",
                 buttons=["download", "fullscreen"])
    if wide:
        o.final = gr.Image(**final)
    with gr.Row(equal_height=False):
        if not wide:
            o.final = gr.Image(**final, height=300)
        o.video = gr.Video(label=f"{what} (MP4)", autoplay=True, loop=True, height=300, interactive=False,
                           elem_classes="pixelated", elem_id=f"{p}video")
        with gr.Column():
            o.files = gr.File(label="Downloads: PNG, GIF, MP4", file_count="multiple", interactive=False,
                              elem_id=f"{p}files")
            o.run_info = gr.Markdown(elem_id=f"{p}run-info")


# -- the tabs ----------------------------------------------------------------------------------------------
def generate_tab(v0: ModelView) -> SimpleNamespace:
    """Generate: the sampling controls, the live run, its results, and the guidance explorer."""
    g = SimpleNamespace()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            sampling_controls(g, v0, extra=lambda: gr.Slider(
                0, MAX_REDRAWS, value=v0.options.redraws, step=1, label="Redraw rounds", visible=v0.conditional,
                elem_id="redraws", info="the model checks each finished image: one it reads as another class is "
                "drawn again from new noise, up to this many times (0 = off)"))
            buttons(g, "Generate")
        with gr.Column(scale=2):
            run_panel(g, "")
    results_row(g, "")
    with gr.Column(visible=v0.conditional, variant="panel") as g.explorer:
        with gr.Row(equal_height=True):
            with gr.Column(scale=4):
                gr.Markdown(handlers.EXPLORER_EXPLANATION)
            g.explore = gr.Button("Compare guidance scales", scale=1, min_width=200)
        g.gallery = gr.Gallery(show_label=False, columns=len(GUIDANCE_SCALES), format="png", height=210,
                               object_fit="contain", elem_classes="pixelated", elem_id="explorer", allow_preview=False)
    with gr.Accordion("What am I looking at?", open=True):
        gr.Markdown(handlers.EXPLANATION, elem_classes="explain")
    return g


def editor(label: str, elem_id: str, brush: gr.Brush, **kwargs) -> gr.ImageEditor:
    """An image editor of RGBA numpy pictures (PNG, lossless) on a PX x PX canvas, without layers or crop tools."""
    return gr.ImageEditor(label=label, type="numpy", format="png", image_mode="RGBA", canvas_size=(PX, PX),
                          height=380, layers=False, transforms=(), elem_id=elem_id, elem_classes="pixelated",
                          brush=brush, **kwargs)


def edit_tab(v0: ModelView) -> SimpleNamespace:
    """Start from an image: the picture (upload, example or sketch), a mask painted over it, the model's view of
    them, strength and the sampling controls, and a run streamed like Generate's."""
    e = SimpleNamespace()
    gr.Markdown(edit_handlers.EDIT_EXPLANATION, elem_classes="explain")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            with gr.Row(equal_height=True):
                e.example = gr.Dropdown([], label="Start from an example", scale=3, elem_id="edit-example")
                e.sketch = gr.Button("New sketch (white canvas)", scale=2, min_width=120)
            e.image = editor("Your picture: upload, paste, pick an example or draw", "edit-image",
                             gr.Brush(colors=["#000000", "#808080", "#ffffff"], default_size=9),
                             sources=("upload", "clipboard"))
            e.invert = gr.Checkbox(False, label="Invert (dark on light → light on dark)", elem_id="edit-invert")
        with gr.Column(min_width=300):
            e.mask = editor("Mask: paint over the part to fill in (none: image-to-image)", "edit-mask",
                            gr.Brush(colors=[("#e62828", 0.6)], default_size=20, color_mode="fixed"), sources=())
        with gr.Column(min_width=240):
            e.view = gr.Image(label="What the model starts from (x₀; the part to fill in tinted)", format="png",
                              interactive=False, elem_classes="pixelated", height=300, elem_id="edit-view")
            e.notes = gr.Markdown(elem_id="edit-notes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            e.strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength", elem_id="edit-strength",
                                   info="start at t₀ = strength · (T − 1): 0 keeps the picture, 1 starts from pure "
                                        "noise (use 1 to fill a mask from scratch)")
            sampling_controls(e, v0, prefix="edit-", extra=lambda: gr.Slider(
                0, MAX_JUMPS, value=0, step=1, label="Resampling rounds (RePaint, inpainting only)",
                info="every step is undone (noised back) and done again this many times, so the filled part agrees "
                     "better with the rest; each round costs a run"))
            buttons(e, "Run from this picture")
        with gr.Column(scale=2):
            run_panel(e, "edit-")
    results_row(e, "edit-")
    return e


def interpolate_tab(v0: ModelView) -> SimpleNamespace:
    """Interpolate: two seeds (and classes), k images along the path, live strips, the strip and the morph."""
    i = SimpleNamespace()
    gr.Markdown(interp_handlers.INTERPOLATE_EXPLANATION, elem_classes="explain")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            sampling_controls(i, v0, pair=True, prefix="interp-")
            buttons(i, "Interpolate")
        with gr.Column(scale=2):
            i.status = gr.Markdown("Press **Interpolate** to start.", elem_id="interp-status", elem_classes="status")
            i.live_xt = live_frame("xₜ along the path", "interp-live-xt")
            i.live_x0 = live_frame("x₀ predictions along the path", "interp-live-x0")
            results_row(i, "interp-", label="From seed A to seed B (PNG strip)", what="Morph from A to B", wide=True)
    return i


def forward_tab(v0: ModelView) -> SimpleNamespace:
    """Forward process: x_0 (example or upload) noised to t with a noise seed, and "denoise from here"."""
    f = SimpleNamespace()
    gr.Markdown(handlers.FORWARD_EXPLANATION, elem_classes="explain")
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            f.example = gr.Dropdown([], label="Example image")
            f.x0 = gr.Image(label="x_0 (or upload your own)", sources=["upload"], type="numpy", format="png",
                            elem_classes="pixelated", height=260)
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                f.t = gr.Slider(0, v0.T - 1, value=v0.T // 4, step=1, label="time step t", scale=4)
                f.seed = gr.Number(value=0, label="Noise seed", precision=None, scale=1, min_width=100)
            with gr.Row():
                f.xt = gr.Image(label="x_t ~ q(x_t | x_0)", format="png", interactive=False, elem_classes="pixelated",
                                height=260, elem_id="forward-xt")
                f.text = gr.Markdown()
    with gr.Row(equal_height=False, variant="panel"):
        with gr.Column(scale=1, min_width=260):
            gr.Markdown(edit_handlers.DENOISE_EXPLANATION, elem_classes="explain")
            f.label = gr.Dropdown(v0.labels, value=v0.labels[0] if v0.labels else None, label="Class",
                                  visible=v0.conditional, allow_custom_value=True)
            buttons(f, "Denoise from here")
        with gr.Column(scale=2):
            f.status = gr.Markdown(elem_id="denoise-status", elem_classes="status")
            with gr.Row():
                f.live_xt = live_frame("xₜ, denoising (at the end: x₀)", "denoise-xt", height=260)
                f.live_x0 = live_frame("x₀ prediction", "denoise-x0", height=260)
    f.strip = gr.Gallery(label="x_t at steps evenly spaced in log-SNR", columns=8, format="png", height=170,
                         object_fit="contain", elem_classes="pixelated")
    f.plot = gr.Image(label="Noise schedule", format="png", interactive=False, elem_id="schedule-plot")
    return f
