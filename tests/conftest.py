"""Shared fixtures: a tiny synthetic labelled dataset and a tiny trained checkpoint made from it.

`tiny_checkpoint` (session scope) is a real checkpoint folder written by ddpm.training.train: the
"tiny" preset, 12x12 grayscale, 3 classes ("Horizontal", "Vertical", "Square"), T = 1000 cosine
schedule, trained for a few seconds. Any test (also other modules' tests) can ask for it by name.

`rgb_checkpoint` (session scope) is its colour twin: the same preset and training on 12x12 RGB images of 3 classes
told apart by colour (RGB_CLASSES: a red horizontal bar, a green vertical bar, a blue square, on black).

Copies of `tiny_checkpoint` that recommend sampling settings (config.json "sampling"), for the tests of every module
that reads a recommendation: `interval_checkpoint` (a guidance interval, INTERVAL) and `per_class` (one scale per class,
PER_CLASS).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` run from anywhere imports this checkout's ddpm
    sys.path.insert(0, str(ROOT))

import ddpm  # noqa: E402
from ddpm.data import ImageDataset  # noqa: E402
from ddpm.registry import ModelRegistry  # noqa: E402
from ddpm.train_config import TrainConfig  # noqa: E402
from ddpm.training import train  # noqa: E402

# Tiny models run fastest on one thread, and several jobs share this machine's cores: oversubscribed
# threads make a tiny training step 5x slower. Override with DDPM_TEST_THREADS.
TEST_THREADS = int(os.environ.get("DDPM_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

SYNTHETIC_CLASSES = ("Horizontal", "Vertical", "Square")
RGB_CLASSES = ("Red", "Green", "Blue")  # SYNTHETIC_CLASSES' shapes, each drawn in one colour: channel = label
TINY_SIZE = 12
INTERVAL = (0.2, 0.7)  # the guidance interval (t/T) `interval_checkpoint` recommends, with CFG 4
PER_CLASS = [0.5, 3.0, 1.5]  # the guidance scales `per_class` recommends: Horizontal, Vertical, Square


def make_synthetic_images(n: int = 256, size: int = TINY_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, size, size) of 3 easy classes, and their labels (n,) in 0..2.

    0: a bright horizontal bar of 2 rows, 1: a vertical bar of 2 columns, 2: a 4x4 square; random positions.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 3
    for i, label in enumerate(labels):
        if label == 0:
            r = rng.integers(0, size - 1)
            images[i, r : r + 2, :] = 255
        elif label == 1:
            c = rng.integers(0, size - 1)
            images[i, :, c : c + 2] = 255
        else:
            r, c = rng.integers(0, size - 3, size=2)
            images[i, r : r + 4, c : c + 4] = 255
    return images, labels.astype(np.int64)


def make_synthetic_dataset(n: int = 256, size: int = TINY_SIZE, seed: int = 0) -> ImageDataset:
    images, labels = make_synthetic_images(n, size, seed)
    return ImageDataset("synthetic", torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels),
                        SYNTHETIC_CLASSES, hflip=False)


def make_rgb_dataset(n: int = 256, size: int = TINY_SIZE, seed: int = 0) -> ImageDataset:
    """make_synthetic_images' shapes in colour on black, uint8 (n, 3, size, size): class c lights channel c only
    (0: a red horizontal bar, 1: a green vertical bar, 2: a blue square)."""
    shapes, labels = make_synthetic_images(n, size, seed)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    images[np.arange(n), labels] = shapes
    return ImageDataset("synthetic-rgb", torch.from_numpy(images), torch.from_numpy(labels), RGB_CLASSES)


@pytest.fixture
def one_thread():
    """torch on one thread for this test (sampling tiny models is ~20x faster than two threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_dataset() -> ImageDataset:
    """256 labelled 12x12 grayscale images of 3 classes (uint8, (256, 1, 12, 12))."""
    return make_synthetic_dataset()


def tiny_train_config(out: Path, **overrides):
    """A TrainConfig for a few-second CPU run of the tiny preset (fp32, no sample grids, no progress bar)."""
    base = dict(dataset="synthetic", out=str(out), preset="tiny", schedule="cosine", timesteps=1000, steps=100,
                batch_size=32, lr=2e-3, warmup_steps=20, ema_decay=0.99, precision="fp32", device="cpu",
                log_every=25, sample_every=0, checkpoint_every=1000, seed=0, threads=TEST_THREADS)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: ImageDataset) -> Path:
    """The folder of a tiny checkpoint trained for 100 steps on `synthetic_dataset` (config.json + model.safetensors)."""
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    train(tiny_train_config(out), dataset=synthetic_dataset, progress=False)
    return out


