"""Sample images from a checkpoint: a grid PNG, raw uint8 arrays for evaluation, and the denoising GIF.

    python -m ddpm.sample --checkpoint checkpoints/fashion-mnist --label 7 --cfg 3 --sampler ddim --steps 50 \\
        --seed 0 --n 16 --out grid.png
    python -m ddpm.sample --checkpoint DIR --label all --n 8 --out samples.npz    # images (N, H, W, C) uint8 + labels
    python -m ddpm.sample --checkpoint DIR --label Sneaker --n 4 --gif trajectory.gif
    python -m ddpm.sample --checkpoint DIR --label Sneaker --init sketch.png --strength 0.6     # image-to-image
    python -m ddpm.sample --checkpoint DIR --label Sneaker --init shoe.png --mask hole.png      # inpainting

Image i of a run uses seed + i, so any image can be reproduced alone. Settings left out default to the
checkpoint's recommended ones (config.json "sampling"), else to ddpm's defaults.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .allocator import tune_allocator
from .device import resolve_device
from .frames import frames_by_log_snr, side_by_side, step_log_snr
from .images import make_grid, save_gif, to_pil, to_uint8
from .options import add_arguments, from_args
from .pipeline import Pipeline, load
from .samplers import timesteps_for

GRID_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BATCH_SIZE = 100  # images per sampler call: ~0.7 GB of activations for a 28x28 model with guidance


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m ddpm.sample", description="Sample images from a ddpm-studio checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or Hub id user/repo[@revision])")
    p.add_argument("--label", default=None,
                   help="class index, class name (case-insensitive) or 'all' (n images of every class, one row "
                        "per class); default 'all' for a class-conditional model; not allowed for an unconditional one")
    p.add_argument("--n", type=int, default=None,
                   help="number of images (default 16), or images per class with --label all (default 8)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"images per network batch: memory stays flat in --n (default {BATCH_SIZE}); image i is the "
                        "same image whatever the batch (its own seed), up to float rounding between batch sizes")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="samples.png", help=f"grid image ({', '.join(GRID_EXTS)}) or .npz of raw uint8 images")
    p.add_argument("--gif", default=None, help="also write the denoising animation (x_t | x0_pred) to this .gif")
    p.add_argument("--frames", type=int, default=36, help="animation frames, chosen evenly in log-SNR")
    p.add_argument("--fps", type=float, default=12.0, help="animation frames per second")
    p.add_argument("--scale", type=int, default=2, help="integer enlargement of grid and GIF pixels")
    e = p.add_argument_group("start from an image (ddpm.edit)")
    e.add_argument("--init", default=None, metavar="IMAGE",
                   help="start from this image (any size or colour mode; brought to the model's, and said so)")
    e.add_argument("--strength", type=float, default=None,
                   help="image-to-image (SDEdit): noise the input to t0 = strength x (T-1) and denoise from there; "
                        "0 keeps it, 1 redraws it from noise (default 0.6, or 1 with --mask)")
    e.add_argument("--mask", default=None, metavar="IMAGE",
                   help="inpainting (RePaint): generate where this image is white (or opaque, if it has transparency), "
                        "keep the input elsewhere; the input's size or the model's")
    e.add_argument("--jumps", type=int, default=0, help="RePaint resampling rounds per step with --mask (0..10)")
    add_arguments(p)
    return p.parse_args(argv)


def _labels(pipe: Pipeline, label: str | None, n: int | None) -> tuple[list[int] | None, int, int]:
    """(labels of every image or None for an unconditional model, number of images, images per grid row)."""
    if not pipe.conditional:
        if label is not None:
            raise ValueError(f"this checkpoint is unconditional; drop --label (got {label!r})")
        n = n or 16
        return None, n, math.ceil(math.sqrt(n))
    if label is None or label.strip().lower() == "all":
        per_class = n or 8
        labels = [c for c in range(pipe.config.model.num_classes) for _ in range(per_class)]
        return labels, len(labels), per_class  # one row per class
    n = n or 16
    return [pipe.label_index(label)] * n, n, math.ceil(math.sqrt(n))


def run(args: argparse.Namespace) -> list[Path]:
    """Sample as the arguments say; return the files written."""
    out = Path(args.out)
    kind = out.suffix.lower()
    if kind != ".npz" and kind not in GRID_EXTS:
        raise ValueError(f"--out {args.out!r}: use a .npz file or an image ({', '.join(GRID_EXTS)})")
    if args.gif is not None and Path(args.gif).suffix.lower() != ".gif":
        raise ValueError(f"--gif {args.gif!r} must end in .gif")
    if args.n is not None and not 1 <= args.n <= 10_000:
        raise ValueError(f"--n must be in 1..10000, got {args.n}")
    if args.scale < 1 or args.scale > 32:
        raise ValueError(f"--scale must be in 1..32, got {args.scale}")
    if not 1 <= args.batch_size <= 10_000:
        raise ValueError(f"--batch-size must be in 1..10000, got {args.batch_size}")
    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    if not math.isfinite(args.fps) or args.fps <= 0:
        raise ValueError(f"--fps must be a positive number, got {args.fps}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    pipe = load(args.checkpoint, device=resolve_device(args.device))
    options = pipe.options(from_args(args, pipe.recommended))
    labels, n, nrow = _labels(pipe, args.label, args.n)
    edit = None
    if args.init is not None:
        strength = args.strength if args.strength is not None else (1.0 if args.mask is not None else 0.6)
        edit = pipe.edit(args.init, strength=strength, mask=args.mask, jumps=args.jumps)
        if edit.notes:
            print(f"--init {args.init}: {'; '.join(edit.notes)}", file=sys.stderr)
    elif args.strength is not None or args.mask is not None or args.jumps:
        raise ValueError("--strength, --mask and --jumps need an input image: add --init IMAGE")
    if args.gif and n > args.batch_size:
        raise ValueError(f"--gif animates one batch: {n} images need --batch-size {n} or more (or fewer images)")

    def grid(x: torch.Tensor) -> np.ndarray:  # (B, C, H, W) in [-1, 1] -> uint8 (H', W', C), nrow per row
        return make_grid(to_uint8(x), nrow=nrow)

    keep = set()
    if args.gif:  # the same log-SNR-spaced frames as the app's animation
        ts = edit.timesteps(pipe.T, options) if edit is not None else timesteps_for(pipe.T, options.steps,
                                                                                     options.spacing)
        keep = set(frames_by_log_snr(step_log_snr(pipe.schedule, ts), args.frames))
    frames, finals = [], []
    starts = range(0, n, args.batch_size)
    for start in tqdm(starts, desc="batches", unit="batch", disable=len(starts) == 1, file=sys.stderr):
        count = min(args.batch_size, n - start)
        part = labels[start:start + count] if labels is not None else None
        last = None
        for last in pipe.stream(part, n=None if part is not None else count, seed=args.seed + start, options=options,
                                edit=edit):
            if last.index in keep:
                frames.append(side_by_side(grid(last.x_t), grid(last.x0_pred), scale=args.scale))
        finals.append(last.x_t)
    images = torch.cat(finals)  # (N, C, H, W) in [-1, 1]

    written = []
    if kind == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = {"class_names": np.array(pipe.class_names)} if pipe.class_names else {}
        np.savez_compressed(out, images=to_uint8(images), labels=np.array(labels if labels is not None else [-1] * n,
                            dtype=np.int64), seeds=args.seed + np.arange(n, dtype=np.int64), **extra)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        to_pil(grid(images), scale=args.scale).save(out)
    written.append(out)
    if args.gif:
        written.append(save_gif(frames, args.gif, fps=args.fps))
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()
    try:
        written = run(args)
    except (ValueError, FileNotFoundError) as e:  # bad input, incl. ddpm.CheckpointError
        print(f"python -m ddpm.sample: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
