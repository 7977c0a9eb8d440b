"""A small CNN classifier for the built-in evaluation (`python -m ddpm.evaluate`).

It judges generated images two ways: its predicted class (does "Sneaker" give a sneaker?) and its
penultimate features, whose Fréchet distance between two image sets plays the role Inception
features play in FID. It is saved like a model checkpoint, and loaded without unpickling:

    DIR/config.json          architecture, dataset, class names, test accuracy, training facts
    DIR/model.safetensors    the weights (fp32)
    DIR/README.md            a short card

Train one:  python -m ddpm.classifier train --dataset fashion-mnist --out checkpoints/fashion-mnist-classifier --epochs 6
            python -m ddpm.classifier train --dataset emoji --data-dir /root/data --out checkpoints/emoji-classifier
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .allocator import tune_allocator
from .checkpoint import CheckpointError, _atomic_write, read_weights
from .data import DATASETS, ImageDataset, default_geometry, load_dataset, to_model_range
from .device import PRECISION_CHOICES, resolve_precision

FORMAT = "ddpm-studio-classifier"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MNIST_5K_TEST = 1000  # mnist-5k has no test split: this many images, chosen by a fixed permutation, are held out


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the classifier; saved in config.json beside the weights."""

    in_channels: int = 1  # 1 = grayscale, 3 = RGB
    image_size: int = 28  # square images; any size works (global average pooling), this records the training size
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # conv channels per level; 2x2 max-pooling between levels
    feature_dim: int = 128  # penultimate features, used for the Fréchet distance
    dropout: float = 0.3  # before the last layer, training only

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.in_channels not in (1, 3):
            raise ValueError(f"classifier config: in_channels={self.in_channels!r}; expected 1 or 3")
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 256:
            raise ValueError(f"classifier config: image_size={self.image_size!r}; expected an integer in 8..256")
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= 1000:
            raise ValueError(f"classifier config: num_classes={self.num_classes!r}; expected an integer in 2..1000")
        if not 1 <= len(self.widths) <= 4 or any(not 1 <= w <= 512 for w in self.widths):
            raise ValueError(f"classifier config: widths={self.widths!r}; expected 1..4 channel counts in 1..512")
        if not isinstance(self.feature_dim, int) or not 2 <= self.feature_dim <= 2048:
            raise ValueError(f"classifier config: feature_dim={self.feature_dim!r}; expected an integer in 2..2048")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"classifier config: dropout={self.dropout!r}; expected a number in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifierConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"classifier config: unknown field(s) {sorted(unknown)}; known fields are {sorted(known)}")
        return cls(**d)


