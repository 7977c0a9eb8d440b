"""Tensor <-> image conversions: uint8 arrays, PIL images, grids, GIF and MP4 animations."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 (B, H, W, C) -> one uint8 (rows*H + pads, nrow*W + pads, C) image; nrow images per row."""
    b, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = np.full((rows * h + (rows + 1) * pad, nrow * w + (nrow + 1) * pad, c), pad_value, dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def to_pil(array: np.ndarray, *, scale: int = 1) -> Image.Image:
    """uint8 (H, W, C) -> PIL image, enlarged by an integer factor with nearest-neighbour (crisp pixels)."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def png_data_url(img: Image.Image) -> str:
    """img as a PNG data URL ("data:image/png;base64,..."): lossless, for a page to show without a file. zlib level 1:
    0.2-0.5 ms for a 4x4 grid of 28x28 images (noise does not compress at any level; smooth grids do at level 1)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grid_image(x: torch.Tensor, *, nrow: int | None = None, scale: int = 1, pad: int = 2) -> Image.Image:
    """(B, C, H, W) in [-1, 1] -> a PIL grid image."""
    return to_pil(make_grid(to_uint8(x), nrow=nrow, pad=pad), scale=scale)


def save_grid(x: torch.Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(x, nrow=nrow, scale=scale).save(path)
    return path


def save_gif(frames: Sequence[Image.Image], path: str | Path, *, fps: float = 12, hold_last_s: float = 1.5) -> Path:
    """An animated GIF that loops, holding the last frame a little longer."""
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame_ms = int(round(1000 / fps))
    durations = [frame_ms] * (len(frames) - 1) + [int(hold_last_s * 1000)]
    # colour: a 256-colour palette per frame by fast octree (0.1 s for the app's 40 frames of a 4x4 emoji grid;
    # PIL's median-cut ADAPTIVE took 2.0 s for a mean error 0.3-1.2 levels lower)
    pal = [f.quantize(256, method=Image.Quantize.FASTOCTREE) if f.mode == "RGB" else f.convert("L") for f in frames]
    pal[0].save(path, save_all=True, append_images=pal[1:], duration=durations, loop=0, optimize=False)
    return path


def save_mp4(frames: Sequence[Image.Image], path: str | Path, *, fps: float = 12, hold_last_s: float = 1.5) -> Path:
    """An H.264 MP4 (yuv420p, plays in browsers) via PyAV; frame sides are padded to even numbers."""
    import av

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = frames[0].size
    W, H = w + w % 2, h + h % 2
    fps_int = max(1, int(round(fps)))
    hold = max(1, int(round(hold_last_s * fps_int)))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps_int)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        # ultrafast + animation: 0.06 s for the app's 40 frames at 504x244 (veryfast: 0.12 s), ~20% larger
        stream.options = {"crf": "18", "preset": "ultrafast", "tune": "animation"}
        seq = list(frames) + [frames[-1]] * (hold - 1)
        for img in seq:
            rgb = np.zeros((H, W, 3), dtype=np.uint8)
            rgb[:h, :w] = np.asarray(img.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_gif_and_mp4(frames: Sequence[Image.Image], stem: str | Path, *, fps: float = 12) -> tuple[Path, Path]:
    """stem.gif and stem.mp4 of the same frames, written at once on two threads (PIL's and libx264's encoders
    release the GIL: after sampling both cores are free, and this takes the longer of the two, not their sum)."""
    from concurrent.futures import ThreadPoolExecutor

    stem = Path(stem)
    with ThreadPoolExecutor(1) as pool:
        gif = pool.submit(save_gif, frames, stem.with_name(stem.name + ".gif"), fps=fps)
        mp4 = save_mp4(frames, stem.with_name(stem.name + ".mp4"), fps=fps)
        return gif.result(), mp4


ImageLike = str | Path | Image.Image | np.ndarray


def _open(source: ImageLike, what: str) -> Image.Image:
    """A PIL image from a path, a PIL image or a uint8 array (H, W), (H, W, 3) or (H, W, 4); ValueError if unreadable."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{what} as an array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {source.dtype} "
                             f"{source.shape}")
        return Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source)
    if isinstance(source, (str, Path)):
        try:
            with Image.open(source) as img:
                img.load()
                return img
        except FileNotFoundError:
            raise ValueError(f"{what} {str(source)!r} does not exist") from None
        except (OSError, SyntaxError) as e:
            raise ValueError(f"{what} {str(source)!r} is not a readable image (PNG, JPEG, WebP, ...): {e}") from None
    raise ValueError(f"{what} must be a file path, a PIL image or a uint8 array, got {type(source).__name__}")


def _square(img: Image.Image) -> tuple[Image.Image, str]:
    """The central square of img, and a note if it had to be cropped."""
    w, h = img.size
    if w == h:
        return img, ""
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)), f"centre-cropped to {side}x{side}"


def load_image(source: ImageLike, shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[str], tuple[int, int]]:
    """Any image -> ((1, C, H, W) float32 in [-1, 1] for a model of `shape` (C, H, W), notes of what was done, the
    input's (width, height)).

    Transparency is composited on white; colour is converted to the model's channels (1: luminance, 3: RGB); a
    non-square image is centre-cropped, then resized (Lanczos) to H x W.
    """
    c, h, w = shape
    img = _open(source, "the input image")
    notes = []
    size0 = img.size
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        if rgba.getchannel("A").getextrema()[0] < 255:  # some transparency: composite; fully opaque: nothing to say
            notes.append("transparency composited on white")
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if c == 1 else "RGB"
    if img.mode != target:
        rgb = np.asarray(img.convert("RGB"))
        colour = bool((rgb != rgb[..., :1]).any())  # a gray picture stored as RGB is not colour
        img = img.convert(target)
        if colour != (c == 3):
            notes.append(f"converted {'colour' if colour else 'grayscale'} to {'grayscale' if c == 1 else 'RGB'}")
    img, cropped = _square(img)
    if cropped:
        notes.append(cropped)
    if img.size != (w, h):
        img = img.resize((w, h), Image.LANCZOS)
        notes.append(f"resized {size0[0]}x{size0[1]} to the model's {w}x{h}")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    x = x.view(h, w, 1) if x.dim() == 2 else x
    return (x.permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0).clamp(-1.0, 1.0), notes, size0


def load_mask(source: ImageLike, shape: tuple[int, int, int], *, image_size: tuple[int, int] | None = None
              ) -> torch.Tensor:
    """A painted mask -> (1, 1, H, W) bool, True where the model generates (the painted part), False where the image
    is kept.

    Painted = opaque (alpha >= 128) where the mask has transparency, else bright (luminance >= 128, white = fill).
    The mask must have the input image's size (image_size, (width, height), before any crop or resize) or the
    model's; it is cropped and resized like the image, a model pixel generated when at least half of it is painted.
    """
    _, h, w = shape
    img = _open(source, "the mask")
    allowed = [(w, h)] + ([tuple(image_size)] if image_size is not None and tuple(image_size) != (w, h) else [])
    if img.size not in allowed:
        sizes = " or ".join(f"{a}x{b}" for a, b in allowed)
        raise ValueError(f"the mask is {img.width}x{img.height} but must be {sizes} (the input image"
                         f"{'' if len(allowed) == 1 else ' or the model'}): paint it on the same image")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    plane = img.convert("RGBA").getchannel("A") if has_alpha else img.convert("L")
    painted = Image.fromarray(((np.asarray(plane) >= 128) * 255).astype(np.uint8))
    painted, _ = _square(painted)
    if painted.size != (w, h):
        painted = painted.resize((w, h), Image.BOX)
    return torch.from_numpy(np.asarray(painted) >= 128).view(1, 1, h, w)
