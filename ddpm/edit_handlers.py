"""The app's "start from an image" handlers, without gradio: image-to-image (SDEdit) and inpainting (RePaint) from an
uploaded, picked or drawn picture, and "denoise from here" on the forward-process tab's x_t.

    for update in edit(registry, model, image=editor_value, mask=mask_editor_value, invert=True, strength=0.6,
                       label="7 · Sneaker", seed=0, n_images=4, runs_dir=Path("/tmp/runs"), steps=50):
        ...   # one Prepared (the input as the model gets it), then Live ..., one Finished, as handlers.generate

An image editor's value is a dict {"background", "layers", "composite"} of uint8 arrays (gradio's ImageEditor); an
API client may send a plain picture instead. Bad input raises ValueError when the handler is called (app.py shows
it); the handlers touch the model, so app.py runs them on the torch thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .budget import UNLIMITED, Budget
from .edit import MAX_JUMPS, Edit
from .handlers import STREAM_RATE, Finished, Live, enlarged, stream_run
from .images import ImageLike, load_image, load_mask, to_uint8
from .pipeline import Pipeline
from .registry import ModelRegistry
from .studio import parse_integer, parse_request

EDITOR_PX = 280  # examples go into the editor enlarged (nearest) to about this size, sketches start this size
PAINTED_ALPHA = 32  # a mask-editor pixel with at least this alpha (0..255) is painted: fill it in
MASK_TINT = np.array([230, 40, 40])  # the part to fill in, tinted in the view of the model's input
INVERT_NOTE = "inverted (dark on light became light on dark, like the training images)"

EDIT_EXPLANATION = """
**Image-to-image (SDEdit, Meng et al. 2022).** Your picture x₀ is noised by the forward process to
t₀ = strength · (T − 1), x_t₀ ~ q(x_t₀ | x₀), and the model denoises it from there with the chosen class: a low
strength keeps the outline and redraws the details, strength 1 starts from pure noise and keeps nothing.

**Inpainting (RePaint, Lugmayr et al. 2022).** Paint over the part to fill in. After every step the unpainted part
is put back as your picture noised to that step's t, so only the painted part comes from the model, which has to
make it agree with the rest; the unpainted pixels end exactly as they were.

