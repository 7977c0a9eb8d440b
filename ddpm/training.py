"""The training loop: epsilon-prediction MSE, AdamW with warm-up, EMA, bf16 autocast, checkpoints, resume, DDP.

Determinism: every random draw of a training step (which examples, t, eps, dropped labels, flips) comes
from a generator seeded by (seed, step) for the WHOLE global batch, and each process / micro-batch takes
its slice. So a run gives the same result whatever the number of processes or gradient-accumulation
steps (up to float summation order), and resuming needs only the step counter and the dropout RNG.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from .data import ImageDataset, load_dataset, save_examples, to_model_range
from .grow import grow
from .model import ModelConfig, UNet, count_parameters, preset_config
from .schedule import ScheduleConfig, NoiseSchedule

PRECISION_CHOICES = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")
TRAIN_CONFIG_NAME = "train_config.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


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
    init_from: str | None = None  # start from these weights: a checkpoint folder or Hub id (fresh optimizer, no EMA warm-up)

    def validate(self) -> None:
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
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# -- devices and precision -------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast works (and is native) on this device: try it, fall back on any failure."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        conv = nn.Conv2d(1, 4, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(torch.randn(1, 1, 8, 8))
        return out.dtype == torch.bfloat16
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where supported, else 'fp32'. An explicit 'bf16' that is unsupported is an error."""
    if precision == "fp32":
        return "fp32"
    ok = bf16_supported(device)
    if precision == "bf16" and not ok:
        raise ValueError(f"bf16 autocast is not supported on {device}; use --precision fp32")
    return "bf16" if ok else "fp32"


# -- pieces of the loop ----------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters (and copies of its buffers), kept in fp32.

    With warmup (random initial weights) the decay ramps up as min(decay, (1 + k) / (10 + k)) so the average
    soon forgets the random start; without it (weights that are already trained) the full decay applies from
    the first update.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        d = self.decay_at(updates)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimisation step `step` (0-based).

    Linear warm-up over warmup_steps, then constant or cosine down to 10% at the last step; with decay_steps = K > 0
    the last K steps are also scaled by a linear cool-down (steps - step) / K, reaching lr / K at the final step
    (warmup-stable-decay). A constant-lr run is thus a valid shorter run at every checkpoint, and can be extended
    with --resume and finished with a cool-down: `--steps N --decay-steps K` gives the same lr at every step as a
    fresh run with those flags.
    """
    if step < cfg.warmup_steps:
        lr = cfg.lr * (step + 1) / cfg.warmup_steps
    elif cfg.lr_schedule == "constant":
        lr = cfg.lr
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    if cfg.decay_steps > 0:
        lr *= min(1.0, max(0, cfg.steps - step) / cfg.decay_steps)
    return lr


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


class BatchSampler:
    """The indices of every global batch: epochs of random permutations, each from (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, -1 - epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int, global_batch: int) -> torch.Tensor:
        start, out = step * global_batch, []
        while len(out) < global_batch:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.n - offset, global_batch - len(out))
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
        return torch.tensor(out, dtype=torch.long)


@dataclass
class GlobalBatch:
    """One step's examples and noise for all processes: x0 (G, C, H, W) in [-1, 1], t (G,), eps, y (G,) or None."""

    x0: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    y: torch.Tensor | None

    def slice(self, part: int, size: int) -> "GlobalBatch":
        s = slice(part * size, (part + 1) * size)
        return GlobalBatch(self.x0[s], self.t[s], self.eps[s], None if self.y is None else self.y[s])


def make_global_batch(data: ImageDataset, sampler: BatchSampler, step: int, global_batch: int, *,
                      T: int, seed: int, label_dropout: float, null_label: int | None) -> GlobalBatch:
    """All random draws of a step, from one generator seeded by (seed, step). t is uniform over 0..T-1."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    idx = sampler.indices(step, global_batch)
    x0 = to_model_range(data.images[idx])
    if data.hflip:
        flip = torch.rand(global_batch, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, T, (global_batch,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    y = None
    if null_label is not None and data.labels is not None:
        y = data.labels[idx].clone()
        drop = torch.rand(global_batch, generator=g) < label_dropout  # per sample
        y[drop] = null_label
    return GlobalBatch(x0, t, eps, y)


def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, batch: GlobalBatch, *, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The simple loss of Ho et al. (eq. 14): mean ||eps - eps_theta(x_t, t, y)||^2. Returns (loss, per-example loss)."""
    device = next(model.parameters()).device
    x0, t, eps = batch.x0.to(device), batch.t.to(device), batch.eps.to(device)
    x_t = schedule.q_sample(x0, batch.t, eps)
    y = batch.y.to(device) if batch.y is not None else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        eps_pred = model(x_t, t, y)
    per_example = F.mse_loss(eps_pred.float(), eps, reduction="none").flatten(1).mean(1)
    return per_example.mean(), per_example.detach()


# -- distributed -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1): NCCL on GPUs, Gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    import datetime

    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("DDPM_DIST_TIMEOUT", "300")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank), device


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
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


