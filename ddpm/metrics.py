"""The statistics of the built-in evaluation: pure functions of features and images, no models.

    feature_statistics(f)          mean (D,) and covariance (D, D) of features (N, D)
    frechet_distance(mu1, S1, ...) ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), FID's formula
    nearest_distances(q, ref, k)   L2 distances from each image to its k nearest reference images
    copy_fraction(d)               the share of images 3x closer to one training image than to the next
    balanced_subset(labels, n, K)  n random examples of each of K classes

`ddpm.evaluate` applies them to a classifier's features and to generated images.
"""

from __future__ import annotations

import numpy as np
import torch

COPY_RATIO = 1 / 3  # Yoon et al. 2023 / Gu et al. 2023: a copy is 3x closer to its nearest training image than to the next


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
