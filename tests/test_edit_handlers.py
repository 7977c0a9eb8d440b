"""ddpm.edit_handlers: the "start from an image" tab and "denoise from here" as plain functions, on the shared tiny
checkpoint (12x12 grayscale, 3 classes), against the library's own pipe.stream(edit=...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import edit_handlers as eh
from ddpm import handlers
from ddpm.budget import Budget, BudgetError
from ddpm.frames import Frame
from ddpm.images import load_image
from ddpm.options import SamplerOptions
from ddpm.samplers import run_to_end

SETTINGS = dict(label="1 · Vertical", cfg=3.0, steps=10, seed=3, n_images=1, sampler="ddim", eta=0.0,
                precision="fp32")
OPTIONS = SamplerOptions(sampler="ddim", steps=10, cfg=3.0, eta=0.0, precision="fp32")  # what SETTINGS ask for
BAR = np.zeros((12, 12), dtype=np.uint8)
BAR[:, 5:7] = 255  # a vertical bar, light on black like the tiny model's data


def rgba(gray: np.ndarray, scale: int = 1, alpha: int = 255) -> np.ndarray:
    """A gray uint8 (H, W) picture as the editor sends it: RGBA, enlarged nearest by scale."""
    big = np.repeat(np.repeat(gray, scale, axis=0), scale, axis=1)
    return np.dstack([big, big, big, np.full_like(big, alpha)])


def layer(shape: tuple[int, int], rows: slice) -> np.ndarray:
    """A mask editor's layer (H, W, 4): half-transparent red strokes over `rows`, nothing elsewhere."""
    a = np.zeros((*shape, 4), dtype=np.uint8)
    a[rows] = (230, 40, 40, 153)
    return a


def run(registry, model, tmp_path, **kw) -> list:
    return list(eh.edit(registry, model, **{**SETTINGS, **kw}, runs_dir=tmp_path / "runs", stream_rate=1e9))


# -- image-to-image and inpainting ---------------------------------------------------------------------------
def test_image_to_image_streams_like_generate_and_samples_what_the_library_does(registry, model, tmp_path):
    value = eh.editor_value(rgba(BAR, scale=20))  # an example as the editor holds it: 240x240
    prepared, sampling, *live, done = run(registry, model, tmp_path, image=value, strength=0.5)
    assert isinstance(prepared, eh.Prepared) and "read back exactly from its 240x240 enlargement" in prepared.notes
    small = np.asarray(prepared.view.convert("L").resize((12, 12), Image.NEAREST))
    assert np.array_equal(small, BAR)  # the model's x_0 is the 12x12 picture itself
    assert sampling == handlers.Live("Sampling… seed 3 · strength 0.5")
    assert [u.status.split(" · ")[0] for u in live] == [f"**Step {i} / 5**" for i in range(1, 6)]  # 0.5 x 10 steps
    assert isinstance(done, handlers.Finished) and done.status.startswith("**Done:** 5 steps in ")
    assert "strength 0.5: from t = 500" in done.run_info and len(done.frames) == 5
    assert all(isinstance(f, Frame) for f in done.frames) and done.mp4.is_file() and done.gif.is_file()
    expected = run_to_end(registry.get(model).stream([1], seed=3, options=OPTIONS, init=BAR, strength=0.5))
    assert torch.equal(done.images, expected)
    with Image.open(done.png) as im:
        assert im.format == "PNG"


def test_strength_0_keeps_the_picture_and_invert_turns_it_over(registry, model, tmp_path):
    x0 = load_image(BAR, (1, 12, 12))[0]
    *_, kept = run(registry, model, tmp_path, image=BAR, strength=0.0)
    assert kept.status.startswith("**Done:** 1 step in ") and torch.equal(kept.images, x0)
    prepared, *_, inverted = run(registry, model, tmp_path, image=BAR, strength=0.0, invert=True)
    assert torch.equal(inverted.images, -x0) and eh.INVERT_NOTE in prepared.notes
    assert "input: " + eh.INVERT_NOTE in inverted.run_info


def test_a_sketch_on_a_transparent_canvas_is_read_on_white(registry, model, tmp_path):
    canvas = np.zeros((240, 240, 4), dtype=np.uint8)  # nothing drawn: transparent
    canvas[:, 95:137] = (0, 0, 0, 255)  # a black stroke (not on the 20-pixel grid: resized, not read back)
    picture = eh.editor_picture({"background": None, "layers": [canvas], "composite": canvas})
    assert picture.shape == (240, 240) and picture[0, 0] == 255 and picture[0, 120] == 0  # gray: one channel
    prepared, *_, done = run(registry, model, tmp_path, image={"composite": canvas}, strength=0.0, invert=True)
    assert "resized 240x240 to the model's 12x12" in prepared.notes and eh.INVERT_NOTE in prepared.notes
    assert "colour" not in prepared.notes  # a gray drawing is not called colour
    assert float(done.images[0, 0, 0, 0]) == -1.0 and float(done.images[0, 0, 0, 5]) > 0.9  # inverted: light on dark