**Sketches.** Fashion-MNIST's training images are light items on black; a dark drawing on white is inverted
(*Invert*) so the model sees it the way it learned. Picking an example unticks it: examples are already so.
"""

DENOISE_EXPLANATION = """
**Denoise from here** runs the sampler from the xₜ shown above down to t = 0: SDEdit from x₀ with strength
t / (T − 1) and this noise seed, so it starts from exactly this xₜ. From a small t the model gives x₀ back
almost unchanged; from a large t little of x₀ is left, and it draws a new image of the chosen class.
"""


@dataclass(frozen=True)
class Prepared:
    """The input as the model gets it: x_0 at the model's size (the part to fill in tinted), enlarged, and what
    was done to the picture to get there."""

    view: Image.Image
    notes: str


# -- pictures from the page ------------------------------------------------------------------------------
def flatten(picture: np.ndarray) -> np.ndarray:
    """A uint8 picture (H, W), (H, W, 3) or (H, W, 4) on white: (H, W) where it is gray (R = G = B), else
    (H, W, 3). Transparent parts (an empty canvas around a sketch) become white."""
    a = np.asarray(picture)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"the picture must be a uint8 image (H, W), (H, W, 3) or (H, W, 4), got {a.dtype} {a.shape}")
    if a.ndim == 2 or a.shape[2] == 1:
        return a.reshape(a.shape[:2])
    rgb = a[..., :3].astype(np.float32)
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        rgb = rgb * alpha + 255.0 * (1.0 - alpha)
    rgb = np.round(rgb).astype(np.uint8)
    gray = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0] if gray else rgb


def editor_picture(value: object) -> ImageLike | None:
    """The picture in an image editor's value (its composite: background and strokes), flattened on white; a plain
    picture (an API client's path, PIL image or array) as it is; None without one or for an empty canvas."""
    if isinstance(value, dict):
        value = value.get("composite") if value.get("composite") is not None else value.get("background")
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.ndim == 3 and value.shape[2] == 4 and not value[..., 3].any():
            return None  # a canvas nobody drew on
        return flatten(value)
    return value


def painted_mask(value: object) -> ImageLike | None:
    """The part to fill in from the mask editor: uint8 (H, W), 255 where any of its layers is painted; a plain
    picture (an API client's mask: white or opaque = fill, see ddpm.images.load_mask) as it is; None if nothing is
    painted."""
    if not isinstance(value, dict):
        return value
    layers = [np.asarray(a) for a in value.get("layers") or [] if a is not None]
    alphas = [a[..., 3] for a in layers if a.ndim == 3 and a.shape[2] == 4]
    if not alphas:
        return None
    painted = np.any([a >= PAINTED_ALPHA for a in alphas], axis=0)
    return (painted * 255).astype(np.uint8) if painted.any() else None


def exact_shrink(picture: ImageLike, size: int) -> ImageLike:
    """A picture that is an exact nearest-neighbour enlargement of a size x size one (m x m blocks of one value, as
    the examples are shown in the editor) shrunk back exactly; any other picture as it is (load_image resizes it)."""
    if not isinstance(picture, np.ndarray) or picture.ndim < 2:
        return picture
    h, w = picture.shape[:2]
    if h != w or h == size or h % size:
        return picture
    m = h // size
    small = picture[::m, ::m]
    return small if np.array_equal(np.repeat(np.repeat(small, m, axis=0), m, axis=1), picture) else picture


def dark_background(examples: Sequence[np.ndarray]) -> bool:
    """Whether a model's images are light on dark (Fashion-MNIST, MNIST): its examples' border pixels average below
    mid-gray. Then a sketch (dark on white) should be inverted; examples: uint8 (H, W, C)."""
    if not examples:
        return False
    borders = [np.concatenate([a[0].ravel(), a[-1].ravel(), a[:, 0].ravel(), a[:, -1].ravel()]) for a in examples]
    return float(np.mean(np.concatenate(borders))) < 128


def invert_default(registry: ModelRegistry, model: object) -> bool:
    """Whether the Invert box starts ticked for this model (dark_background of its examples)."""
    return dark_background([a for _, a in registry.examples(model)])


def editor_value(picture: np.ndarray) -> dict:
    """An image editor's value holding `picture` as its background, with nothing drawn on it."""
    return {"background": picture, "layers": [], "composite": picture}


def editor_example(registry: ModelRegistry, model: object, name: object) -> dict | None:
    """The named example as an editor's value: uint8 (S, S) or (S, S, 3), enlarged nearest by a whole factor to about
    EDITOR_PX (exact_shrink reads it back exactly); None for a name that is not the model's (a stale event)."""
    for n, a in registry.examples(model):
        if n == name:
            return editor_value(np.asarray(enlarged(a, EDITOR_PX)))
    return None


def new_sketch(registry: ModelRegistry, model: object) -> tuple[dict, bool]:
    """A white EDITOR_PX canvas to draw on (an editor's value), and whether to invert it for this model."""
    return editor_value(np.full((EDITOR_PX, EDITOR_PX), 255, dtype=np.uint8)), invert_default(registry, model)


def mask_canvas(image: object) -> dict | None:
    """The mask editor's value for the input editor's value `image`: its picture on white, nothing painted yet."""
    picture = editor_picture(image)
    return editor_value(picture) if isinstance(picture, np.ndarray) else None


def input_view(x0: torch.Tensor, mask: torch.Tensor | None, px: int = 224) -> Image.Image:
    """x0 (1, C, H, W) in [-1, 1] as RGB, the mask's part (1, 1, H, W) tinted, enlarged to about px."""
    a = to_uint8(x0)[0]
    rgb = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a.copy()
    if mask is not None:
        m = mask[0, 0].cpu().numpy()
        rgb[m] = np.round(0.5 * rgb[m] + 0.5 * MASK_TINT).astype(np.uint8)
    return enlarged(rgb, px)


# -- image-to-image and inpainting -------------------------------------------------------------------------
def prepare_edit(pipe: Pipeline, image: object, mask: object = None, *, invert: object = False, strength: object = 0.6,
                 jumps: object = 0) -> Edit:
    """The Edit of an editor's picture and painted mask (not yet checked: pipe.stream checks strength, mask, jumps)."""
    picture = editor_picture(image)
    if picture is None:
        raise ValueError("no input image: upload one, pick an example or draw on the canvas")
    if not isinstance(invert, bool):
        raise ValueError(f"invert must be true or false, got {invert!r}")
    small = exact_shrink(picture, pipe.image_shape[1])
    m = painted_mask(mask)
    if m is not None and small is not picture:  # painted over the enlarged picture: read it at that size
        h, w = picture.shape[:2]
        m = load_mask(m, pipe.image_shape, image_size=(w, h))
    jumps = parse_integer("jumps (resampling rounds)", jumps, 0, MAX_JUMPS)
    e = pipe.edit(small, strength=strength, mask=m, jumps=jumps)
    notes = e.notes
    if small is not picture:
        notes = (f"read back exactly from its {picture.shape[1]}x{picture.shape[0]} enlargement", *notes)
    if invert:
        return dataclasses.replace(e, init=-e.init, notes=(*notes, INVERT_NOTE))
    return dataclasses.replace(e, notes=notes)


def edit(registry: ModelRegistry, model: object, *, image: object, mask: object = None, invert: object = False,
         strength: object = 0.6, jumps: object = 0, label: object, seed: object, n_images: object,
         limit_guidance: object = False, runs_dir: Path, stream_rate: float = STREAM_RATE,
         budget: Budget = UNLIMITED, **settings: object) -> Iterator[Prepared | Live | Finished]:
    """Image-to-image from `image` (an editor's value or a picture), inpainting where `mask` is painted: checked now
    (ValueError), then one Prepared, and the run streamed as handlers.generate streams it (images i: seed + i).

    settings: SamplerOptions fields by name, as for generate (edits never redraw). budget: the cost is images x the
    steps that run (round(strength x steps), Edit.timesteps) x (1 + jumps)."""
    pipe = registry.get(model)
    request = parse_request(pipe, label=label, seed=seed, n_images=n_images, limit_guidance=limit_guidance,
                            **{**settings, "redraws": 0})
    e = prepare_edit(pipe, image, mask, invert=invert, strength=strength, jumps=jumps)
    e.validate(pipe.image_shape, request.n_images)  # strength, mask and jumps, before they are counted
    ts = e.timesteps(pipe.T, request.options)
    budget.check_request(request.n_images, len(ts), jumps=e.jumps)
    steps = budget.limit(request.stream(pipe, e))
    about = f"seed {request.seed} · strength {float(e.strength):g}" + (" · inpainting" if e.mask is not None else "")
    info = [request.describe(), f"strength {float(e.strength):g}: from t = {ts[0]}"]
    if e.mask is not None:
        info.append(f"inpainting {int(e.mask.sum())} of {e.mask[0, 0].numel()} pixels"
                    + (f", {e.jumps} resampling rounds" if e.jumps else ""))
    notes = "; ".join(e.notes) or "used as it is"
    name = f"edit_seed{request.seed}_strength{float(e.strength):g}"

    def updates() -> Iterator[Prepared | Live | Finished]:
        yield Prepared(input_view(e.init, e.mask), f"**The model's x₀:** {notes}")
        yield from stream_run(steps, pipe.schedule, ts, runs_dir=runs_dir, stream_rate=stream_rate, name=name,
                              about=about, info=" · ".join([*info, f"input: {notes}"]))

    return updates()


# -- denoise from here (the forward-process tab) -----------------------------------------------------------
def denoise_from_here(registry: ModelRegistry, model: object, *, x0: np.ndarray | None, t: object, seed: object,
                      label: object, runs_dir: Path, stream_rate: float = STREAM_RATE,
                      budget: Budget = UNLIMITED) -> Iterator[Live | Finished]:
    """The sampler from the forward tab's x_t (x0 uint8 at the model's size, noise seed `seed`) down to t = 0: SDEdit
    with strength t / (T-1) and that seed, whose first input is exactly that x_t (studio.forward_noise); the model's
    recommended settings for the class. budget: the cost is the steps that run."""
    pipe = registry.get(model)
    if x0 is None:
        raise ValueError("pick an example or upload an image first: there is no x_t to denoise")
    t_i = parse_integer("t", t, 0, pipe.T - 1)
    request = parse_request(pipe, label=label, seed=seed, n_images=1, limit_guidance=True, redraws=0)
    e = pipe.edit(load_image(x0, pipe.image_shape)[0], strength=t_i / (pipe.T - 1))
    ts = e.timesteps(pipe.T, request.options)
    budget.check_request(1, len(ts))
    steps = budget.limit(request.stream(pipe, e))
    return stream_run(steps, pipe.schedule, ts, runs_dir=runs_dir,
                      stream_rate=stream_rate, name=f"denoise_t{t_i}_seed{request.seed}",
                      about=f"from t = {t_i} · noise seed {request.seed}",
                      info=f"{request.describe()} · from the forward process's x_t at t = {t_i}")
