"""The training loop: train(cfg) -> a checkpoint folder. AdamW with warm-up, EMA, bf16 autocast, resume, DDP.

The loop's parts live beside it: the settings in train_config.py, the pure pieces of a step (batch, loss, lr, EMA)
in train_step.py, the files of the run folder in run_folder.py, torchrun in distributed.py. Every random draw of a
step comes from (seed, step), so a run is the same whatever the number of processes or accumulation steps, and
--resume continues it exactly (see train_step.py).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointConfig
from .data import ImageDataset, default_geometry, load_dataset
from .device import resolve_precision
from .distributed import init_distributed, leave_distributed, mean_over_processes, sum_over_processes, wrap_model
from .model import UNet, count_parameters, preset_config
from .run_folder import (
    JsonlLog,
    load_initial_weights,
    restore_training_state,
    save_training_checkpoint,
    write_examples,
    write_sample_grid,
)
from .schedule import NoiseSchedule, ScheduleConfig
from .train_config import TrainConfig, save_train_config
from .train_step import EMA, BatchSampler, LossStats, diffusion_loss, lr_at, make_global_batch


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    """Where a run's checkpoint is and how far it got."""

    out: Path
    step: int
    final_loss: float
    wall_time_s: float
    precision: str
    interrupted_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run early (checkpoint saved)


