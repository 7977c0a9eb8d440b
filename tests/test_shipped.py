"""The models shipped in checkpoints/: every one loads, is what its card and evaluation say, and draws the classes
it is asked for, judged by the classifier shipped beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ddpm
from ddpm.classifier import load_classifier, predict
from ddpm.evaluate import check_compatible, default_classifier, to_uint8_images
from ddpm.studio import local_checkpoints

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = local_checkpoints(ROOT / "checkpoints")
MAX_WEIGHTS_BYTES = 10 * 2**20  # the budget for a shipped model


def test_the_default_and_the_digits_model_are_shipped():
    assert [Path(s).name for s in SHIPPED] == ["fashion-mnist", "mnist-5k"]


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda s: Path(s).name)
def shipped(request):
    folder = Path(request.param)
    return folder, ddpm.load(folder)


def test_folder_is_complete_and_small(shipped):
    folder, pipe = shipped
    for name in ("config.json", "model.safetensors", "README.md", "samples.png", "evaluation.json"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size < MAX_WEIGHTS_BYTES
    assert not (folder / "training_state.pt").exists()  # resume state stays out of the shipped folder
    assert pipe.conditional and pipe.config.model.num_classes == 10 and len(pipe.class_names) == 10
    assert pipe.config.training["steps"] > 0 and pipe.config.training["final_loss"] < 0.1


def test_recommended_sampling_is_the_evaluated_default(shipped):
    """config.json's recommendation (what the app starts with) is the row the evaluation chose, and the card says so."""
    folder, pipe = shipped
    report = json.loads((folder / "evaluation.json").read_text())
    rec = pipe.config.sampling
    assert report["default"].get("sampler", "ddim") == rec["sampler"]
    assert report["default"]["cfg"] == rec["cfg"]
    assert report["default"].get("class_cfg") == rec.get("class_cfg")  # one w per class, if recommended
    assert report["default"]["guidance_interval"] == rec.get("guidance_interval")
    assert report["default"].get("spacing", 1.0) == rec.get("spacing", 1.0)
    assert report["default"].get("eta", 0.0) == rec.get("eta", 0.0)
    assert report["default"].get("redraws", 0) == rec.get("redraws", 0)
    rows = [r for r in report["results"] if r["sampler"] == rec["sampler"] and r["steps"] == rec["steps"]
            and r["cfg"] == rec["cfg"] and r["guidance_interval"] == rec.get("guidance_interval")
            and r.get("spacing", 1.0) == rec.get("spacing", 1.0) and r["eta"] == rec.get("eta", 0.0)
            and r.get("class_cfg") == rec.get("class_cfg") and r.get("redraws", 0) == rec.get("redraws", 0)]
    assert len(rows) == 1
    assert rows[0]["accuracy"] >= 0.97  # the accuracy half of the target, as measured
    assert report["checkpoint_steps"] == pipe.config.training["steps"]  # measured on these weights
    card = (folder / "README.md").read_text()
    assert f"{rows[0]['accuracy']:.1%}" in card and f"{rows[0]['fd_over_floor']:.2f}" in card


def test_samples_are_the_requested_classes(shipped):
    """Two images of every class at the recommended settings (but 20 steps, to keep it quick), scored by the
    shipped classifier: a model that ignored its label would score ~10%, the evaluation measured >= 97% at 50."""
    folder, pipe = shipped
    classifier, info = load_classifier(ROOT / default_classifier(pipe.config.dataset))
    check_compatible(pipe, classifier, info)
    rec = pipe.config.sampling
    labels = torch.arange(10).repeat_interleave(2)
    x = pipe.sample(labels.tolist(), sampler=rec["sampler"], steps=20, cfg=rec["cfg"],
                    guidance_interval=rec.get("guidance_interval"), spacing=rec.get("spacing", 1.0),
                    eta=rec.get("eta", 0.0), class_cfg=rec.get("class_cfg"), seed=0)
    assert x.shape == (20, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    pred, _ = predict(classifier, to_uint8_images(x))
    assert (pred == labels).float().mean() >= 0.8


def test_shipped_classifiers_report_their_accuracy():
    for name in ("fashion-mnist-classifier", "mnist-classifier"):
        folder = ROOT / "checkpoints" / name
        _, info = load_classifier(folder)
        assert info["test_accuracy"] > 0.9
        assert f"{info['test_accuracy']:.2%}" in (folder / "README.md").read_text()


def test_the_card_is_regenerated_exactly_from_the_folder(shipped, tmp_path):
    """Every push to the Hub rewrites README.md from the folder: its hand-given rows live in card_notes.json."""
    import shutil

    from ddpm.card import write_model_card

    folder, _ = shipped
    copy = Path(shutil.copytree(folder, tmp_path / folder.name))
    card = write_model_card(copy).read_text().replace(str(copy), str(folder.relative_to(ROOT)))
    assert card == (folder / "README.md").read_text()
