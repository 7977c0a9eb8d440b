"""What a training run reads from and writes to its folder (cfg.out), besides train_config.json.

    model.safetensors + config.json  the EMA weights and how they were made: a checkpoint ddpm.load() reads
    training_state.pt                 weights, EMA, optimizer, step and RNG: what --resume needs
    log.jsonl                         one line per log_every steps
    examples/                         one real image per class, for the app's forward-process tab
    samples/step_NNNNNNN.png          sample grids from the EMA weights
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    STATE_NAME,
    CheckpointConfig,
    load_config,
    load_training_state,
    read_weights,
    save_config,
    save_training_state,
    save_weights,
)
from .data import ImageDataset, load_dataset, save_examples
from .device import hardware_description
from .hub import looks_like_hub_id, parse_hub_id, resolve_checkpoint
from .images import save_grid
from .model import ModelConfig, UNet
from .options import SamplerOptions
from .samplers import run_to_end, sample_steps
from .schedule import NoiseSchedule
from .train_config import TrainConfig
from .train_step import EMA


def has_training_state(out: str | Path) -> bool:
    return (Path(out) / STATE_NAME).exists()


def save_training_checkpoint(out: Path, *, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer, step: int,
                             wall_time_s: float, loss: float, smoothed_loss: float | None, ckpt_cfg: CheckpointConfig,
                             cfg: TrainConfig, precision: str, device: torch.device, global_batch: int,
                             init_source: dict[str, Any] | None = None) -> None:
    """Training state first, then weights, then config: each file atomically replaced.

    init_source (a run started with init_from): where its weights came from and how they were trained; kept in
    the training state so that a resumed run still records it.
    """
    save_training_state(out, {
        "model": model.state_dict(),
        "ema": ema.shadow,
        "optimizer": opt.state_dict(),
        "step": step,
        "wall_time_s": wall_time_s,
        "torch_rng": torch.get_rng_state(),
        "model_config": json.dumps(ckpt_cfg.model.to_dict(), sort_keys=True),
        **({"init_source_json": json.dumps(init_source)} if init_source else {}),
    })
    save_weights(out, ema.shadow, dtype=cfg.weights_dtype)
    training = {
        "steps": step,
        "images_seen": step * global_batch,
        "global_batch_size": global_batch,
        "wall_time_s": round(wall_time_s, 1),
        "final_loss": round(loss, 5),
        "smoothed_loss": round(smoothed_loss, 5) if smoothed_loss is not None else None,
        "precision": precision,
        "hardware": hardware_description(device),
        "torch_version": torch.__version__,
        "ema_decay": cfg.ema_decay,
        "label_dropout": cfg.label_dropout,
        "lr": cfg.lr,
        "preset": cfg.preset,
    }
    if init_source:
        training["init_from"] = init_source
    save_config(out, replace(ckpt_cfg, training=training))


def restore_training_state(out: Path, *, model: UNet, ema: EMA,
                           opt: torch.optim.Optimizer) -> tuple[int, float, dict[str, Any] | None]:
    """Load the run in `out` into model, ema and opt and the global torch RNG, for --resume.

    Returns (step, wall_time_s, init_source): where the run stopped, and where its first weights came from (None for
    a run started from random weights). Raises ValueError if the saved network differs from model's.
    """
    state = load_training_state(out)
    if state["model_config"] != json.dumps(model.config.to_dict(), sort_keys=True):
        raise ValueError(f"cannot resume from {out}: its model config differs from this run's "
                         f"(saved {state['model_config']}); use the same preset, dataset and image size")
    model.load_state_dict(state["model"])
    ema.shadow = {k: v.float() for k, v in state["ema"].items()}
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    init_source = json.loads(state["init_source_json"]) if state.get("init_source_json") else None
    return int(state["step"]), float(state["wall_time_s"]), init_source


def load_initial_weights(model: nn.Module, source: str, ckpt_cfg: CheckpointConfig) -> dict[str, Any]:
    """Load the weights of checkpoint `source` (a folder or Hub id) into model, for a run started with init_from.

    The source must describe the same network and noise schedule as this run (ValueError otherwise). Returns what
    the new run's config.json records about it: {"source", "steps", "images_seen", "wall_time_s"} (the source's own
    totals, including those of a run it was itself started from), plus "hub_id" ("user/repo[@revision]") when the
    source was downloaded from the Hub rather than read from a folder (the model card's base_model).
    """
    hub_id = str(parse_hub_id(source)) if looks_like_hub_id(source) else None  # what resolve_checkpoint downloads
    folder = resolve_checkpoint(source)
    src = load_config(folder)
    if src.model != ckpt_cfg.model:
        theirs, ours = src.model.to_dict(), ckpt_cfg.model.to_dict()
        differing = ", ".join(f"{k} = {theirs.get(k)!r} (this run: {v!r})" for k, v in ours.items()
                              if theirs.get(k) != v)
        raise ValueError(f"cannot start from {source!r}: the network of that checkpoint differs from this run's in "
                         f"{differing}; --init-from loads only a checkpoint of the same architecture (use the same "
                         "--preset, dataset and image size)")
    if src.schedule != ckpt_cfg.schedule:
        raise ValueError(f"cannot start from {source!r}: it was trained with the {src.schedule.name} schedule, "
                         f"T = {src.schedule.timesteps}; this run uses {ckpt_cfg.schedule.name}, T = "
                         f"{ckpt_cfg.schedule.timesteps} (set --schedule and --timesteps to match)")
    model.load_state_dict(read_weights(folder, model, f"the model of {source!r}"))
    tr = src.training
    before = tr.get("init_from") or {}

    def total(key: str) -> float | None:
        return (tr.get(key) or 0) + (before.get(key) or 0) if tr.get(key) is not None else None

    return {"source": str(source), "steps": total("steps"), "images_seen": total("images_seen"),
            "wall_time_s": total("wall_time_s"), **({"hub_id": hub_id} if hub_id else {})}


def write_examples(cfg: TrainConfig, train_data: ImageDataset, folder: Path) -> None:
    """One real image per class for the app's forward-process tab: from the test split when there is one."""
    data = train_data
    if cfg.dataset in ("fashion-mnist", "mnist", "cifar10"):
        try:
            data = load_dataset(cfg.dataset, image_size=train_data.images.shape[-1], channels=train_data.images.shape[1],
                                data_dir=cfg.data_dir, train=False)
        except (OSError, RuntimeError, ValueError):
            pass  # no test split here: use training images
    save_examples(data, folder)


@torch.no_grad()
def write_sample_grid(path: Path, ema: EMA, model_cfg: ModelConfig, schedule: NoiseSchedule, *, seed: int,
                      per_class: int = 8, steps: int = 25, cfg_scale: float = 2.0) -> None:
    """A grid from the EMA weights: one row per class (or 4 rows for an unconditional model)."""
    model = UNet(model_cfg)
    ema.copy_to(model)
    model.eval()
    if model_cfg.num_classes is not None:
        labels = torch.arange(model_cfg.num_classes).repeat_interleave(per_class)  # (classes * per_class,)
    else:
        labels = None
    n = len(labels) if labels is not None else 4 * per_class
    options = SamplerOptions(sampler="ddim", steps=min(steps, schedule.T), cfg=cfg_scale)
    x0 = run_to_end(sample_steps(model, schedule, n=n, labels=labels, seed=seed, options=options,
                                 null_label=model_cfg.num_classes, image_shape=(model_cfg.in_channels,
                                 model_cfg.image_size, model_cfg.image_size), device="cpu"))  # (n, C, H, W)
    save_grid(x0, path, nrow=per_class)


class JsonlLog:
    """An append-only log: one JSON object per line (log.jsonl)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
