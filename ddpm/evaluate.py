"""Built-in evaluation of a diffusion checkpoint with the project's own classifier.

    python -m ddpm.evaluate --checkpoint checkpoints/fashion-mnist --classifier checkpoints/fashion-mnist-classifier \
        --sampler ddim --steps 50 --cfg 0 1 1.5 2 3 5 --n-per-class 100 --json eval.json

Every sampling setting not given is the checkpoint's recommendation (config.json "sampling"), except the precision:
fp32 unless --precision says otherwise, so that tables compare across machines. --steps and --cfg take several
values and make one row per combination; --cfg replaces per-class scales but keeps the recommended guidance interval
(--full-guidance guides every step). For every row it generates N images per class (image i of the N_total with
seed * N_total + i, so the batch size does not matter and two evaluation seeds share no noise) and reports:

    accuracy      the classifier's accuracy on the samples against the requested classes
    FD            the Fréchet distance between the classifier's penultimate features of the samples and
                  of the whole real test set: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))
                  (FID's formula, with this small classifier in place of Inception)
    FD floor      the same for N real training images: what a perfect generator scores at this N. One draw of
                  N images is noisy (on Fashion-MNIST at N = 1000, 20 draws ranged over 0.17..0.32), so the
                  report also gives the floor of FLOOR_DRAWS other draws (their mean, spread and range): how far
                  an FD / floor ratio can move with the draw alone
    FD ceiling    the same for N images of Gaussian noise, N(0, 1) clipped to [-1, 1]
    NN            the mean L2 distance (pixels in [0, 1]) from each sample to its nearest training image,
                  against the same for N real test images: a ratio well below 1 means copying
    copies        the fraction of samples at most 1/3 as far from their nearest training image as from the
                  second nearest (the memorisation criterion of Yoon et al. 2023 and Gu et al. 2023), against
                  the same for N real test images: a mean NN ratio near 1 can hide a few copies; this cannot

Images are quantised to uint8 first, as they would be when saved. The statistics themselves are in ddpm.metrics.
One run is one evaluation seed; research/seed_pooling/ sums up the reports of several.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .allocator import tune_allocator
from .checkpoint import load_config
from .classifier import Classifier, load_classifier, load_split, predict
from .data import load_dataset
from .device import resolve_precision
from .hub import resolve_checkpoint
from .metrics import balanced_subset, copy_fraction, frechet_distance_features, nearest_distances, to_uint8_images
from .options import SamplerOptions, add_arguments, from_args
from .pipeline import Pipeline, load

FLOOR_DRAWS = 10  # other random sets of N training images whose FDs show how much the floor itself varies
FLOOR_DRAW_SEED = 10_000  # draw j uses subset seed FLOOR_DRAW_SEED + j: the same draws for every evaluation seed


@dataclass
class Reference:
    """What real data and noise score at the same N: the yardsticks every row is read against."""

    n: int
    test_features: np.ndarray  # (N_test, D), the whole real test split
    fd_train_floor: float
    fd_floor_draws: tuple[float, ...]  # the floor for FLOOR_DRAWS other sets of N training images
    fd_noise_ceiling: float
    accuracy_train_subset: float
    nn_test_to_train: float
    copies_test: float  # copy_fraction of those test images: ~0 for real data
    train_images: torch.Tensor  # uint8 (M, C, H, W): the diffusion model's training set
    test_size: int
    train_size: int


def build_reference(classifier: Classifier, dataset: str, *, n_per_class: int, image_size: int, channels: int,
                    seed: int = 0, data_dir: str = "data") -> Reference:
    """Real-data yardsticks. mnist-5k: the classifier's 1,000 held-out images are the test split."""
    train_split = load_split(dataset, train=True, image_size=image_size, channels=channels, data_dir=data_dir)
    test_split = load_split(dataset, train=False, image_size=image_size, channels=channels, data_dir=data_dir)
    # the memorisation check compares samples with everything the diffusion model was trained on
    model_train = (load_dataset(dataset, image_size=image_size, channels=channels, data_dir=data_dir, train=True)
                   if dataset == "mnist-5k" else train_split)
    k = classifier.config.num_classes
    n = n_per_class * k
    _, test_feats = predict(classifier, test_split.images)
    train_idx = balanced_subset(train_split.labels, n_per_class, k, seed=seed)
    train_pred, train_feats = predict(classifier, train_split.images[train_idx])
    floor_draws = []
    for j in range(FLOOR_DRAWS):
        idx = balanced_subset(train_split.labels, n_per_class, k, seed=FLOOR_DRAW_SEED + j)
        floor_draws.append(frechet_distance_features(predict(classifier, train_split.images[idx])[1], test_feats))
    noise = torch.randn((n, channels, image_size, image_size), generator=torch.Generator().manual_seed(seed))
    _, noise_feats = predict(classifier, to_uint8_images(noise))
    # n random real test images against the training split (disjoint from the test split for every dataset)
    test_idx = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(seed + 1))[:n]
    nn_test = nearest_distances(test_split.images[test_idx], train_split.images, k=2)  # (n, 2)
    return Reference(
        n=n, test_features=test_feats.numpy(),
        fd_train_floor=frechet_distance_features(train_feats, test_feats), fd_floor_draws=tuple(floor_draws),
        fd_noise_ceiling=frechet_distance_features(noise_feats, test_feats),
        accuracy_train_subset=float((train_pred == train_split.labels[train_idx]).float().mean()),
        nn_test_to_train=float(nn_test[:, 0].mean()), copies_test=copy_fraction(nn_test),
        train_images=model_train.images,
        test_size=len(test_split), train_size=len(model_train),
    )