@pytest.fixture(scope="session")
def rgb_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour twin of `tiny_checkpoint`: the tiny preset trained the same way on make_rgb_dataset()."""
    out = tmp_path_factory.mktemp("rgb_checkpoint")
    train(tiny_train_config(out, dataset="synthetic-rgb"), dataset=make_rgb_dataset(), progress=False)
    assert json.loads((out / "config.json").read_text())["model"]["in_channels"] == 3
    return out


@pytest.fixture(scope="session")
def tiny_train_config_factory():
    """tiny_train_config as a fixture: factory(out, **overrides) -> TrainConfig."""
    return tiny_train_config


@pytest.fixture(scope="session")
def synthetic_dataset_factory():
    """make_synthetic_dataset as a fixture: factory(n=256, size=12, seed=0) -> ImageDataset."""
    return make_synthetic_dataset


def copy_with_sampling(src: Path, dst: Path, sampling: dict) -> Path:
    """A copy of checkpoint folder src at dst whose config.json recommends `sampling` (its "sampling" key)."""
    import json
    import shutil

    folder = Path(shutil.copytree(src, dst))
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = sampling
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def with_sampling():
    """copy_with_sampling as a fixture: with_sampling(src, dst, {"cfg": 2.0, ...}) -> the copied folder."""
    return copy_with_sampling


@pytest.fixture
def interval_checkpoint(tiny_checkpoint: Path, tmp_path: Path, with_sampling) -> Path:
    """A copy of the tiny checkpoint that recommends CFG 4 inside the guidance interval INTERVAL."""
    return with_sampling(tiny_checkpoint, tmp_path / "ckpt", {"cfg": 4.0, "guidance_interval": list(INTERVAL)})


@pytest.fixture
def per_class(tiny_checkpoint: Path, tmp_path: Path, with_sampling) -> Path:
    """A copy of the tiny checkpoint that recommends one guidance scale per class (PER_CLASS), and 2 without a class."""
    return with_sampling(tiny_checkpoint, tmp_path / "checkpoints" / "per-class", {"cfg": 2.0, "class_cfg": PER_CLASS})


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny checkpoint (pushing or writing a card writes README.md and samples.png
    into it)."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.fixture
def run(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of a real training run's folder, with the files only training needs."""
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "run"))
    (folder / "examples").mkdir(exist_ok=True)
    (folder / "examples" / "0_Horizontal.png").write_bytes(b"\x89PNG fake")
    (folder / "log.jsonl").write_text('{"step": 1}\n')
    return folder


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: Path) -> ddpm.Pipeline:
    """ddpm.load(tiny_checkpoint), once per test module."""
    return ddpm.load(tiny_checkpoint)


@pytest.fixture
def synthetic_image_folder(tmp_path: Path, synthetic_dataset: ImageDataset) -> Path:
    """The first 48 images of `synthetic_dataset` as PNG files in tmp_path / "data", one sub-folder per class (a
    dataset train.py reads as folder:PATH)."""
    root = tmp_path / "data"
    for i in range(48):
        d = root / synthetic_dataset.class_names[int(synthetic_dataset.labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_dataset.images[i, 0].numpy()).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def nan_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint whose second tensor (in name order) starts with NaN, inf and -inf."""
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path / "nan"))
    weights = load_file(folder / "model.safetensors")
    weights[sorted(weights)[1]].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    save_file(weights, folder / "model.safetensors", metadata={"format": "ddpm-studio"})
    return folder


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> str:
    """The tiny checkpoint's folder as the app's model dropdown names it (the handler tests' `model` argument)."""
    return str(tiny_checkpoint)


@pytest.fixture(scope="module")
def registry(model: str) -> ModelRegistry:
    """A registry offering only the tiny checkpoint (the handler tests' registry)."""
    return ModelRegistry([model])