def test_inpainting_keeps_the_known_pixels_exactly(registry, model, tmp_path):
    image = eh.editor_value(rgba(BAR, scale=20))
    mask = {"background": None, "layers": [layer((240, 240), slice(0, 120))], "composite": None}  # the top half
    prepared, *_, done = run(registry, model, tmp_path, image=image, mask=mask, strength=1.0, n_images=4, jumps=1)
    x0 = load_image(BAR, (1, 12, 12))[0]
    assert done.images.shape == (4, 1, 12, 12)
    assert torch.equal(done.images[:, :, 6:], x0[:, :, 6:].expand(4, 1, 6, 12))  # the bottom half: the input
    assert not torch.equal(done.images[:, :, :6], x0[:, :, :6].expand(4, 1, 6, 12))  # the top half: generated
    assert "inpainting 72 of 144 pixels, 1 resampling rounds" in done.run_info and "inpainting" in done.status
    view = np.asarray(prepared.view.resize((12, 12), Image.NEAREST)).astype(int)
    assert (view[:6, :, 0] > view[:6, :, 2]).all() and (view[6:, :, 0] == view[6:, :, 2]).all()  # tinted: top only
    expected = run_to_end(registry.get(model).stream([1] * 4, seed=3, options=OPTIONS, init=BAR, strength=1.0,
                                                     mask=torch.arange(12).view(12, 1).expand(12, 12) < 6, jumps=1))
    assert torch.equal(done.images, expected)


def test_nothing_painted_is_image_to_image(registry, model, tmp_path):
    empty = {"background": None, "layers": [layer((12, 12), slice(0, 0))], "composite": None}
    assert eh.painted_mask(empty) is None and eh.painted_mask({"layers": []}) is None
    *_, done = run(registry, model, tmp_path, image=BAR, mask=empty, strength=0.5)
    assert "inpainting" not in done.run_info


@pytest.mark.parametrize("kw, message", [
    (dict(image=None), "no input image: upload one, pick an example or draw on the canvas"),
    (dict(image={"background": None, "layers": [], "composite": None}), "no input image"),
    (dict(image={"composite": np.zeros((50, 50, 4), dtype=np.uint8)}), "no input image"),  # an empty canvas
    (dict(image="/no/such/picture.png"), "does not exist"),
    (dict(image=np.zeros((40, 40), dtype=np.uint8), mask=np.zeros((30, 30), dtype=np.uint8)),
     "the mask is 30x30 but must be 12x12 or 40x40"),
    (dict(image=BAR, strength=1.5), "strength must be a number in [0, 1]"),
    (dict(image=BAR, strength=-0.1), "strength must be a number in [0, 1]"),
    (dict(image=BAR, strength="half"), "strength must be a number in [0, 1]"),
    (dict(image=BAR, jumps=11), "jumps (resampling rounds) must be an integer in 0..10, got 11"),
    (dict(image=BAR, jumps=2), "jumps (RePaint resampling) need a mask"),
    (dict(image=BAR, invert="yes"), "invert must be true or false, got 'yes'"),
    (dict(image=BAR, steps=0), "steps must be an integer in 1..1000"),
    (dict(image=BAR, label="Dog"), "unknown class 'Dog'"),
])
def test_bad_input_is_refused_when_called_with_a_message(registry, model, tmp_path, kw, message):
    with pytest.raises(ValueError) as err:
        eh.edit(registry, model, **{**SETTINGS, **kw}, runs_dir=tmp_path / "runs")  # at the call, not at next()
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_an_unreadable_file_is_refused(registry, model, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="is not a readable image"):
        eh.edit(registry, model, **SETTINGS, image=str(junk), runs_dir=tmp_path)


# -- the pictures from the page ------------------------------------------------------------------------------
def test_the_budget_counts_the_steps_that_run_and_the_resampling_rounds(registry, model, tmp_path):
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[:6] = 255
    kw = dict(image=BAR, mask=mask, strength=0.5, jumps=2, n_images=4)  # round(0.5 x 10) = 5 steps run, 3 times
    calls = []
    hook = registry.get(model).model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(BudgetError, match=r"4 images x 5 steps x \(1 \+ 2 resampling rounds\) = 60 image-steps; "
                                              r"this server allows 59"):
            eh.edit(registry, model, **SETTINGS | kw, runs_dir=tmp_path / "runs", budget=Budget(59))
        with pytest.raises(BudgetError, match=r"1 image x 15 steps = 15 image-steps; this server allows 14"):
            eh.denoise_from_here(registry, model, x0=BAR, t=300, seed=0, label=1, runs_dir=tmp_path / "runs",
                                 budget=Budget(14))  # t = 300 of 999: 15 of the 50 recommended steps
        assert not calls and not (tmp_path / "runs").exists()  # refused: nothing ran
        *_, done = eh.edit(registry, model, **SETTINGS | kw, runs_dir=tmp_path / "runs", budget=Budget(60))
        assert done.status.startswith("**Done:** 5 steps")  # at the cap: it runs
        with pytest.raises(BudgetError, match="ran longer than this server's limit"):
            list(eh.denoise_from_here(registry, model, x0=BAR, t=300, seed=0, label=1, runs_dir=tmp_path / "runs",
                                      budget=Budget(time_limit_s=1e-6)))
    finally:
        hook.remove()