def default_geometry(dataset: str) -> tuple[int, int]:
    """(image_size, channels) for a dataset name."""
    return (28, 1) if dataset in ("mnist", "mnist-5k", "fashion-mnist") else (32, 3)


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


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
        state = load_training_state(out)
        if state["model_config"] != json.dumps(model_cfg.to_dict(), sort_keys=True):
            raise ValueError(f"cannot resume from {out}: its model config differs from this run's "
                             f"(saved {state['model_config']}); use the same preset, dataset and image size")
        model.load_state_dict(state["model"])
        ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        opt.load_state_dict(state["optimizer"])
        start_step, wall_before = int(state["step"]), float(state["wall_time_s"])
        init_source = json.loads(state["init_source_json"]) if state.get("init_source_json") else None
        torch.set_rng_state(state["torch_rng"])
        if start_step >= cfg.steps and dist_info.is_main:
            print(f"{out} is already at step {start_step} >= --steps {cfg.steps}; nothing to do", file=sys.stderr)

    train_model: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    global_batch = cfg.batch_size * dist_info.world_size * cfg.grad_accum
    sampler = BatchSampler(len(dataset), cfg.seed)
    null_label = model_cfg.num_classes
    log = JsonlLog(out / "log.jsonl") if dist_info.is_main else None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / TRAIN_CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if not (out / "examples").exists():  # at the start, so that every checkpoint of the run has them
            write_examples(cfg, dataset, out / "examples")
        print(f"training {count_parameters(model):,}-parameter UNet on {cfg.dataset} ({len(dataset):,} images) | "
              f"device {device}, precision {precision}, {dist_info.world_size} process(es) | global batch "
              f"{global_batch} = {cfg.batch_size} x {dist_info.world_size} process(es) x {cfg.grad_accum} accumulation",
              file=sys.stderr)
        if resume:
            print(f"resuming {out} at step {start_step} of {cfg.steps}", file=sys.stderr)
        if init_source is not None:
            grown = init_source.get("grown_from")
            print(("the run started" if resume else "starting") + f" from the weights of {init_source['source']}"
                  + (f", grown from {grown['num_res_blocks']} to {model_cfg.num_res_blocks} residual blocks per level "
                     f"({grown['parameters']:,} parameters; the same function at the start)" if grown else ""),
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
                ctx = train_model.no_sync() if not sync else _nullcontext()
                with ctx:
                    loss, per_example = diffusion_loss(train_model, schedule, part, precision=precision)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
                stats.add(part.t, per_example.cpu())
            if dist_info.enabled:
                import torch.distributed as dist

                dist.all_reduce(step_loss)
                step_loss /= dist_info.world_size
            last_loss = float(step_loss)
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
            if log is not None and (done % cfg.log_every == 0 or done == cfg.steps):
                now = time.time()
                rate = stats.count / max(now - t_window, 1e-9) * dist_info.world_size
                log.write({"step": done, "loss": stats.mean(), **stats.quarters(), "lr": lr_at(step, cfg),
                           "images_per_s": round(rate, 1), "wall_time_s": round(wall_before + now - t_start, 1)})
                stats.reset()
                t_window = now
            is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if is_ckpt and dist_info.is_main:
                _save(out, model, ema, opt, done, wall_before + time.time() - t_start, last_loss, smoothed,
                      ckpt_cfg, cfg, precision, device, global_batch, init_source)
                last_saved = done
            if dist_info.is_main and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
                write_sample_grid(out / "samples" / f"step_{done:07d}.png", ema, model_cfg, schedule, seed=cfg.seed)
            if is_ckpt and dist_info.is_main and on_checkpoint is not None:
                on_checkpoint(done)
            if stop.received and done < cfg.steps:
                if last_saved != done:
                    _save(out, model, ema, opt, done, wall_before + time.time() - t_start, last_loss, smoothed,
                          ckpt_cfg, cfg, precision, device, global_batch, init_source)
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()  # rank 0 may still be writing the last checkpoint
        dist.destroy_process_group()
    return TrainResult(out, max(step + 1, start_step), last_loss, wall_before + time.time() - t_start, precision,
                       interrupted_by=stop.received if step + 1 < cfg.steps else None)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class LossStats:
    """Running mean of the loss overall and per quarter of the t range (which noise levels are learned)."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)
        self.counts = torch.zeros(4, dtype=torch.float64)

    def add(self, t: torch.Tensor, per_example: torch.Tensor) -> None:
        q = (t * 4 // self.T).clamp(0, 3)
        self.sums.index_add_(0, q, per_example.double())
        self.counts.index_add_(0, q, torch.ones_like(per_example, dtype=torch.float64))

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float:
        return float(self.sums.sum() / self.counts.sum().clamp(min=1))

    def quarters(self) -> dict[str, float | None]:
        return {f"loss_q{i}": (float(self.sums[i] / self.counts[i]) if self.counts[i] else None) for i in range(4)}


class JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _save(out: Path, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer, step: int, wall: float, loss: float,
          smoothed: float | None, ckpt_cfg: CheckpointConfig, cfg: TrainConfig, precision: str, device: torch.device,
          global_batch: int, init_source: dict[str, Any] | None = None) -> None:
    """Training state first, then weights, then config: each file atomically replaced.

    init_source (a run started with init_from): where its weights came from and how they were trained; kept in
    the training state so that a resumed run still records it.
    """
    save_training_state(out, {
        "model": model.state_dict(),
        "ema": ema.shadow,
        "optimizer": opt.state_dict(),
        "step": step,
        "wall_time_s": wall,
        "torch_rng": torch.get_rng_state(),
        "model_config": json.dumps(ckpt_cfg.model.to_dict(), sort_keys=True),
        **({"init_source_json": json.dumps(init_source)} if init_source else {}),
    })
    save_weights(out, ema.shadow, dtype=cfg.weights_dtype)
    training = {
        "steps": step,
        "images_seen": step * global_batch,
        "global_batch_size": global_batch,
        "wall_time_s": round(wall, 1),
        "final_loss": round(loss, 5),
        "smoothed_loss": round(smoothed, 5) if smoothed is not None else None,
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


@torch.no_grad()
def write_sample_grid(path: Path, ema: EMA, model_cfg: ModelConfig, schedule: NoiseSchedule, *, seed: int,
                      per_class: int = 8, steps: int = 25, cfg_scale: float = 2.0) -> None:
    """A grid from the EMA weights: one row per class (or 4 rows for an unconditional model)."""
    from .images import save_grid
    from .samplers import SamplerOptions, run_to_end, sample_steps

    model = UNet(model_cfg)
    ema.copy_to(model)
    model.eval()
    if model_cfg.num_classes is not None:
        labels = torch.arange(model_cfg.num_classes).repeat_interleave(per_class)
    else:
        labels = None
    n = len(labels) if labels is not None else 4 * per_class
    options = SamplerOptions(sampler="ddim", steps=min(steps, schedule.T), cfg=cfg_scale)
    x0 = run_to_end(sample_steps(model, schedule, n=n, labels=labels, seed=seed, options=options,
                                 null_label=model_cfg.num_classes, image_shape=(model_cfg.in_channels,
                                 model_cfg.image_size, model_cfg.image_size)))
    save_grid(x0, path, nrow=per_class)


def load_initial_weights(model: nn.Module, source: str, ckpt_cfg: CheckpointConfig) -> dict[str, Any]:
    """Load the weights of checkpoint `source` (a folder or Hub id) into model, for a run started with init_from.

    The source must describe the same network and noise schedule as this run. Returns what the new run's
    config.json records about it: {"source", "steps", "images_seen", "wall_time_s"} (the source's own totals,
    including those of a run it was itself started from).
    """
    from .hub import resolve_checkpoint

    folder = resolve_checkpoint(source)
    src = load_config(folder)
    # a network with fewer residual blocks per level and otherwise the same is grown to this one (ddpm.grow)
    growing = (src.model.num_res_blocks < ckpt_cfg.model.num_res_blocks
               and replace(src.model, num_res_blocks=ckpt_cfg.model.num_res_blocks) == ckpt_cfg.model)
    if src.model != ckpt_cfg.model and not growing:
        raise ValueError(f"cannot start from {source!r}: its network ({src.model.to_dict()}) differs from this run's "
                         f"({ckpt_cfg.model.to_dict()}); use the same --preset, dataset and image size (a network "
                         "that differs only in having fewer residual blocks per level is grown to this one)")
    if src.schedule != ckpt_cfg.schedule:
        raise ValueError(f"cannot start from {source!r}: it was trained with the {src.schedule.name} schedule, "
                         f"T = {src.schedule.timesteps}; this run uses {ckpt_cfg.schedule.name}, T = "
                         f"{ckpt_cfg.schedule.timesteps} (set --schedule and --timesteps to match)")
    if growing:
        small = UNet(src.model)
        small.load_state_dict(read_weights(folder, small, f"the model of {source!r}"))
        model.load_state_dict(grow(small, ckpt_cfg.model.num_res_blocks).state_dict())
    else:
        model.load_state_dict(read_weights(folder, model, f"the model of {source!r}"))
    tr = src.training
    before = tr.get("init_from") or {}
    total = lambda key: (tr.get(key) or 0) + (before.get(key) or 0) if tr.get(key) is not None else None  # noqa: E731
    info = {"source": str(source), "steps": total("steps"), "images_seen": total("images_seen"),
            "wall_time_s": total("wall_time_s")}
    if growing:
        info["grown_from"] = {"num_res_blocks": src.model.num_res_blocks,
                              "parameters": count_parameters(small)}
    return info


def has_training_state(out: str | Path) -> bool:
    return (Path(out) / STATE_NAME).exists()


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


def saved_train_config(out: str | Path) -> TrainConfig | None:
    """The TrainConfig a run in this folder was started with, if any (for --resume)."""
    path = Path(out) / TRAIN_CONFIG_NAME
    if not path.exists():
        return None
    return TrainConfig.from_dict(json.loads(path.read_text()))
