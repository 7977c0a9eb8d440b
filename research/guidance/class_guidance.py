"""Per-class guidance scales, tuned on some evaluation draws and checked on others: the issue-4 experiment.

    python research/guidance/class_guidance.py --tune 3 4 --check 0 1 2 --w 1.5 2 2.5 3
    python research/guidance/class_guidance.py --sampler dpm++2m --tune 0 1 2 3 4 --check 5 6 7 --w 1.5 2 2.5 3 \
        --around 1.5 2 2 2.5 2.5 2.5 2.5 2.5 2 1.5 --move 0 2 6 --score 2 2 2 2.5 2.5 2.5 2.5 2.5 2 1.5

The evaluation sorts its N images by class and gives image i the noise seed SEED * N + i, so class c's images at
scale w do not depend on what the other classes use. The script samples each (seed, w, class) slice once, when a
score first needs it (with the checkpoint's steps, spacing and guidance interval, --sampler, --precision), caches the
classifier's predictions and features in --cache, and scores any vector of per-class scales (w_0, ..., w_K-1) by
taking class c's images from its slice at w_c.

By default it traces a greedy path on the --tune seeds: every class starts at the lowest w, and each move raises the
one class whose next w buys the most accuracy per unit of FD / floor (the mean over those seeds). Every point of the
path is scored on the --check seeds too, beside the uniform rows (every class at the same w): a per-class vector helps
only if it beats the uniform rows on the seeds it was not chosen on. --around VECTOR instead scores VECTOR and every
move of one class (of --move, default all) to its next lower or higher w, on the --tune seeds only (it samples only
those slices); --score VECTOR (repeatable) scores a vector on both sets of seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.classifier import load_classifier, predict  # noqa: E402
from ddpm.device import PRECISION_CHOICES, resolve_precision  # noqa: E402
from ddpm.evaluate import build_reference, default_classifier, generate  # noqa: E402
from ddpm.metrics import frechet_distance_features  # noqa: E402
from ddpm.options import SAMPLERS, SamplerOptions  # noqa: E402
from ddpm.pipeline import load  # noqa: E402

Row = tuple[np.ndarray, np.ndarray]  # (pred (N,), features (N, D)) of one evaluation row, sorted by class


def mix(get: Callable[[float, int], Row], scales: Sequence[float]) -> Row:
    """The row a per-class vector gives: class c's images from get(scales[c], c), in class order."""
    parts = [get(w, c) for c, w in enumerate(scales)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])


def greedy_path(score: Callable[[list[float]], tuple[float, float]], num_classes: int,
                ws: Sequence[float]) -> list[tuple[list[float], float, float]]:
    """From every class at ws[0], raise one class a step at a time, the move with the most accuracy per unit of FD.

    score(scales) -> (accuracy in [0, 1], FD / floor). A move that gains accuracy and lowers the FD beats every
    other; among moves that gain no accuracy, the one that costs the least is taken. Returns every point visited,
    (scales, accuracy, fd ratio), starting point first; ends when every class is at ws[-1].
    """
    ws = sorted(ws)
    idx = [0] * num_classes
    acc, fd = score([ws[i] for i in idx])
    path = [([ws[i] for i in idx], acc, fd)]
    while any(i + 1 < len(ws) for i in idx):
        best = None
        for c in range(num_classes):
            if idx[c] + 1 == len(ws):
                continue
            trial = list(idx)
            trial[c] += 1
            a, f = score([ws[i] for i in trial])
            if a > acc:
                key = (1, (a - acc) / (f - fd)) if f > fd else (2, a - acc)
            else:
                key = (0, -(f - fd))
            if best is None or key > best[0]:
                best = (key, trial, a, f)
        _, idx, acc, fd = best
        path.append(([ws[i] for i in idx], acc, fd))
    return path


def parse_vector(values: Sequence[float] | None, k: int, ws: Sequence[float], what: str) -> list[float] | None:
    """A per-class vector from the command line: k scales, each one of --w; raises ValueError otherwise."""
    if values is None:
        return None
    if len(values) != k or any(v not in ws for v in values):
        raise ValueError(f"{what} needs {k} scales, each one of --w ({', '.join(f'{w:g}' for w in ws)}), got "
                         f"{' '.join(f'{v:g}' for v in values)}")
    return list(values)


