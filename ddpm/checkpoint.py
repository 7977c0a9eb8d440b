"""A self-describing checkpoint folder.

    DIR/config.json          model config, schedule config, dataset and class names, training facts, versions
    DIR/model.safetensors    the weights used for sampling (the EMA weights), fp32 / fp16 / bf16
    DIR/training_state.pt    only for --resume: model, EMA, optimizer, step, RNG states (tensors only;
                             loaded with weights_only=True)

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file. Loading weights never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .device import cpu_memory_format
from .model import ModelConfig, UNet
from .options import SamplerOptions
from .schedule import ScheduleConfig

FORMAT = "ddpm-studio"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "training_state.pt"
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, from another format version, or inconsistent."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Everything needed to rebuild and describe a model; the content of config.json."""

    model: ModelConfig
    schedule: ScheduleConfig
    dataset: str = "unknown"
    class_names: tuple[str, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)  # steps, images_seen, wall time, final loss, ...
    # the recommended sampling settings; a dict (config.json) or None is read, what it leaves out is SamplerOptions'
    # default, with steps capped at T
    sampling: SamplerOptions = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        try:
            sampling = self.sampling
            if not isinstance(sampling, SamplerOptions):
                given = dict(sampling or {})
                given.setdefault("steps", min(SamplerOptions().steps, self.schedule.timesteps))
                sampling = SamplerOptions.from_dict(given)
            sampling.validate(self.schedule.timesteps, num_classes=self.model.num_classes)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config.json \"sampling\" is invalid: {e}") from e
        object.__setattr__(self, "sampling", sampling)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
            if self.model.num_classes != len(self.class_names):
                raise CheckpointError(
                    f"config has {len(self.class_names)} class names but the model has num_classes={self.model.num_classes}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "model": self.model.to_dict(),
            "schedule": self.schedule.to_dict(),
            "data": {
                "dataset": self.dataset,
                "class_names": list(self.class_names) if self.class_names else None,
                "image_size": self.model.image_size,
                "channels": self.model.in_channels,
            },
            "training": self.training,
            "sampling": self.sampling.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "config.json") -> "CheckpointConfig":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a {FORMAT} checkpoint config (missing \"format\": \"{FORMAT}\")")
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format_version {d.get('format_version')!r} (written by ddpm-studio "
                f"{d.get('library_version', '?')}); this version reads format_version {FORMAT_VERSION}"
            )
        try:
            model = ModelConfig.from_dict(dict(d["model"]))
            sched_d = dict(d["schedule"])
            schedule = ScheduleConfig(**sched_d)
            data = d.get("data") or {}
            return cls(model=model, schedule=schedule, dataset=str(data.get("dataset", "unknown")),
                       class_names=data.get("class_names"), training=dict(d.get("training") or {}),
                       sampling=dict(d.get("sampling") or {}))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source} is invalid: {e}") from e


def _atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path) then rename tmp_path over path (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_config(folder: str | Path, config: CheckpointConfig) -> None:
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    _atomic_write(Path(folder) / CONFIG_NAME, lambda p: Path(p).write_text(text))


def save_weights(folder: str | Path, state_dict: dict[str, torch.Tensor], *, dtype: str = "fp32") -> None:
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    tensors = {k: v.detach().to("cpu", WEIGHT_DTYPES[dtype]).contiguous() for k, v in state_dict.items()}
    _atomic_write(Path(folder) / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))


def save_checkpoint(folder: str | Path, model: torch.nn.Module, config: CheckpointConfig, *, dtype: str = "fp32") -> Path:
    """Write model.safetensors (the given model's weights) and config.json into folder."""
    folder = Path(folder)
    save_weights(folder, model.state_dict(), dtype=dtype)
    save_config(folder, config)
    return folder


def save_training_state(folder: str | Path, state: dict[str, Any]) -> None:
    _atomic_write(Path(folder) / STATE_NAME, lambda p: torch.save(state, p))


def load_config(folder: str | Path) -> CheckpointConfig:
    path = Path(folder) / CONFIG_NAME
    if not Path(folder).is_dir():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} has no {CONFIG_NAME}; is it a ddpm-studio checkpoint folder?")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    return CheckpointConfig.from_dict(d, source=str(path))


def read_weights(folder: str | Path, model: torch.nn.Module, what: str) -> dict[str, torch.Tensor]:
    """FOLDER/model.safetensors as fp32 tensors, checked to fit `model` key by key and shape by shape.

    Raises CheckpointError naming the file and the missing, unexpected or mis-shaped tensors (`what` names the model
    in that message), or the first tensor holding NaN / inf values (one isfinite pass per tensor). Nothing is
    unpickled.
    """
    path = Path(folder) / WEIGHTS_NAME
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{kind}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys
        )
        raise CheckpointError(f"{path} does not fit {what} ({detail})")
    weights = {k: v.float() for k, v in tensors.items()}
    broken = {k: int((~torch.isfinite(v)).sum()) for k, v in weights.items() if not torch.isfinite(v).all()}
    if broken:
        name, count = next(iter(broken.items()))
        more = f" (and {len(broken) - 1} more tensors)" if len(broken) > 1 else ""
        raise CheckpointError(f"{path}: tensor {name!r} has {count} NaN / inf values{more}; the weights are broken")
    return weights


def load_model(folder: str | Path, config: CheckpointConfig | None = None, *, device: str | torch.device = "cpu") -> tuple[UNet, CheckpointConfig]:
    """Build the UNet from config.json and load model.safetensors into it (fp32, eval mode).

    On a CPU without bf16 autocast the weights are put in channels-last (NHWC) layout, which oneDNN's fp32
    convolutions run faster than NCHW; where bf16 autocast works (and so runs the big batches: the app's 4x4 grid)
    they stay NCHW, which its bf16 convolutions run faster (see `cpu_memory_format`). The outputs agree to float
    rounding, and saving still writes plain contiguous tensors.
    """
    folder = Path(folder)
    config = config or load_config(folder)
    model = UNet(config.model)
    model.load_state_dict(read_weights(folder, model, "the model described in config.json"))
    model.eval().requires_grad_(False)
    model = model.to(device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=cpu_memory_format())
    return model, config


def load_training_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE_NAME
    if not path.exists():
        raise CheckpointError(f"{str(folder)!r} has no {STATE_NAME} to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or hostile file: weights_only refuses arbitrary objects
        raise CheckpointError(f"{path} cannot be loaded as a training state: {e}") from e
