"""The models shipped in checkpoints/, through the public API: every one loads, recommends settings it can sample
with, draws the classes it is asked for (judged by the classifier shipped beside it, itself checked on real test
images), and its evaluation.json and card read back with today's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import ddpm
from ddpm.card import write_model_card
from ddpm.checkpoint import load_config
from ddpm.classifier import load_classifier, load_split, predict
from ddpm.evaluate import check_compatible, default_classifier, markdown_table, row_options
from ddpm.metrics import to_uint8_images
from ddpm.registry import local_checkpoints

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = local_checkpoints(ROOT / "checkpoints")


def recommended_accuracy(folder: Path) -> float:
    """The class accuracy the shipped evaluation.json measured at the model's recommended settings."""
    report = json.loads((folder / "evaluation.json").read_text())
    sampling = load_config(folder).sampling
    return next(r["accuracy"] for r in report["results"] if row_options(r).replace(precision="fp32") == sampling)


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda s: Path(s).name)
def shipped(request):
    folder = Path(request.param)
    return folder, ddpm.load(folder)


def test_loads_and_recommends_settings_it_can_sample_with(shipped):
    _, pipe = shipped
    assert pipe.conditional and len(pipe.label_names) == pipe.config.model.num_classes
    pipe.recommended.validate(pipe.T, num_classes=pipe.config.model.num_classes)
    assert pipe.options() == pipe.recommended  # sample() with no settings samples at the recommendation


def test_evaluation_reads_back(shipped):
    """evaluation.json, written by an earlier version, renders as the evaluation's table, and every row's settings
    read back as SamplerOptions this model accepts."""
    folder, pipe = shipped
    if not (folder / "evaluation.json").is_file():
        pytest.skip("no evaluation.json shipped")
    report = json.loads((folder / "evaluation.json").read_text())
    lines = markdown_table(report).splitlines()
    assert lines[0].startswith("| sampler | steps |") and len(lines) == len(report["results"]) + 4
    for row in report["results"]:
        row_options(row).validate(pipe.T, num_classes=pipe.config.model.num_classes)


@pytest.mark.slow
def test_samples_are_the_requested_classes(shipped):
    """Two images of every class at the recommended settings (but 20 steps, to keep it quick), scored by the
    shipped classifier: a model that ignored its label would score 1/k; its evaluation (at 50 steps, 100 per class)
    measured 83% (emoji) to >= 97%: the 2k here may miss a few more, not most."""
    folder, pipe = shipped
    classifier, info = load_classifier(ROOT / default_classifier(pipe.config.dataset))
    check_compatible(pipe, classifier, info)
    labels = torch.arange(pipe.config.model.num_classes).repeat_interleave(2)
    x = pipe.sample(labels.tolist(), steps=20, seed=0)
    assert x.shape == (len(labels), *pipe.image_shape) and x.min() >= -1 and x.max() <= 1
    pred, _ = predict(classifier, to_uint8_images(x))
    assert (pred == labels).float().mean() >= recommended_accuracy(folder) - 0.25


@pytest.mark.slow
def test_the_judging_classifier_reads_real_test_images(shipped):
    """The classifier each shipped model is judged by, on up to 2,000 of its dataset's real held-out images."""
    _, pipe = shipped
    classifier, info = load_classifier(ROOT / default_classifier(pipe.config.dataset))
    c = classifier.config
    try:
        test = load_split(info["dataset"], train=False, image_size=c.image_size, channels=c.in_channels)
    except (FileNotFoundError, RuntimeError) as e:  # the dataset is not on this machine
        pytest.skip(str(e))
    pred, _ = predict(classifier, test.images[:2000])
    assert (pred == test.labels[:2000]).float().mean() >= info["test_accuracy"] - 0.05  # what its card says


@pytest.mark.slow
def test_the_card_regenerates_from_the_folder(shipped, tmp_path):
    """Every push to the Hub rewrites README.md from the folder: on a copy, the card comes out with Hub metadata
    that parses and the evaluation's table of the shipped evaluation.json."""
    folder, _ = shipped
    copy = Path(shutil.copytree(folder, tmp_path / folder.name))
    card = write_model_card(copy).read_text()
    front, body = card.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "ddpm-studio" and "class-conditional-image-generation" in meta["tags"]
    assert ModelCard.load(folder / "README.md").data.to_dict() == ModelCard(card).data.to_dict()  # shipped = today's
    if (folder / "evaluation.json").is_file():
        report = json.loads((folder / "evaluation.json").read_text())
        assert markdown_table(report) in body
        results = {r.metric_type: r.metric_value for r in ModelCard(card).data.eval_results}
        row = next(r for r in report["results"] if row_options(r).replace(precision="fp32") == load_config(folder).sampling)
        assert results["accuracy"] == round(row["accuracy"], 4) and results["frechet-distance"] == round(row["fd"], 4)
