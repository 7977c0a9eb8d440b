"""Built-in evaluation of a diffusion checkpoint with the project's own classifier.

    python -m ddpm.evaluate --checkpoint checkpoints/fashion-mnist --classifier checkpoints/fashion-mnist-classifier \
        --sampler ddim --steps 50 --cfg 0 1 1.5 2 3 5 --n-per-class 100 --json eval.json

For every sampler setting it generates N images per class (image i of the N_total with seed * N_total + i, so the
batch size does not matter and two evaluation seeds share no noise) and reports:

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

Images are quantised to uint8 first, as they would be when saved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .allocator import tune_allocator
from .classifier import Classifier, load_classifier, load_split, predict
from .data import load_dataset
from .pipeline import Pipeline
from .samplers import SAMPLERS
from .training import PRECISION_CHOICES, resolve_precision


# -- the statistics --------------------------------------------------------------------------------
def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), float64, of features (N, D) with N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). S1 S2 has the same eigenvalues as the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so tr((S1 S2)^(1/2)) is the sum of the square roots of
    that matrix's eigenvalues: real and stable even for singular covariances, and no scipy needed.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}; "
                         f"expected (D,) and (D, D) for both")
    r1 = _sqrt_psd(s1)
    inner = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def frechet_distance_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, *, k: int = 1, chunk: int = 256) -> torch.Tensor:
    """L2 distances (N, k), ascending, from each query image to its k nearest reference images; uint8 images
    (N, C, H, W) scaled to [0, 1]."""
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"image shapes differ: queries {tuple(queries.shape[1:])}, reference {tuple(reference.shape[1:])}")
    if not 1 <= k <= len(reference):
        raise ValueError(f"k must be in 1..{len(reference)} (the reference size), got {k}")
    r = reference.flatten(1).float() / 255.0  # (M, D)
    r_sq = (r * r).sum(1)  # (M,)
    out = []
    for part in queries.split(chunk):
        q = part.flatten(1).float() / 255.0  # (n, D)
        # ||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r finds the nearest ones fast; their distances are then
        # recomputed directly, in float64, so that a copied image gives exactly 0
        nearest = (r_sq[None, :] - 2.0 * (q @ r.T)).topk(k, dim=1, largest=False).indices  # (n, k)
        d = (q.double()[:, None, :] - r[nearest].double()).norm(dim=2)  # (n, k)
        out.append(d.sort(dim=1).values.float())
    return torch.cat(out)


COPY_RATIO = 1 / 3  # Yoon et al. 2023 / Gu et al. 2023: a copy is 3x closer to its nearest training image than to the next


def copy_fraction(d: torch.Tensor, ratio: float = COPY_RATIO) -> float:
    """The fraction of images that copy a training image: d1 <= ratio * d2, with d (N, 2) the distances to the
    nearest and second-nearest training images. An exact copy counts (0 <= anything); a new image that happens
    to lie near many training images does not, however small d1 is, because d2 is small too."""
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"d must be (N, 2) distances to the two nearest neighbours, got shape {tuple(d.shape)}")
    return float((d[:, 0] <= ratio * d[:, 1]).float().mean())


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W), as a saved image would hold it."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def balanced_subset(labels: torch.Tensor, n_per_class: int, num_classes: int, *, seed: int) -> torch.Tensor:
    """Indices of n_per_class random examples of every class, sorted by class."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < n_per_class:
            raise ValueError(f"n_per_class={n_per_class} but class {c} has only {len(idx)} images here; "
                             f"use --n-per-class in 2..{len(idx)}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    return torch.cat(picks)


# -- the evaluation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One row of the table: how the samples are drawn."""

    sampler: str = "ddim"
    steps: int = 50
    cfg: float = 3.0
    eta: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    precision: str = "fp32"
    spacing: float = 1.0  # time-step spacing power (1 = even steps in t)
    class_cfg: tuple[float, ...] | None = None  # one guidance scale per class, replacing cfg
    redraws: int = 0  # rounds of redrawing what the model reads as another class (ddpm.selfcheck)
    redraw_threshold: float = 0.0


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
                    seed: int = 0) -> Reference:
    """Real-data yardsticks. mnist-5k: the classifier's 1,000 held-out images are the test split."""
    train_split = load_split(dataset, train=True, image_size=image_size, channels=channels)
    test_split = load_split(dataset, train=False, image_size=image_size, channels=channels)
    # the memorisation check compares samples with everything the diffusion model was trained on
    model_train = (load_dataset(dataset, image_size=image_size, channels=channels, train=True)
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


def generate(pipe: Pipeline, labels: torch.Tensor, setting: Setting, *, seed: int, batch_size: int,
             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """uint8 samples (N, C, H, W) for the given labels; image i uses seed + i whatever the batch size."""
    out = []
    for start in range(0, len(labels), batch_size):
        part = labels[start : start + batch_size].tolist()
        x = pipe.sample(part, seed=seed + start, sampler=setting.sampler, steps=setting.steps, cfg=setting.cfg,
                        eta=setting.eta, guidance_interval=setting.guidance_interval, precision=setting.precision,
                        spacing=setting.spacing, class_cfg=setting.class_cfg, redraws=setting.redraws,
                        redraw_threshold=setting.redraw_threshold)
        out.append(to_uint8_images(x))
        if progress:
            progress(start + len(part), len(labels))
    return torch.cat(out)


def evaluate_setting(pipe: Pipeline, classifier: Classifier, reference: Reference, setting: Setting, *,
                     n_per_class: int, seed: int = 0, batch_size: int = 100,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Sample n_per_class images of every class with one setting and score them (one row of the table).
    Image i uses the noise seed seed * N + i: evaluation seeds draw disjoint sets of images."""
    k = classifier.config.num_classes
    labels = torch.arange(k).repeat_interleave(n_per_class)  # (N,), sorted by class
    t0 = time.time()
    images = generate(pipe, labels, setting, seed=seed * len(labels), batch_size=batch_size, progress=progress)
    seconds = time.time() - t0
    pred, feats = predict(classifier, images)
    fd = frechet_distance_features(feats.numpy(), reference.test_features)
    nn = nearest_distances(images, reference.train_images, k=2)  # (N, 2)
    nn_mean = float(nn[:, 0].mean())
    names = pipe.class_names or tuple(str(i) for i in range(k))
    return {
        **asdict(setting),
        "guidance_interval": list(setting.guidance_interval) if setting.guidance_interval else None,
        "class_cfg": list(setting.class_cfg) if setting.class_cfg else None,
        "n": len(labels),
        "accuracy": float((pred == labels).float().mean()),
        "per_class_accuracy": {names[c]: float((pred[labels == c] == c).float().mean()) for c in range(k)},
        "fd": fd,
        "fd_over_floor": fd / reference.fd_train_floor if reference.fd_train_floor > 0 else math.inf,
        "nn_to_train": nn_mean,
        "nn_over_test": nn_mean / reference.nn_test_to_train,
        "copies": copy_fraction(nn),
        "seconds": round(seconds, 1),
    }


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
    """The sampler cell of a row: its name, with its redraw rounds and threshold if it redraws."""
    if not row.get("redraws"):
        return row["sampler"]
    thr = row.get("redraw_threshold", 0.0)
    return f"{row['sampler']} + {row['redraws']} redraws" + (f" (margin <= {thr:g})" if thr else "")


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


def run(checkpoint: str, classifier_dir: str, settings: Sequence[Setting], *, n_per_class: int = 100, seed: int = 0,
        batch_size: int = 100, device: str = "cpu", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load, build the reference, evaluate every setting; returns the report (what --json writes)."""
    from . import load

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 2:
        raise ValueError(f"n_per_class must be an integer >= 2 (a covariance needs two samples), got {n_per_class!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not settings:
        raise ValueError("no settings to evaluate")
    pipe = load(checkpoint, device=device)
    for s in settings:  # fail before the slow part
        pipe.stream([0], seed=0, sampler=s.sampler, steps=s.steps, cfg=s.cfg, eta=s.eta,
                    guidance_interval=s.guidance_interval, precision=s.precision, spacing=s.spacing,
                    class_cfg=s.class_cfg, redraws=s.redraws, redraw_threshold=s.redraw_threshold)
    classifier, info = load_classifier(classifier_dir, device=device)
    check_compatible(pipe, classifier, info)
    m = pipe.config.model
    t0 = time.time()
    ref = build_reference(classifier, pipe.config.dataset, n_per_class=n_per_class, image_size=m.image_size,
                          channels=m.in_channels, seed=seed)
    if log:
        log(f"reference ({time.time() - t0:.0f} s): FD floor {ref.fd_train_floor:.3f} (other draws: "
            f"{min(ref.fd_floor_draws):.3f}..{max(ref.fd_floor_draws):.3f}), noise ceiling "
            f"{ref.fd_noise_ceiling:.1f}, test NN {ref.nn_test_to_train:.3f}, test copies {ref.copies_test:.1%}")
    results = []
    for s in settings:
        row = evaluate_setting(pipe, classifier, ref, s, n_per_class=n_per_class, seed=seed, batch_size=batch_size)
        if log:
            log(f"{s.sampler} {s.steps} steps (spacing {s.spacing:g}), cfg {cfg_text(asdict(s))}, "
                f"interval {s.guidance_interval}: "
                f"accuracy {row['accuracy']:.1%}, FD {row['fd']:.3f} "
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


def seed_summary(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of reports of the same settings at several evaluation seeds, side by side: for every setting, the
    accuracy and FD / floor at each seed, their means, the lowest accuracy and the highest FD / floor.

    At N = 1000 one seed's FD ratio moves by half or more between draws (the floor is a draw too), so a setting is
    judged by how it does on every seed, not on one.

    Where the reports carry their FDs and floors, each row also has `fd_mean_over_floor_mean`: the samples' mean FD
    over the mean of every real-data floor the reports drew (each seed's own and the shared FLOOR_DRAWS sets). That
    is the expected FD against the expected floor at this N, with a far steadier denominator than one seed's floor
    (the mean of per-seed ratios also carries each floor's noise, and E[1 / floor] > 1 / E[floor]).
    `accuracy_se` is the standard error of the mean accuracy over the seeds (sample sd / sqrt(seeds)).
    """
    if not reports:
        raise ValueError("no reports to summarise")
    keys = [[_setting_key(r) for r in rep["results"]] for rep in reports]
    if any(k != keys[0] for k in keys):
        raise ValueError("the reports evaluate different settings; summarise reports of the same settings only")
    floors = _pooled_floors(reports)
    floor_mean = float(np.mean(floors)) if floors else None
    rows = []
    for i, key in enumerate(keys[0]):
        acc = [rep["results"][i]["accuracy"] for rep in reports]
        ratio = [rep["results"][i]["fd_over_floor"] for rep in reports]
        fd = [rep["results"][i].get("fd") for rep in reports]
        fd_mean = float(np.mean(fd)) if None not in fd else None
        rows.append({**dict(key), "seeds": [rep["seed"] for rep in reports], "accuracy": acc,
                     "fd_over_floor": ratio, "accuracy_mean": float(np.mean(acc)),
                     "accuracy_se": float(np.std(acc, ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else None,
                     "fd_over_floor_mean": float(np.mean(ratio)), "accuracy_min": min(acc),
                     "fd_over_floor_max": max(ratio), "fd_mean": fd_mean,
                     "floor_mean": floor_mean, "floors_pooled": len(floors),
                     "fd_mean_over_floor_mean": fd_mean / floor_mean if fd_mean is not None and floor_mean else None})
    return rows


def _pooled_floors(reports: Sequence[dict[str, Any]]) -> list[float]:
    """Every real-data floor the reports drew: each seed's own, and each distinct set of shared draws once (every
    seed's report lists the same FLOOR_DRAWS sets). Empty if a report lacks its floor."""
    refs = [rep.get("reference") or {} for rep in reports]
    if any("fd_train_floor" not in r for r in refs):
        return []
    shared = {tuple(r.get("fd_floor_draws") or ()) for r in refs}
    return [r["fd_train_floor"] for r in refs] + [f for draws in sorted(shared) for f in draws]


def _setting_key(row: dict[str, Any]) -> tuple:
    gi = row.get("guidance_interval")
    return (("sampler", row["sampler"]), ("steps", row["steps"]), ("cfg", row["cfg"]), ("eta", row.get("eta", 0.0)),
            ("guidance_interval", list(gi) if gi else None), ("precision", row["precision"]),
            ("spacing", row.get("spacing", 1.0)),
            ("class_cfg", list(row["class_cfg"]) if row.get("class_cfg") else None),
            ("redraws", row.get("redraws", 0)), ("redraw_threshold", row.get("redraw_threshold", 0.0)))


def seed_table(summary: Sequence[dict[str, Any]]) -> str:
    """seed_summary as a markdown table: accuracy / FD over the floor at each seed, then the means."""
    seeds = summary[0]["seeds"]
    lines = ["| sampler | steps | spacing | eta | CFG | guidance interval | "
             + " | ".join(f"seed {s}" for s in seeds) + " | mean | worst | mean FD / mean floor |",
             "|---|---:|---:|---:|---:|---|" + "---|" * (len(seeds) + 2) + "---:|"]
    for r in summary:
        gi = "-" if not r["guidance_interval"] else "{:g}..{:g}".format(*r["guidance_interval"])
        cells = [f"{a:.1%} / {f:.2f}x" for a, f in zip(r["accuracy"], r["fd_over_floor"])]
        lines.append(f"| {sampler_text(r)} | {r['steps']} | {r['spacing']:g} | {r['eta']:g} | {cfg_text(r)} | {gi} | "
                     + " | ".join(cells) + f" | {r['accuracy_mean']:.1%} / {r['fd_over_floor_mean']:.2f}x | "
                     f"{r['accuracy_min']:.1%} / {r['fd_over_floor_max']:.2f}x | {_pooled_text(r)} |")
    lines += ["", "Each cell: class accuracy / FD over that seed's own real-data floor. Worst: the lowest accuracy "
              "and the highest FD / floor over the seeds (not always the same seed). Mean FD / mean floor: the "
              "samples' mean FD over the mean of all the floors drawn (each seed's and the shared draws; their "
              "number in brackets); ± is the standard error of the mean accuracy."]
    return "\n".join(lines)


def _pooled_text(row: dict[str, Any]) -> str:
    """The 'mean FD / mean floor' cell: e.g. '0.446 / 0.225 = 1.98x (18 floors), 97.0% ± 0.2'."""
    if row.get("fd_mean_over_floor_mean") is None:
        return "-"
    se = f" ± {row['accuracy_se'] * 100:.1f}" if row.get("accuracy_se") is not None else ""
    return (f"{row['fd_mean']:.3f} / {row['floor_mean']:.3f} = {row['fd_mean_over_floor_mean']:.2f}x "
            f"({row['floors_pooled']} floors), {row['accuracy_mean']:.1%}{se}")


def default_classifier(dataset: str) -> str:
    """checkpoints/<dataset>-classifier; the MNIST family shares one."""
    return "checkpoints/mnist-classifier" if dataset in ("mnist", "mnist-5k") else f"checkpoints/{dataset}-classifier"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="diffusion checkpoint folder (or Hub id)")
    parser.add_argument("--classifier", default=None,
                        help="classifier folder (default: checkpoints/<dataset>-classifier)")
    parser.add_argument("--sampler", default=None, choices=SAMPLERS, help="default: the checkpoint's recommendation, else ddim")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="one or more step counts (default: 50)")
    parser.add_argument("--cfg", type=float, nargs="+", default=None, help="one or more guidance scales w (default: the checkpoint's, else 3)")
    parser.add_argument("--class-cfg", type=float, nargs="+", default=None, metavar="W",
                        help="one guidance scale per class (instead of --cfg): class c's images use the c-th")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the checkpoint's, else 0)")
    parser.add_argument("--spacing", type=float, default=None,
                        help="time-step spacing power, 1 = even steps in t (default: the checkpoint's, else 1)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                        help="apply CFG only for t/T in [LO, HI] (w = 1 elsewhere); default: without --cfg or "
                             "--class-cfg, the checkpoint's recommended interval, if any; with either, every step")
    parser.add_argument("--redraws", type=int, default=None,
                        help="rounds of redrawing the samples the model itself reads as another class "
                             "(ddpm.selfcheck; default: the checkpoint's, else 0 = off)")
    parser.add_argument("--redraw-threshold", type=float, default=None,
                        help="redraw when the requested class's relative margin is <= this (default: the "
                             "checkpoint's, else 0)")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="network precision while sampling; auto = bf16 where the device supports it (the app's "
                             "choice), else fp32; default fp32, so that tables compare across machines")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100, help="images per sampler call")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="evaluation seed: the samples use noise seeds seed*N .. seed*N+N-1 and the floor its own "
                             "training subset, so two seeds are independent draws; several seeds evaluate every "
                             "setting on each and end with a table of all of them (--json then writes "
                             '{"reports": [...], "summary": [...]})')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    tune_allocator()

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from .checkpoint import load_config
        from .hub import resolve_checkpoint

        config = load_config(resolve_checkpoint(args.checkpoint))
        rec = config.recommended_sampling()
        sampler = args.sampler or rec["sampler"]
        steps = args.steps or [int(rec["steps"])]
        if args.cfg and args.class_cfg:
            raise ValueError("give --cfg or --class-cfg, not both")
        cfgs = args.cfg or [float(rec["cfg"])]
        guided = args.cfg is not None or args.class_cfg is not None
        # no --cfg / --class-cfg: the checkpoint's scales (one per class, if it recommends that)
        class_cfg = args.class_cfg or (rec["class_cfg"] if not guided else None)
        class_cfg = tuple(class_cfg) if class_cfg else None
        # no --cfg: the checkpoint's recommendation, w and interval together (what the app runs by default)
        interval = args.guidance_interval or (rec["guidance_interval"] if not guided else None)
        interval = tuple(interval) if interval else None
        spacing = float(args.spacing if args.spacing is not None else rec["spacing"])
        eta = float(args.eta if args.eta is not None else rec["eta"]) if sampler == "ddim" else 0.0
        precision = resolve_precision(args.precision, torch.device(args.device))
        redraws = int(args.redraws if args.redraws is not None else rec["redraws"])
        threshold = float(args.redraw_threshold if args.redraw_threshold is not None else rec["redraw_threshold"])
        settings = [Setting(sampler=sampler, steps=st, cfg=w, eta=eta, guidance_interval=interval,
                            precision=precision, spacing=spacing, class_cfg=class_cfg, redraws=redraws,
                            redraw_threshold=threshold)
                    for st in steps for w in (cfgs if class_cfg is None else cfgs[:1])]
        if len(set(args.seed)) != len(args.seed):
            raise ValueError(f"--seed lists a seed twice ({args.seed}); give distinct seeds")
        reports = []
        for seed in args.seed:
            reports.append(run(args.checkpoint, args.classifier or default_classifier(config.dataset), settings,
                               n_per_class=args.n_per_class, seed=seed, batch_size=args.batch_size,
                               device=args.device, log=lambda s: print(s, file=sys.stderr, flush=True)))
            print(markdown_table(reports[-1]) + "\n", flush=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    out: dict[str, Any] = reports[0]
    if len(reports) > 1:
        summary = seed_summary(reports)
        print(seed_table(summary))
        out = {"reports": reports, "summary": summary}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
