"""Per-class guidance scales, tuned on some evaluation draws and checked on others: the issue-4 experiment.

    python bench/class_guidance.py --tune 3 4 --check 0 1 2 --w 1.5 2 2.5 3

The evaluation sorts its N images by class and gives image i the noise seed SEED * N + i, so class c's images at
scale w do not depend on what the other classes use. One evaluation row per (seed, w) therefore holds every per-class
choice: the script samples each row once (DDIM 50 with the checkpoint's spacing and guidance interval, bf16), caches
the classifier's predictions and features in --cache, and scores any vector of per-class scales (w_0, ..., w_K-1) by
taking class c's images from row w_c.

It then traces a greedy path on the --tune seeds: every class starts at the lowest w, and each move raises the one
class whose next w buys the most accuracy per unit of FD / floor (the mean over those seeds). Every point of the path
is scored on the --check seeds too, beside the uniform rows (every class at the same w): a per-class vector helps only
if it beats the uniform rows on the seeds it was not chosen on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.classifier import load_classifier, predict  # noqa: E402
from ddpm.evaluate import (  # noqa: E402
    Setting, build_reference, default_classifier, frechet_distance_features, generate,
)
from ddpm.pipeline import load  # noqa: E402

Row = tuple[np.ndarray, np.ndarray]  # (pred (N,), features (N, D)) of one evaluation row, sorted by class


def mix(rows: dict[float, Row], scales: Sequence[float], n_per_class: int) -> Row:
    """The row a per-class vector gives: class c's n_per_class images from rows[scales[c]]."""
    preds, feats = [], []
    for c, w in enumerate(scales):
        pred, feat = rows[w]
        part = slice(c * n_per_class, (c + 1) * n_per_class)
        preds.append(pred[part])
        feats.append(feat[part])
    return np.concatenate(preds), np.concatenate(feats)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion-mnist"))
    parser.add_argument("--tune", type=int, nargs="+", default=[3, 4], help="evaluation seeds the path is chosen on")
    parser.add_argument("--check", type=int, nargs="+", default=[0, 1, 2], help="held-out evaluation seeds")
    parser.add_argument("--w", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0], help="guidance scales to mix")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--cache", default=str(ROOT / "bench" / "out" / "class_guidance"),
                        help="folder for the sampled rows' predictions and features")
    args = parser.parse_args(argv)
    if set(args.tune) & set(args.check):
        parser.error("--tune and --check must be different seeds")
    if len(set(args.w)) < 2 or min(args.w) < 0:
        parser.error("--w needs at least two different scales >= 0")
    tune_allocator()
    pipe = load(args.checkpoint)
    classifier, _ = load_classifier(str(ROOT / default_classifier(pipe.config.dataset)))
    s, m, k = pipe.config.recommended_sampling(), pipe.config.model, pipe.config.model.num_classes
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(k).repeat_interleave(args.n_per_class)
    rows: dict[int, dict[float, Row]] = {}
    refs: dict[int, tuple[np.ndarray, float]] = {}
    for seed in [*args.tune, *args.check]:
        ref_file = cache / f"reference_seed{seed}_n{args.n_per_class}.npz"
        if not ref_file.exists():
            ref = build_reference(classifier, pipe.config.dataset, n_per_class=args.n_per_class,
                                  image_size=m.image_size, channels=m.in_channels, seed=seed)
            np.savez(ref_file, test=ref.test_features, floor=ref.fd_train_floor)
        z = np.load(ref_file)
        refs[seed] = (z["test"], float(z["floor"]))
        rows[seed] = {}
        for w in args.w:
            row_file = cache / f"seed{seed}_w{w:g}_n{args.n_per_class}.npz"
            if not row_file.exists():
                setting = Setting(steps=s["steps"], cfg=w, guidance_interval=pipe.guidance_interval,
                                  precision="bf16", spacing=s["spacing"])
                images = generate(pipe, labels, setting, seed=seed * len(labels), batch_size=args.batch_size)
                pred, feats = predict(classifier, images)
                np.savez(row_file, pred=pred.numpy(), feats=feats.numpy())
                print(f"sampled seed {seed}, w {w:g}", flush=True)
            z = np.load(row_file)
            rows[seed][w] = (z["pred"], z["feats"])

    truth = labels.numpy()

    def score(seeds: Sequence[int], scales: Sequence[float]) -> tuple[float, float]:
        accs, fds = [], []
        for seed in seeds:
            pred, feats = mix(rows[seed], scales, args.n_per_class)
            test, floor = refs[seed]
            accs.append(float((pred == truth).mean()))
            fds.append(frechet_distance_features(feats, test) / floor)
        return float(np.mean(accs)), float(np.mean(fds))

    def line(scales: Sequence[float]) -> str:
        a, f = score(args.tune, scales)
        b, g = score(args.check, scales)
        return f"{' '.join(f'{w:4g}' for w in scales)} | tune {a:6.1%} {f:5.2f}x | check {b:6.1%} {g:5.2f}x"

    print(f"per-class w ({', '.join(pipe.class_names or map(str, range(k)))}); mean accuracy and FD / floor over "
          f"the tune seeds {args.tune} and the check seeds {args.check}")
    print("uniform rows:")
    for w in sorted(args.w):
        print("  " + line([w] * k))
    print("greedy path (chosen on the tune seeds):")
    for scales, _, _ in greedy_path(lambda v: score(args.tune, v), k, args.w)[1:]:
        print("  " + line(scales), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