def generate(pipe: Pipeline, labels: torch.Tensor, options: SamplerOptions, *, seed: int, batch_size: int,
             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """uint8 samples (N, C, H, W) for the given labels; image i uses seed + i whatever the batch size."""
    out = []
    for start in range(0, len(labels), batch_size):
        part = labels[start : start + batch_size].tolist()
        out.append(to_uint8_images(pipe.sample(part, seed=seed + start, options=options)))
        if progress:
            progress(start + len(part), len(labels))
    return torch.cat(out)


def evaluate_setting(pipe: Pipeline, classifier: Classifier, reference: Reference, options: SamplerOptions, *,
                     n_per_class: int, seed: int = 0, batch_size: int = 100,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sample n_per_class images of every class with one setting and score them: one row of the table, the
    settings' `to_dict()` plus the scores. Image i uses the noise seed seed * N + i: evaluation seeds draw
    disjoint sets of images."""
    k = classifier.config.num_classes
    labels = torch.arange(k).repeat_interleave(n_per_class)  # (N,), sorted by class
    t0 = time.time()
    images = generate(pipe, labels, options, seed=seed * len(labels), batch_size=batch_size, progress=progress)
    seconds = time.time() - t0
    pred, feats = predict(classifier, images)
    fd = frechet_distance_features(feats.numpy(), reference.test_features)
    nn = nearest_distances(images, reference.train_images, k=2)  # (N, 2)
    nn_mean = float(nn[:, 0].mean())
    names = pipe.class_names or tuple(str(i) for i in range(k))
    return {
        **options.to_dict(),
        "n": len(labels),
        "accuracy": float((pred == labels).float().mean()),
        "per_class_accuracy": {names[c]: float((pred[labels == c] == c).float().mean()) for c in range(k)},
        "fd": fd,
        "fd_over_floor": fd / reference.fd_train_floor if reference.fd_train_floor > 0 else math.inf,
        "nn_to_train": nn_mean,
        "nn_over_test": nn_mean / reference.nn_test_to_train,
        "copies": copy_fraction(nn),
        "per_class_copies": {names[c]: copy_fraction(nn[labels == c]) for c in range(k)},  # memorisation by class
        "per_class_nn_over_test": {names[c]: float(nn[labels == c, 0].mean()) / reference.nn_test_to_train
                                   for c in range(k)},
        "seconds": round(seconds, 1),
    }


def row_options(row: dict[str, Any]) -> SamplerOptions:
    """The sampling settings of a report row; a key that a report written before it lacks takes its default."""
    names = {f.name for f in fields(SamplerOptions)}
    return SamplerOptions.from_dict({k: v for k, v in row.items() if k in names})


def check_compatible(pipe: Pipeline, classifier: Classifier, classifier_info: dict[str, Any]) -> None:
    """The classifier must judge the model's classes at the model's image size and channels."""
    m, c = pipe.config.model, classifier.config
    if not pipe.conditional:
        raise ValueError("the evaluation needs a class-conditional model (it scores class accuracy); "
                         f"{pipe.source!r} is unconditional")
    if m.num_classes != c.num_classes:
        raise ValueError(f"the model has {m.num_classes} classes but the classifier has {c.num_classes}")
    if (m.in_channels, m.image_size) != (c.in_channels, c.image_size):
        raise ValueError(f"the model makes {m.in_channels}x{m.image_size}x{m.image_size} images but the classifier "
                         f"was trained on {c.in_channels}x{c.image_size}x{c.image_size}")
    names = classifier_info.get("class_names")
    if pipe.class_names and names and [s.lower() for s in pipe.class_names] != [s.lower() for s in names]:
        raise ValueError(f"class names differ: model {list(pipe.class_names)}, classifier {names}")


def sampler_text(row: dict[str, Any]) -> str:
    """The sampler cell of a row: its name, with its redraw rounds and threshold if it redraws (and a note for the
    settings the table has no column for: DDPM's sigma^2 = beta, unclipped x0)."""
    text = row["sampler"]
    if row.get("variance", "posterior") != "posterior":
        text += f" (sigma^2 = {row['variance']})"
    if not row.get("clip_x0", True):
        text += " (x0 not clipped)"
    if not row.get("redraws"):
        return text
    thr = row.get("redraw_threshold", 0.0)
    return f"{text} + {row['redraws']} redraws" + (f" (margin <= {thr:g})" if thr else "")


def cfg_text(row: dict[str, Any]) -> str:
    """The CFG cell of a row: its scale w, or "per class: w_0/w_1/..." for per-class scales."""
    if row.get("class_cfg"):
        return "per class: " + "/".join(f"{w:g}" for w in row["class_cfg"])
    return f"{row['cfg']:g}"


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a markdown table, followed by the reference values. Reports written before the copy
    check existed have no "copies" figures; their table leaves that column out. A "spacing" column appears when
    some row spaces its time steps other than evenly (rows without the key are even: spacing 1), an "eta" column
    when some row samples DDIM with noise (eta > 0)."""
    ref = report["reference"]
    copies = all("copies" in r for r in report["results"]) and "copies_test" in ref
    spaced = any(r.get("spacing", 1.0) != 1.0 for r in report["results"])
    noisy = any(r.get("eta", 0.0) for r in report["results"])
    lines = [
        "| sampler | steps |" + (" spacing |" if spaced else "") + (" eta |" if noisy else "") + " CFG | guidance "
        "interval | precision | accuracy | FD | FD / floor | NN to train | NN / test NN |" + (" copies |" if copies else "")
        + " time (s) |",
        "|---|---:|" + ("---:|" if spaced else "") + ("---:|" if noisy else "") + "---:|---|---|---:|---:|---:|---:|---:|"
        + ("---:|" if copies else "") + "---:|",
    ]
    for r in report["results"]:
        gi = "-" if not r["guidance_interval"] else "{:g}..{:g}".format(*r["guidance_interval"])
        optional = (f"{r.get('spacing', 1.0):g} | " if spaced else "") + (f"{r.get('eta', 0.0):g} | " if noisy else "")
        lines.append(f"| {sampler_text(r)} | {r['steps']} | {optional}{cfg_text(r)} | {gi} | {r['precision']} | {r['accuracy']:.1%} | "
                     f"{r['fd']:.2f} | {r['fd_over_floor']:.2f} | {r['nn_to_train']:.3f} | {r['nn_over_test']:.2f} | "
                     + (f"{r['copies']:.1%} | " if copies else "") + f"{r['seconds']:.0f} |")
    copy_note = (f"; copies (nearest training image at most 1/3 as far as the second nearest) among those test "
                 f"images: {ref['copies_test']:.1%}" if copies else "")
    draws = np.asarray(ref.get("fd_floor_draws") or [])  # reports written before the floor's spread have none
    spread_note = (f" (over {len(draws)} other draws of {ref['n']} training images: mean {draws.mean():.2f}, "
                   f"sd {draws.std(ddof=1):.2f}, range {draws.min():.2f}..{draws.max():.2f})" if len(draws) > 1 else "")
    lines += [
        "",
        f"N = {ref['n']} images ({report['n_per_class']} per class), seed {report['seed']}. "
        f"Real data at the same N: FD floor (training images vs test set) {ref['fd_train_floor']:.2f}{spread_note}, "
        f"noise ceiling {ref['fd_noise_ceiling']:.1f}; classifier accuracy on those training images "
        f"{ref['accuracy_train_subset']:.1%}, on the whole test set {report['classifier_test_accuracy']:.1%}; "
        f"real test images' mean nearest-neighbour distance to the training set {ref['nn_test_to_train']:.3f} "
        f"(L2, pixels in [0, 1]){copy_note}.",
    ]
    return "\n".join(lines)


def run(checkpoint: str, classifier_dir: str, settings: Sequence[SamplerOptions], *, n_per_class: int = 100,
        seed: int = 0, batch_size: int = 100, device: str = "cpu", data_dir: str = "data",
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load, build the reference, evaluate every setting (one row each); returns the report (what --json writes).
    Precision "auto" is resolved once for the device, so that a row's images share one precision, the one recorded."""
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 2:
        raise ValueError(f"n_per_class must be an integer >= 2 (a covariance needs two samples), got {n_per_class!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not settings:
        raise ValueError("no settings to evaluate")
    pipe = load(checkpoint, device=device)
    # fail before the slow part
    settings = [pipe.options(s, precision=resolve_precision(s.precision, torch.device(device))) for s in settings]
    classifier, info = load_classifier(classifier_dir, device=device)
    check_compatible(pipe, classifier, info)
    m = pipe.config.model
    t0 = time.time()
    ref = build_reference(classifier, pipe.config.dataset, n_per_class=n_per_class, image_size=m.image_size,
                          channels=m.in_channels, seed=seed, data_dir=data_dir)
    if log:
        log(f"reference ({time.time() - t0:.0f} s): FD floor {ref.fd_train_floor:.3f} (other draws: "
            f"{min(ref.fd_floor_draws):.3f}..{max(ref.fd_floor_draws):.3f}), noise ceiling "
            f"{ref.fd_noise_ceiling:.1f}, test NN {ref.nn_test_to_train:.3f}, test copies {ref.copies_test:.1%}")
    results = []
    for s in settings:
        row = evaluate_setting(pipe, classifier, ref, s, n_per_class=n_per_class, seed=seed, batch_size=batch_size)
        if log:
            log(f"{s.describe(class_names=pipe.class_names)}: accuracy {row['accuracy']:.1%}, FD {row['fd']:.3f} "
                f"({row['fd_over_floor']:.2f}x floor), NN ratio {row['nn_over_test']:.2f}, copies {row['copies']:.1%}, "
                f"{row['seconds']:.0f} s")
        results.append(row)
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_steps": pipe.config.training.get("steps"),
        "classifier": str(classifier_dir),
        "classifier_test_accuracy": info.get("test_accuracy"),
        "dataset": pipe.config.dataset,
        "n_per_class": n_per_class,
        "seed": seed,
        "reference": {
            "n": ref.n, "fd_train_floor": ref.fd_train_floor, "fd_floor_draws": list(ref.fd_floor_draws),
            "fd_noise_ceiling": ref.fd_noise_ceiling,
            "accuracy_train_subset": ref.accuracy_train_subset, "nn_test_to_train": ref.nn_test_to_train,
            "copies_test": ref.copies_test,
            "test_images": ref.test_size, "train_images": ref.train_size,
        },
        "results": results,
    }


def default_classifier(dataset: str) -> str:
    """checkpoints/<dataset>-classifier; the MNIST family shares one."""
    return "checkpoints/mnist-classifier" if dataset in ("mnist", "mnist-5k") else f"checkpoints/{dataset}-classifier"


def parser() -> argparse.ArgumentParser:
    """The CLI: the sweep flags --steps and --cfg (several values each), every other sampling flag of
    ddpm.options.add_arguments, and the evaluation's own."""
    p = argparse.ArgumentParser(prog="python -m ddpm.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="diffusion checkpoint folder (or Hub id)")
    p.add_argument("--classifier", default=None, help="classifier folder (default: checkpoints/<dataset>-classifier)")
    # other dest names than the fields': from_args must not read these lists as one setting
    p.add_argument("--steps", dest="steps_sweep", type=int, nargs="+", metavar="N", default=None,
                   help="one or more step counts, one row each (default: the checkpoint's recommendation)")
    p.add_argument("--cfg", dest="cfg_sweep", type=float, nargs="+", metavar="W", default=None,
                   help="one or more guidance scales w, one row each, instead of per-class scales; the guidance "
                        "interval stays (--full-guidance: every step). Default: the checkpoint's recommendation")
    add_arguments(p, exclude=("steps", "cfg"),
                  default_note="default: the checkpoint's recommendation, but precision fp32 so that tables "
                               "compare across machines; auto = bf16 where the device supports it")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100, help="images per sampler call")
    p.add_argument("--seed", type=int, default=0,
                   help="evaluation seed: the samples use noise seeds seed*N .. seed*N+N-1 and the floor its own "
                        "training subset, so two seeds are independent draws (research/seed_pooling/ sums up the "
                        "reports of several)")
    p.add_argument("--data-dir", default="data",
                   help="where the reference datasets are (torchvision downloads, emoji/; default: data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    return p


def settings_from_args(args: argparse.Namespace, recommended: SamplerOptions) -> list[SamplerOptions]:
    """The rows the command line asks for: the recommendation (at fp32) with the flags given, one row per
    (--steps, --cfg) pair. A w replaces per-class scales and keeps the guidance interval (SamplerOptions.replace)."""
    if args.cfg_sweep and args.class_cfg:
        raise ValueError("give --cfg or --class-cfg, not both")
    base = from_args(args, recommended.replace(precision="fp32"))
    if base.sampler != "ddim":
        base = base.replace(eta=0.0)  # eta is DDIM's noise: a recommended eta does not carry to another sampler
    return [base.replace(steps=n) if w is None else base.replace(steps=n, cfg=w)
            for n in (args.steps_sweep or [base.steps]) for w in (args.cfg_sweep or [None])]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tune_allocator()

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = load_config(resolve_checkpoint(args.checkpoint))
        settings = settings_from_args(args, config.sampling)
        report = run(args.checkpoint, args.classifier or default_classifier(config.dataset), settings,
                     n_per_class=args.n_per_class, seed=args.seed, batch_size=args.batch_size, device=args.device,
                     data_dir=args.data_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(report), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