def neighbours(scales: Sequence[float], ws: Sequence[float], classes: Sequence[int]) -> list[tuple[int, list[float]]]:
    """Every vector that moves one class of `classes` to its next lower or next higher scale in ws: (class, vector)."""
    ws = sorted(ws)
    out = []
    for c in classes:
        i = ws.index(scales[c])
        for j in (i - 1, i + 1):
            if 0 <= j < len(ws):
                out.append((c, [ws[j] if d == c else w for d, w in enumerate(scales)]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion-mnist"))
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="default: the checkpoint's recommendation")
    parser.add_argument("--tune", type=int, nargs="+", default=[3, 4], help="evaluation seeds the path is chosen on")
    parser.add_argument("--check", type=int, nargs="+", default=[0, 1, 2], help="held-out evaluation seeds")
    parser.add_argument("--w", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0], help="guidance scales to mix")
    parser.add_argument("--around", type=float, nargs="+", default=None, metavar="W",
                        help="score this vector and its one-class moves on the --tune seeds (no greedy path)")
    parser.add_argument("--move", type=int, nargs="+", default=None, metavar="C",
                        help="with --around: the classes that may move (default: all)")
    parser.add_argument("--score", type=float, nargs="+", action="append", default=[], metavar="W",
                        help="score this per-class vector on the --tune and --check seeds (repeatable)")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto = bf16 where the CPU supports it, else fp32 (emulated bf16 is ~10x slower)")
    parser.add_argument("--cache", default=str(ROOT / "bench" / "out" / "class_guidance"),
                        help="folder for the sampled slices' predictions and features")
    args = parser.parse_args(argv)
    try:
        precision = resolve_precision(args.precision, torch.device("cpu"))
    except ValueError as e:
        parser.error(str(e))
    if set(args.tune) & set(args.check):
        parser.error("--tune and --check must be different seeds")
    if len(set(args.w)) < 2 or min(args.w) < 0:
        parser.error("--w needs at least two different scales >= 0")
    tune_allocator()
    pipe = load(args.checkpoint)
    classifier, _ = load_classifier(str(ROOT / default_classifier(pipe.config.dataset)))
    s, m, k = pipe.recommended, pipe.config.model, pipe.config.model.num_classes
    try:
        around = parse_vector(args.around, k, args.w, "--around")
        scored = [parse_vector(v, k, args.w, "--score") for v in args.score]
    except ValueError as e:
        parser.error(str(e))
    if args.move is not None and (not args.around or not all(0 <= c < k for c in args.move)):
        parser.error(f"--move needs --around and class indices in 0..{k - 1}")
    sampler = args.sampler or s.sampler
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    npc = args.n_per_class
    setting = SamplerOptions(sampler=sampler, steps=s.steps, guidance_interval=s.guidance_interval,
                             precision=precision, spacing=s.spacing)
    refs: dict[int, tuple[np.ndarray, float]] = {}
    for seed in [*args.tune, *args.check]:
        ref_file = cache / f"reference_seed{seed}_n{npc}.npz"
        if not ref_file.exists():
            ref = build_reference(classifier, pipe.config.dataset, n_per_class=npc,
                                  image_size=m.image_size, channels=m.in_channels, seed=seed)
            np.savez(ref_file, test=ref.test_features, floor=ref.fd_train_floor)
        z = np.load(ref_file)
        refs[seed] = (z["test"], float(z["floor"]))
    slices: dict[tuple[int, float, int], Row] = {}

    def get(seed: int, w: float, c: int) -> Row:
        """Class c's npc images of evaluation seed `seed` at scale w: sampled once, then from the cache."""
        if (seed, w, c) not in slices:
            f = cache / f"{sampler}_{precision}_seed{seed}_w{w:g}_c{c}_n{npc}.npz"
            if not f.exists():
                labels = torch.full((npc,), c, dtype=torch.long)
                images = generate(pipe, labels, replace(setting, cfg=w), seed=seed * k * npc + c * npc,
                                  batch_size=args.batch_size)
                pred, feats = predict(classifier, images)
                np.savez(f, pred=pred.numpy(), feats=feats.numpy())
                print(f"  (sampled seed {seed}, w {w:g}, class {c})", flush=True)
            z = np.load(f)
            slices[(seed, w, c)] = (z["pred"], z["feats"])
        return slices[(seed, w, c)]

    truth = torch.arange(k).repeat_interleave(npc).numpy()

    def score(seeds: Sequence[int], scales: Sequence[float]) -> tuple[float, float]:
        accs, fds = [], []
        for seed in seeds:
            pred, feats = mix(lambda w, c: get(seed, w, c), scales)
            test, floor = refs[seed]
            accs.append(float((pred == truth).mean()))
            fds.append(frechet_distance_features(feats, test) / floor)
        return float(np.mean(accs)), float(np.mean(fds))

    def line(scales: Sequence[float], check: bool = True) -> str:
        a, f = score(args.tune, scales)
        text = f"{' '.join(f'{w:4g}' for w in scales)} | tune {a:6.1%} {f:5.2f}x"
        if check:
            b, g = score(args.check, scales)
            text += f" | check {b:6.1%} {g:5.2f}x"
        return text

    names = pipe.class_names or [str(c) for c in range(k)]
    print(f"per-class w ({', '.join(names)}), {sampler}; mean accuracy and FD / floor over the tune seeds "
          f"{args.tune} and the check seeds {args.check}")
    if around is not None:
        print("around (tune seeds only):")
        print("  " + line(around, check=False) + "  <- the vector")
        for c, v in neighbours(around, args.w, args.move if args.move is not None else range(k)):
            print("  " + line(v, check=False) + f"  {names[c]} {around[c]:g} -> {v[c]:g}", flush=True)
    elif not scored:
        print("uniform rows:")
        for w in sorted(args.w):
            print("  " + line([w] * k))
        print("greedy path (chosen on the tune seeds):")
        for scales, _, _ in greedy_path(lambda v: score(args.tune, v), k, args.w)[1:]:
            print("  " + line(scales), flush=True)
    for v in scored:
        print("  " + line(v) + "  <- --score", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
