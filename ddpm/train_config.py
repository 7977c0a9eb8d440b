"""The settings of one training run: TrainConfig, its validation, and the train_config.json a run folder keeps.

train.py maps its flags onto TrainConfig; --resume reads the saved one back (saved_train_config) so flags not given
again keep the run's own values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .device import PRECISION_CHOICES

LR_SCHEDULES = ("constant", "cosine")
TRAIN_CONFIG_NAME = "train_config.json"  # beside config.json in a run folder


@dataclass(frozen=True)
class TrainConfig:
    """One training run. train.py maps its flags onto these fields."""

    dataset: str = "fashion-mnist"  # see ddpm.data
    data_dir: str = "data"  # where torchvision downloads go
    out: str = "checkpoints/run"  # checkpoint folder
    preset: str = "small"  # model size, see ddpm.model.PRESETS
    image_size: int | None = None  # default: 28 for the MNIST family, 32 otherwise
    channels: int | None = None  # default: 1 for the MNIST family, 3 otherwise
    conditional: bool = True  # class-conditional when the dataset has classes
    schedule: str = "cosine"  # "linear" or "cosine" (better for small images)
    timesteps: int = 1000  # T
    steps: int = 30_000  # optimisation steps
    batch_size: int = 128  # per process and micro-batch; global = batch_size * processes * grad_accum
    grad_accum: int = 1  # micro-batches per optimisation step
    lr: float = 5e-4
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (down to 10%)
    warmup_steps: int = 500
    decay_steps: int = 0  # final cool-down: the lr falls linearly to 0 over the last decay_steps steps (0 = none)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # reached after a warm-up: decay_k = min(ema_decay, (1 + k) / (10 + k))
    label_dropout: float = 0.1  # per-sample probability of the null label (classifier-free guidance)
    hflip: bool | None = None  # None: the dataset's default (off for digits and clothes)
    precision: str = "auto"  # "auto" (bf16 where supported), "fp32", "bf16"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    log_every: int = 50
    sample_every: int = 2000  # 0 = never
    checkpoint_every: int = 1000
    weights_dtype: str = "fp32"  # dtype of model.safetensors: fp32, fp16, bf16
    threads: int | None = None  # torch CPU threads (None = torch's default)
    init_from: str | None = None  # start from these weights (same network): a checkpoint folder or Hub id (fresh optimizer, no EMA warm-up)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting and its allowed values."""
        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("steps", "batch_size", "grad_accum", "timesteps", "log_every", "checkpoint_every"):
            positive(name)
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if isinstance(self.decay_steps, bool) or not isinstance(self.decay_steps, int) \
                or not 0 <= self.decay_steps <= self.steps:
            raise ValueError(f"decay_steps must be an integer from 0 to steps ({self.steps}), got {self.decay_steps!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ValueError(f"init_from must name a checkpoint folder or Hub id, got {self.init_from!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config saved as d; keys this version does not know are ignored, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def save_train_config(out: str | Path, cfg: TrainConfig) -> None:
    """Write cfg as train_config.json into the run folder `out`."""
    (Path(out) / TRAIN_CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def saved_train_config(out: str | Path) -> TrainConfig | None:
    """The TrainConfig a run in this folder was started with, if any (for --resume)."""
    path = Path(out) / TRAIN_CONFIG_NAME
    if not path.exists():
        return None
    return TrainConfig.from_dict(json.loads(path.read_text()))
