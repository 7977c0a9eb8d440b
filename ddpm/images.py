"""Tensor <-> image conversions: uint8 arrays, PIL images, grids, GIF and MP4 animations."""

from __future__ import annotations

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
    pal = [f.convert("P", palette=Image.ADAPTIVE) if f.mode == "RGB" else f.convert("L") for f in frames]
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
        stream.options = {"crf": "18", "preset": "veryfast"}
        seq = list(frames) + [frames[-1]] * (hold - 1)
        for img in seq:
            rgb = np.zeros((H, W, 3), dtype=np.uint8)
            rgb[:h, :w] = np.asarray(img.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