def test_flatten_composites_on_white_and_keeps_colour():
    a = np.zeros((2, 2, 4), dtype=np.uint8)
    a[0, 0] = (0, 0, 0, 255)
    a[0, 1] = (0, 0, 0, 0)  # transparent: white
    a[1, 0] = (0, 0, 0, 128)  # half: mid-gray
    assert flatten_ok(eh.flatten(a), [[0, 255], [127, 255]])
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    assert eh.flatten(colour).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="uint8"):
        eh.flatten(np.zeros((2, 2), dtype=np.float32))


def flatten_ok(got: np.ndarray, expected: list) -> bool:
    return got.shape == (2, 2) and np.array_equal(got, np.array(expected, dtype=np.uint8))


def test_exact_shrink_reads_back_enlargements_only():
    big = np.repeat(np.repeat(BAR, 10, axis=0), 10, axis=1)
    assert np.array_equal(eh.exact_shrink(big, 12), BAR)
    smudged = big.copy()
    smudged[3, 3] = 7  # a stroke: not an enlargement any more, load_image resizes it
    assert eh.exact_shrink(smudged, 12) is smudged
    assert eh.exact_shrink(big[:, :110], 12).shape == (120, 110)  # not square
    assert eh.exact_shrink("a/path.png", 12) == "a/path.png"


def test_the_examples_the_mask_canvas_and_a_new_sketch(registry, model):
    name = handlers.example_choices(registry, model)[0]
    value = eh.editor_example(registry, model, name)
    assert value["layers"] == [] and value["background"] is value["composite"]
    assert value["background"].shape[0] >= eh.EDITOR_PX - 12 and value["background"].shape[0] % 12 == 0
    assert eh.editor_example(registry, model, "5 · Sandal") is None  # another model's example: a stale event
    assert eh.mask_canvas(None) is None
    assert eh.mask_canvas({"background": None, "layers": [], "composite": None}) is None
    canvas = eh.mask_canvas({"composite": rgba(BAR, scale=2, alpha=255)})
    assert canvas["background"].shape == (24, 24) and canvas["layers"] == []
    sketch, invert = eh.new_sketch(registry, model)
    assert sketch["background"].shape == (eh.EDITOR_PX, eh.EDITOR_PX) and sketch["background"].min() == 255
    assert invert is True  # the tiny model's images are light bars on black


def test_dark_background():
    assert eh.dark_background([BAR[..., None]]) and not eh.dark_background([255 - BAR[..., None]])
    assert not eh.dark_background([])


# -- denoise from here -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [300, 999])
def test_denoise_from_here_starts_from_the_forward_tabs_x_t(registry, model, tmp_path, t):
    pipe = registry.get(model)
    x0 = BAR[..., None]
    _, _, x_t = handlers.forward_x_t(pipe, x0, t, 5)  # what the forward tab shows at t with noise seed 5
    inputs = []
    hook = pipe.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        *live, done = eh.denoise_from_here(registry, model, x0=x0, t=t, seed=5, label="1 · Vertical",
                                           runs_dir=tmp_path, stream_rate=1e9)
    finally:
        hook.remove()
    first = inputs[0][:1]  # the sampler's first network input (guided: the batch holds it twice)
    if t < pipe.T - 1:
        assert torch.equal(first, x_t)
    else:  # strength 1 starts from the noise itself; x_t at T-1 holds sqrt(alpha_bar) x_0 on top, ~0
        assert torch.allclose(first, x_t, atol=0.02)
    steps = round(t / (pipe.T - 1) * pipe.recommended.steps)
    assert done.status.startswith(f"**Done:** {steps} steps") and f"from t = {t} · noise seed 5" in done.status
    assert live[1].status.startswith(f"**Step 1 / {steps}** · t = {t} ")


def test_denoise_from_here_needs_an_x0_and_a_good_t(registry, model, tmp_path):
    with pytest.raises(ValueError, match="pick an example or upload an image first"):
        eh.denoise_from_here(registry, model, x0=None, t=10, seed=0, label=1, runs_dir=tmp_path)
    with pytest.raises(ValueError, match=r"t must be an integer in 0\.\.999, got 1000"):
        eh.denoise_from_here(registry, model, x0=BAR, t=1000, seed=0, label=1, runs_dir=tmp_path)
    *_, done = eh.denoise_from_here(registry, model, x0=BAR, t=0, seed=0, label=1, runs_dir=tmp_path)
    assert torch.equal(done.images, load_image(BAR, (1, 12, 12))[0])  # t = 0: nothing to denoise
