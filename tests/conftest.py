"""Shared fixtures: a tiny synthetic labelled dataset and a tiny trained checkpoint made from it.

`tiny_checkpoint` (session scope) is a real checkpoint folder written by ddpm.training.train: the
"tiny" preset, 12x12 grayscale, 3 classes ("Horizontal", "Vertical", "Square"), T = 1000 cosine
schedule, trained for a few seconds. Any test (also other modules' tests) can ask for it by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` run from anywhere imports this checkout's ddpm
    sys.path.insert(0, str(ROOT))

from ddpm.data import ImageDataset  # noqa: E402
from ddpm.train_config import TrainConfig  # noqa: E402
from ddpm.training import train  # noqa: E402

# Tiny models run fastest on one thread, and several jobs share this machine's cores: oversubscribed
# threads make a tiny training step 5x slower. Override with DDPM_TEST_THREADS.
TEST_THREADS = int(os.environ.get("DDPM_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

SYNTHETIC_CLASSES = ("Horizontal", "Vertical", "Square")
TINY_SIZE = 12


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
