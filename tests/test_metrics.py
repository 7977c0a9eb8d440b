"""ddpm.metrics: the Fréchet distance against closed forms and scipy, nearest neighbours against brute force, the
copy criterion on planted copies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.metrics import (
    balanced_subset,
    copy_fraction,
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    nearest_distances,
    to_uint8_images,
)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# -- Fréchet distance ------------------------------------------------------------------------------
def test_fd_one_dimensional_closed_form():
    # N(1, 2^2) vs N(-2, 3^2): (1 - (-2))^2 + (2 - 3)^2 = 10
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(10.0)


def test_fd_commuting_covariances_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # a random rotation: S1, S2 share eigenvectors
    a, b = rng.uniform(0.1, 4, 5), rng.uniform(0.1, 4, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fd_non_commuting_2x2_closed_form():
    # for 2x2 PSD S1, S2: tr((S1 S2)^(1/2)) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2)))
    s1, s2 = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([0.0, 2.0])
    p = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(p) + 2 * math.sqrt(np.linalg.det(p)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fd_matches_scipy_sqrtm_formula():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(20, rng), random_spd(20, rng)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_fd_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(500, 16)), rng.normal(1.0, 2.0, size=(400, 16))
    assert frechet_distance_features(a, a) < 1e-8 * frechet_distance_features(a, b)
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance_features(b, a), rel=1e-9)


def test_fd_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(3, rng), random_spd(3, rng)
    mu1, mu2 = np.array([1.0, 0.0, -1.0]), np.zeros(3)
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance_features(a, b) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=0.03)


def test_fd_handles_singular_covariances():
    rng = np.random.default_rng(4)
    a = np.concatenate([rng.normal(size=(50, 5)), np.zeros((50, 3))], axis=1)  # dead (always 0) features, like ReLU
    b = rng.normal(size=(30, 8))  # N < D + 1: rank-deficient covariance
    d = frechet_distance_features(a, b)
    assert math.isfinite(d) and d > 0


@pytest.mark.parametrize("features, match", [
    (np.zeros((1, 4)), "N >= 2"),
    (np.zeros(4), "N >= 2"),
    (np.full((3, 2), np.nan), "NaN"),
])
def test_feature_statistics_bad_inputs(features, match):
    with pytest.raises(ValueError, match=match):
        feature_statistics(features)


def test_fd_shape_mismatch():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# -- nearest neighbours and helpers ----------------------------------------------------------------
def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (300, 1, 6, 6), generator=g, dtype=torch.uint8)
    queries = torch.randint(0, 256, (40, 1, 6, 6), generator=g, dtype=torch.uint8)
    expected = torch.cdist(queries.flatten(1).double() / 255, ref.flatten(1).double() / 255).min(1).values
    torch.testing.assert_close(nearest_distances(queries, ref, chunk=7)[:, 0].double(), expected, atol=1e-4, rtol=0)
    assert nearest_distances(ref[:10], ref).abs().max() == 0  # a copied image is at distance 0
    with pytest.raises(ValueError, match="image shapes differ"):
        nearest_distances(queries, ref[:, :, :5])


def test_k_nearest_distances_match_brute_force():
    g = torch.Generator().manual_seed(1)
    ref = torch.randint(0, 256, (200, 1, 5, 5), generator=g, dtype=torch.uint8)
    queries = torch.randint(0, 256, (30, 1, 5, 5), generator=g, dtype=torch.uint8)
    expected = torch.cdist(queries.flatten(1).double() / 255, ref.flatten(1).double() / 255).sort(1).values[:, :3]
    torch.testing.assert_close(nearest_distances(queries, ref, k=3, chunk=4).double(), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"k must be in 1..200"):
        nearest_distances(queries, ref, k=201)


def test_copy_fraction_catches_copies_and_near_copies_only():
    g = torch.Generator().manual_seed(2)
    train = torch.randint(0, 256, (100, 1, 8, 8), generator=g, dtype=torch.uint8)
    copies = train[:10]
    # a near copy: the nearest image is moved by 8/255 in 4 pixels, L2 16/255 = 0.063, while random 8x8 images are
    # ~2.6 apart (64 pixels, each difference ~U(-1, 1)): d1 / d2 ~ 0.02, far below 1/3
    near = train[10:20].clone()
    near[:, :, :2, :2] = (near[:, :, :2, :2].int() + 8).clamp(max=255).to(torch.uint8)
    fresh = torch.randint(0, 256, (30, 1, 8, 8), generator=g, dtype=torch.uint8)
    assert copy_fraction(nearest_distances(copies, train, k=2)) == 1.0
    assert copy_fraction(nearest_distances(near, train, k=2)) == 1.0
    assert copy_fraction(nearest_distances(fresh, train, k=2)) == 0.0
    mixed = torch.cat([copies, fresh])  # 10 of 40
    assert copy_fraction(nearest_distances(mixed, train, k=2)) == pytest.approx(0.25)
    # the criterion is relative: halfway between two training images is not a copy, however close both are
    a, b = torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.full((1, 1, 8, 8), 2, dtype=torch.uint8)
    mid = torch.ones(1, 1, 8, 8, dtype=torch.uint8)
    assert copy_fraction(nearest_distances(mid, torch.cat([a, b]), k=2)) == 0.0
    with pytest.raises(ValueError, match="two nearest"):
        copy_fraction(torch.zeros(5))


def test_to_uint8_images():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    assert to_uint8_images(x).flatten().tolist() == [0, 0, 128, 255, 255]


def test_balanced_subset():
    labels = torch.tensor([0, 1, 2] * 10 + [0] * 5)
    idx = balanced_subset(labels, 4, 3, seed=0)
    assert labels[idx].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and len(set(idx.tolist())) == 12
    with pytest.raises(ValueError, match="class 1 has only 10"):
        balanced_subset(labels, 11, 3, seed=0)