class GracefulStop:
    """Turns the first SIGINT / SIGTERM into a request to stop after the current step (the loop then saves a checkpoint).

    A second signal gets the previous handler (Ctrl-C twice still aborts at once). Only installed in the main thread
    of a single-process run: signal handlers cannot be set elsewhere, and under torchrun every rank would have to
    agree on the step to stop at.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signal.Signals(signum).name
        self.restore()
        print(f"\n{self.received}: stopping after this step and saving a checkpoint (send it again to abort now)",
              file=sys.stderr)

    def install(self) -> GracefulStop:
        if self.enabled:
            self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    dataset: ImageDataset | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a model as described by cfg, writing checkpoints into cfg.out. Returns where and how far.

    on_checkpoint(step) runs on the main process after each checkpoint (and its sample grid) is written.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist_info, device = init_distributed(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    out = Path(cfg.out)

    size, ch = default_geometry(cfg.dataset)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, image_size=cfg.image_size or size, channels=cfg.channels or ch,
                               data_dir=cfg.data_dir, train=True, hflip=cfg.hflip)
    num_classes = dataset.num_classes if cfg.conditional else None
    model_cfg = preset_config(cfg.preset, in_channels=dataset.images.shape[1], image_size=dataset.images.shape[-1],
                              num_classes=num_classes)
    schedule = NoiseSchedule(ScheduleConfig(name=cfg.schedule, timesteps=cfg.timesteps))
    ckpt_cfg = CheckpointConfig(model=model_cfg, schedule=schedule.config, dataset=cfg.dataset,
                                class_names=dataset.class_names if num_classes else None)

    torch.manual_seed(cfg.seed)  # the initial weights (identical on every rank)
    model = UNet(model_cfg).to(device)
    init_source = None
    if cfg.init_from is not None and not resume:
        init_source = load_initial_weights(model, cfg.init_from, ckpt_cfg)
    ema = EMA(model, cfg.ema_decay, warmup=cfg.init_from is None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_step, wall_before = 0, 0.0
    if resume:
        start_step, wall_before, init_source = restore_training_state(out, model=model, ema=ema, opt=opt)
        if start_step >= cfg.steps and dist_info.is_main:
            print(f"{out} is already at step {start_step} >= --steps {cfg.steps}; nothing to do", file=sys.stderr)
    train_model = wrap_model(model, dist_info, device)

    global_batch = cfg.batch_size * dist_info.world_size * cfg.grad_accum
    sampler = BatchSampler(len(dataset), cfg.seed)
    null_label = model_cfg.num_classes
    log = JsonlLog(out / "log.jsonl") if dist_info.is_main else None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_train_config(out, cfg)
        if not (out / "examples").exists():  # at the start, so that every checkpoint of the run has them
            write_examples(cfg, dataset, out / "examples")
        print(f"training {count_parameters(model):,}-parameter UNet on {cfg.dataset} ({len(dataset):,} images) | "
              f"device {device}, precision {precision}, {dist_info.world_size} process(es) | global batch "
              f"{global_batch} = {cfg.batch_size} x {dist_info.world_size} process(es) x {cfg.grad_accum} accumulation",
              file=sys.stderr)
        if resume:
            print(f"resuming {out} at step {start_step} of {cfg.steps}", file=sys.stderr)
        if init_source is not None:
            print(("the run started" if resume else "starting") + f" from the weights of {init_source['source']}",
                  file=sys.stderr)

    bar = None
    if progress and dist_info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    stats = LossStats(cfg.timesteps)
    smoothed = None
    t_start, t_window, last_loss = time.time(), time.time(), float("nan")
    last_saved = start_step if resume else None
    step = start_step

    def save(done: int) -> None:
        save_training_checkpoint(out, model=model, ema=ema, opt=opt, step=done,
                                 wall_time_s=wall_before + time.time() - t_start, loss=last_loss,
                                 smoothed_loss=smoothed, ckpt_cfg=ckpt_cfg, cfg=cfg, precision=precision,
                                 device=device, global_batch=global_batch, init_source=init_source)

    model.train()
    stop = GracefulStop(enabled=not dist_info.enabled).install()
    try:
        for step in range(start_step, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = make_global_batch(dataset, sampler, step, global_batch, T=cfg.timesteps, seed=cfg.seed,
                                      label_dropout=cfg.label_dropout, null_label=null_label)
            step_loss = torch.zeros((), device=device)
            for k in range(cfg.grad_accum):
                part = batch.slice(dist_info.rank * cfg.grad_accum + k, cfg.batch_size)
                sync = k == cfg.grad_accum - 1 or not dist_info.enabled
                ctx = train_model.no_sync() if not sync else nullcontext()
                with ctx:
                    loss, per_example = diffusion_loss(train_model, schedule, part, precision=precision)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
                stats.add(part.t, per_example.cpu())
            last_loss = float(mean_over_processes(step_loss, dist_info))
            if not math.isfinite(last_loss):
                where = f"; the last good checkpoint (step {last_saved}) in {out} is kept" if last_saved else \
                    "; no checkpoint was written"
                raise TrainingDivergedError(
                    f"loss became {last_loss} at step {step}{where}. Try a lower --lr (now {cfg.lr}), "
                    f"--precision fp32, or check the data for NaNs")
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model, step)
            done = step + 1
            smoothed = last_loss if smoothed is None else 0.98 * smoothed + 0.02 * last_loss
            if on_step:
                on_step(done, last_loss)
            if bar is not None:
                bar.update(1)
                if done % 10 == 0 or done == cfg.steps:
                    ips = bar.format_dict.get("rate") or 0.0
                    bar.set_postfix(loss=f"{smoothed:.4f}", img_s=f"{ips * global_batch:.0f}", refresh=False)
            if done % cfg.log_every == 0 or done == cfg.steps:
                sum_over_processes(stats.sums, dist_info)  # the global batch's loss, not rank 0's share of it
                sum_over_processes(stats.counts, dist_info)
                now = time.time()
                if log is not None:
                    log.write({"step": done, "loss": stats.mean(), **stats.quarters(), "lr": lr_at(step, cfg),
                               "images_per_s": round(stats.count / max(now - t_window, 1e-9), 1),
                               "wall_time_s": round(wall_before + now - t_start, 1)})
                stats.reset()
                t_window = now
            is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if is_ckpt and dist_info.is_main:
                save(done)
                last_saved = done
            if dist_info.is_main and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
                write_sample_grid(out / "samples" / f"step_{done:07d}.png", ema, model_cfg, schedule, seed=cfg.seed)
            if is_ckpt and dist_info.is_main and on_checkpoint is not None:
                on_checkpoint(done)
            if stop.received and done < cfg.steps:
                if last_saved != done:
                    save(done)
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    leave_distributed(dist_info)
    return TrainResult(out, max(step + 1, start_step), last_loss, wall_before + time.time() - t_start, precision,
                       interrupted_by=stop.received if step + 1 < cfg.steps else None)
