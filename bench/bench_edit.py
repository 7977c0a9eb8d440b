"""The cost of starting from an image, beside a full run, measured in one run on the shipped Fashion-MNIST model.

    python bench/bench_edit.py              # ~1-2 minutes on 2 cores
    python bench/bench_edit.py --repeat 5 --json bench/out/edit.json

For the app's default request (16 images of one class, the checkpoint's recommended sampler and steps) it times a
plain run, image-to-image (SDEdit) at strengths 0.3 and 0.6 (only round(strength x steps) steps run, so the
expected ratio is about the strength), inpainting half the image (as many steps as a plain run, plus the known
region's noise; with resampling jumps r each step but the last runs r + 1 times), and interpolation along 16 images
between two seeds (two classes: two guided predictions per step). Every figure is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `import ddpm`

import ddpm  # noqa: E402
from ddpm.device import hardware_description  # noqa: E402
from ddpm.samplers import run_to_end  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--n", type=int, default=16, help="images per request (the app's default 16)")
    p.add_argument("--label", default=None, help="class of every image (default: the first class)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    pipe = ddpm.load(args.checkpoint)
    opts = pipe.options(precision="auto")  # the recommendation with the app's precision (bf16 from a network batch of 16)
    label = (args.label or pipe.label_names[0]) if pipe.conditional else None
    labels = [label] * args.n if label is not None else None
    n = None if labels is not None else args.n
    init = pipe.sample([label] if label is not None else None, n=None if label else 1, seed=1000)
    half = torch.zeros(pipe.image_shape[1:], dtype=torch.bool)
    half[:, pipe.image_shape[2] // 2:] = True

    runs: dict[str, Callable[[], object]] = {
        "plain": lambda: pipe.sample(labels, n=n, seed=0, options=opts),
        "image-to-image, strength 0.3": lambda: pipe.sample(labels, n=n, seed=0, options=opts, init=init, strength=0.3),
        "image-to-image, strength 0.6": lambda: pipe.sample(labels, n=n, seed=0, options=opts, init=init, strength=0.6),
        "inpainting half": lambda: pipe.sample(labels, n=n, seed=0, options=opts, init=init, mask=half),
        "inpainting half, jumps 1": lambda: pipe.sample(labels, n=n, seed=0, options=opts, init=init, mask=half, jumps=1),
    }
    if pipe.conditional:
        other = next(name for name in pipe.label_names if name != pipe.label_names[pipe.label_index(label)])
        runs[f"interpolation, {args.n} images, {label} -> {label}"] = lambda: run_to_end(
            pipe.interpolate(0, 1, k=args.n, labels=[label], options=opts))
        runs[f"interpolation, {args.n} images, {other} -> {label}"] = lambda: run_to_end(
            pipe.interpolate(0, 1, k=args.n, labels=[other, label], options=opts))

    print(f"{hardware_description(pipe.device)} | torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.checkpoint}: {args.n} images of {label!r}, {opts.describe()}")
    runs["plain"]()  # warm-up
    figures = {name: best_of(fn, args.repeat) for name, fn in runs.items()}
    base = figures["plain"]
    print(f"{'request':48s} {'seconds':>8s} {'x plain':>8s}")
    for name, s in figures.items():
        print(f"{name:48s} {s:8.2f} {s / base:8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"seconds": figures, "ratio": {k: v / base for k, v in figures.items()},
                                               "machine": hardware_description(pipe.device)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