def _conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class Classifier(nn.Module):
    """Conv-BN-ReLU levels (two convs each, one in the last), global average pooling, a hidden layer, logits.

    Input images (B, C, H, W) in [-1, 1], the diffusion models' range.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        cur = c.in_channels
        for level, w in enumerate(c.widths):
            last = level == len(c.widths) - 1
            layers += [_conv(cur, w)] if last else [_conv(cur, w), _conv(w, w), nn.MaxPool2d(2)]
            cur = w
        self.body = nn.Sequential(*layers)
        self.hidden = nn.Linear(cur, c.feature_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): the input of the last layer."""
        h = self.body(x).mean(dim=(2, 3))  # (B, widths[-1]), global average pooling
        return F.relu(self.hidden(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.dropout(self.features(x)))


# -- saving and loading ----------------------------------------------------------------------------
def save_classifier(folder: str | Path, model: Classifier, *, dataset: str, class_names: tuple[str, ...] | None,
                    test_accuracy: float | None = None, training: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors and config.json into folder (each atomically)."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "dataset": dataset,
        "class_names": list(class_names) if class_names else None,
        "test_accuracy": test_accuracy,
        "training": training or {},
    }
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def load_classifier_config(folder: str | Path) -> dict[str, Any]:
    """The parsed config.json of a classifier folder (raises CheckpointError when it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"classifier folder {str(folder)!r} does not exist; train one with "
                              "`python -m ddpm.classifier train --dataset NAME --out DIR`")
    path = folder / CONFIG_NAME
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} has no {CONFIG_NAME}; is it a classifier folder?")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a classifier config (missing \"format\": \"{FORMAT}\"); "
                              "a diffusion checkpoint was perhaps given where a classifier was expected")
    if d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {d.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    return d


def load_classifier(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Build the classifier from config.json and load its safetensors weights (eval mode, no grad)."""
    folder = Path(folder)
    d = load_classifier_config(folder)
    try:
        config = ClassifierConfig.from_dict(dict(d["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME} is invalid: {e}") from e
    model = Classifier(config)
    model.load_state_dict(read_weights(folder, model, "the classifier described in config.json"))
    model.eval().requires_grad_(False)
    return model.to(device), d


# -- data ------------------------------------------------------------------------------------------
def load_split(name: str, *, train: bool, image_size: int = 28, channels: int = 1,
               data_dir: str = "data") -> ImageDataset:
    """A dataset's training or test split. mnist-5k has none: a fixed 1,000 of its images are the test split."""
    if name != "mnist-5k":
        return load_dataset(name, image_size=image_size, channels=channels, data_dir=data_dir, train=train)
    full = load_dataset(name, image_size=image_size, channels=channels, data_dir=data_dir, train=True)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
    idx = perm[MNIST_5K_TEST:] if train else perm[:MNIST_5K_TEST]
    return ImageDataset(full.name, full.images[idx], full.labels[idx], full.class_names, full.hflip)


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes (N,) and penultimate features (N, feature_dim), fp32, for images (N, C, H, W).

    uint8 images are mapped to [-1, 1]; float images must already be in [-1, 1].
    """
    if images.dim() != 4 or images.shape[1] != model.config.in_channels:
        raise ValueError(f"images must be (N, {model.config.in_channels}, H, W), got {tuple(images.shape)}")
    device = next(model.parameters()).device
    preds, feats = [], []
    for part in images.split(batch_size):
        x = to_model_range(part) if part.dtype == torch.uint8 else part.float()
        f = model.features(x.to(device))
        preds.append(model.head(f).argmax(1).cpu())
        feats.append(f.cpu())
    return torch.cat(preds), torch.cat(feats)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images (N, C, H, W) whose predicted class equals labels (N,)."""
    pred, _ = predict(model, images)
    return float((pred == labels).float().mean())


# -- training --------------------------------------------------------------------------------------
def _augment(x: torch.Tensor, g: torch.Generator, shift: int) -> torch.Tensor:
    """Random translations by up to `shift` pixels (zero padding = background), one per image."""
    if shift == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)  # -1 = black in the model range
    dy = torch.randint(0, 2 * shift + 1, (B,), generator=g)
    dx = torch.randint(0, 2 * shift + 1, (B,), generator=g)
    rows = (dy[:, None] + torch.arange(H)[None, :])[:, None, :, None].expand(B, C, H, W + 2 * shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W)[None, :])[:, None, None, :].expand(B, C, H, W)
    return out.gather(3, cols)


def train_classifier(
    train_set: ImageDataset,
    test_set: ImageDataset,
    *,
    config: ClassifierConfig | None = None,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    shift: int = 2,
    seed: int = 0,
    precision: str = "auto",
    log: Any = None,
) -> tuple[Classifier, float, dict[str, Any]]:
    """Train with AdamW and a one-cycle learning rate; returns (model, test accuracy, training facts)."""
    if train_set.labels is None or train_set.class_names is None:
        raise ValueError(f"dataset {train_set.name!r} has no labels; a classifier needs a labelled dataset")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000:
        raise ValueError(f"epochs must be an integer in 1..1000, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(train_set):
        raise ValueError(f"batch_size must be an integer in 1..{len(train_set)}, got {batch_size!r}")
    _, C, H, _ = train_set.images.shape
    config = config or ClassifierConfig(in_channels=C, image_size=H, num_classes=len(train_set.class_names))
    precision = resolve_precision(precision, torch.device("cpu"))
    torch.manual_seed(seed)
    model = Classifier(config)
    steps_per_epoch = len(train_set) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_set), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            x = _augment(to_model_range(train_set.images[idx]), g, shift)
            y = train_set.labels[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            total += len(idx)
        model.eval()
        test_acc = accuracy(model, test_set.images, test_set.labels)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, train accuracy {correct / total:.4f}, "
                f"test accuracy {test_acc:.4f}, {time.time() - t0:.0f} s")
    model.requires_grad_(False)
    pred, _ = predict(model, test_set.images)
    per_class = {name: round(float((pred[test_set.labels == i] == i).float().mean()), 4)
                 for i, name in enumerate(train_set.class_names)}
    facts = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "shift_augmentation": shift, "seed": seed,
        "precision": precision, "train_images": len(train_set), "test_images": len(test_set),
        "wall_time_s": round(time.time() - t0, 1), "torch_version": torch.__version__,
        "per_class_test_accuracy": per_class,
    }
    return model, test_acc, facts


def write_card(folder: str | Path, config: dict[str, Any], command: str) -> Path:
    """A short README.md describing the classifier and its test accuracy."""
    m, tr = config["model"], config["training"]
    n_params = sum(p.numel() for p in Classifier(ClassifierConfig.from_dict(m)).parameters())
    per_class = tr.get("per_class_test_accuracy", {})
    rows = "\n".join(f"| {name} | {acc:.1%} |" for name, acc in per_class.items())
    text = f"""# Classifier for {config['dataset']} (ddpm-studio evaluation)

A small CNN ({n_params:,} parameters; conv widths {m['widths']}, {m['feature_dim']}-d penultimate features)
used by `python -m ddpm.evaluate` to judge generated images: class accuracy, and the Fréchet distance
between its penultimate features of generated and real images.

**Test accuracy: {config['test_accuracy']:.2%}** on {tr.get('test_images', '?'):,} held-out images
(trained on {tr.get('train_images', '?'):,} images, {tr.get('epochs')} epochs, {tr.get('wall_time_s')} s on the CPU,
{tr.get('precision')} autocast, random shifts of up to {tr.get('shift_augmentation')} px).

Trained with:

    {command}

| class | test accuracy |
|---|---|
{rows}

Files: `config.json` (architecture, class names, accuracy), `model.safetensors` (fp32 weights).
Load with `ddpm.classifier.load_classifier(folder)`.
"""
    path = Path(folder) / "README.md"
    _atomic_write(path, lambda p: Path(p).write_text(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm.classifier", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a classifier and save it as a checkpoint folder")
    tr.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)} (labelled)")
    tr.add_argument("--data-dir", default="data",
                    help="where the datasets are (torchvision downloads, emoji/; default: data)")
    tr.add_argument("--out", required=True, help="output folder")
    tr.add_argument("--epochs", type=int, default=6)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--shift", type=int, default=2, help="random translation augmentation, pixels")
    tr.add_argument("--widths", type=int, nargs="+", default=list(ClassifierConfig.widths), help="conv channels per level")
    tr.add_argument("--feature-dim", type=int, default=ClassifierConfig.feature_dim, help="penultimate feature size")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    tune_allocator()

    if args.threads:
        torch.set_num_threads(args.threads)
    size, channels = default_geometry(args.dataset)
    try:
        train_set = load_split(args.dataset, train=True, image_size=size, channels=channels, data_dir=args.data_dir)
        test_set = load_split(args.dataset, train=False, image_size=size, channels=channels, data_dir=args.data_dir)
        if train_set.num_classes is None:
            raise ValueError(f"dataset {args.dataset!r} has no labels; a classifier needs a labelled dataset")
        config = ClassifierConfig(in_channels=channels, image_size=size, num_classes=train_set.num_classes,
                                  widths=tuple(args.widths), feature_dim=args.feature_dim)
        model, test_acc, facts = train_classifier(
            train_set, test_set, config=config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, shift=args.shift,
            seed=args.seed, precision=args.precision, log=lambda s: print(s, file=sys.stderr))
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_classifier(args.out, model, dataset=args.dataset, class_names=train_set.class_names,
                    test_accuracy=round(test_acc, 4), training=facts)
    command = "python -m ddpm.classifier " + " ".join(sys.argv[1:] if argv is None else argv)
    write_card(args.out, load_classifier_config(args.out), command)
    print(f"test accuracy {test_acc:.4f}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
