"""Train a DDPM: flags -> TrainConfig -> ddpm.training.train.

    python train.py --dataset fashion-mnist --preset small --steps 30000 --batch-size 128 --out checkpoints/fashion-mnist
    python train.py --out checkpoints/fashion-mnist --resume --steps 40000        # continue a run
    python train.py --out checkpoints/fashion-mnist --resume --steps 45000 --decay-steps 5000   # ...with a cool-down
    python train.py --init-from checkpoints/fashion-mnist --steps 5000 --decay-steps 2000 --out runs/more  # from weights
    torchrun --nproc_per_node 4 train.py ...                                        # data-parallel (see README)
    python train.py ... --push-to-hub user/ddpm-fashion [--private] [--hub-revision BRANCH]  # publish at the end
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import fields, replace

from ddpm.allocator import tune_allocator
from ddpm.card import prepare_for_hub
from ddpm.device import PRECISION_CHOICES
from ddpm.hub import HubError, check_push_target, push_checkpoint
from ddpm.model import PRESETS
from ddpm.run_folder import has_training_state
from ddpm.train_config import LR_SCHEDULES, TrainConfig, saved_train_config
from ddpm.training import TrainingDivergedError, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    # every default is None so that --resume can tell which flags were given; the real defaults are TrainConfig's,
    # written into each help text (argparse's ArgumentDefaultsHelpFormatter would print "(default: None)")
    p = argparse.ArgumentParser(description="Train a denoising diffusion model (DDPM).")
    add = lambda flag, **kw: p.add_argument(flag, default=None, **kw)  # noqa: E731
    add("--dataset", help=f"fashion-mnist | mnist | mnist-5k | cifar10 | folder:PATH (default {d.dataset})")
    add("--data-dir", help=f"where torchvision datasets are downloaded (default {d.data_dir})")
    add("--out", help=f"checkpoint folder (default {d.out})")
    add("--preset", help=f"model size: {' | '.join(PRESETS)} (default {d.preset})")
    add("--image-size", type=int, help="image side in pixels (default: 28 for MNIST-like data, else 32)")
    add("--channels", type=int, choices=(1, 3), help="1 = grayscale, 3 = RGB (default: the dataset's)")
    add("--unconditional", action="store_const", const=True, help="ignore class labels")
    add("--schedule", choices=("linear", "cosine"), help=f"noise schedule (default {d.schedule})")
    add("--timesteps", type=int, help=f"T, the number of diffusion steps (default {d.timesteps})")
    add("--steps", type=int, help=f"optimisation steps in total (default {d.steps})")
    add("--batch-size", type=int, help=f"per process and micro-batch (default {d.batch_size})")
    add("--grad-accum", type=int, help=f"micro-batches per optimisation step (default {d.grad_accum})")
    add("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    add("--lr-schedule", choices=LR_SCHEDULES, help=f"after warm-up (default {d.lr_schedule})")
    add("--warmup-steps", type=int, help=f"linear learning-rate warm-up (default {d.warmup_steps})")
    add("--decay-steps", type=int, help="final cool-down: the lr falls linearly to 0 over the last N steps; "
        "finish a constant-lr run with --resume --steps TOTAL --decay-steps N (default 0 = none)")
    add("--ema-decay", type=float, help=f"EMA decay, reached after a warm-up (default {d.ema_decay})")
    add("--label-dropout", type=float, help=f"per-sample null-label probability for CFG (default {d.label_dropout})")
    add("--hflip", choices=("on", "off"), help="random horizontal flips (default: off for digits and clothes)")
    add("--precision", choices=PRECISION_CHOICES, help=f"auto = bf16 autocast where supported (default {d.precision})")
    add("--device", help=f"auto | cpu | cuda | cuda:N (default {d.device})")
    add("--seed", type=int, help=f"(default {d.seed})")
    add("--log-every", type=int, help=f"steps between log.jsonl lines (default {d.log_every})")
    add("--sample-every", type=int, help=f"steps between sample grids, 0 = never (default {d.sample_every})")
    add("--checkpoint-every", type=int, help=f"steps between checkpoints (default {d.checkpoint_every})")
    add("--weights-dtype", choices=("fp32", "fp16", "bf16"), help=f"dtype of model.safetensors (default {d.weights_dtype})")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add("--init-from", metavar="CHECKPOINT", help="start from the weights of a checkpoint folder or Hub id "
        "user/repo[@rev] (fine-tuning or continuing a shipped model: a fresh optimizer and warm-up, the EMA without "
        "its warm-up); it must have the same network as this run (same --preset, dataset and image size) and the "
        "same noise schedule; step counts start at 0")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    hub = p.add_argument_group("Hugging Face Hub (token: HF_TOKEN or `hf auth login`)")
    hub.add_argument("--push-to-hub", metavar="USER/REPO", default=None,
                     help="after training, upload weights, config, model card and sample grid to this model repo")
    hub.add_argument("--private", action="store_true", help="create the Hub repo private")
    hub.add_argument("--hub-revision", metavar="BRANCH", default=None, help="push to this branch (created if needed)")
    hub.add_argument("--push-every-checkpoint", action="store_true",
                     help="also push every checkpoint during training (a failed push there only warns)")
    args = p.parse_args(argv)
    if args.push_to_hub is None and (args.private or args.hub_revision or args.push_every_checkpoint):
        p.error("--private, --hub-revision and --push-every-checkpoint need --push-to-hub USER/REPO")
    return args


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's TrainConfig: TrainConfig defaults (or, with --resume, the saved config) overridden by given flags."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.unconditional:
        given["conditional"] = False
    if args.hflip is not None:
        given["hflip"] = args.hflip == "on"
    base = TrainConfig()
    resume = args.resume
    if resume:
        out = given.get("out", base.out)
        saved = saved_train_config(out)
        if saved is not None:
            base = saved  # the run's own settings; flags given now override them
        if not has_training_state(out):
            what = "its saved settings" if saved else "these settings"
            print(f"--resume: {out!r} has no checkpoint yet; starting from step 0 with {what}", file=sys.stderr)
            resume = False
    return replace(base, **given), resume


def is_main_process() -> bool:
    """Rank 0 of a torchrun run, or a plain single-process run: the only process that talks to the Hub."""
    return int(os.environ.get("RANK", "0")) == 0


def push(args: argparse.Namespace, out: str, *, step: int | None = None) -> None:
    """Write the card of `out` for args.push_to_hub, then upload the folder (ddpm.hub.push_checkpoint); raises HubError."""
    prepare_for_hub(out, args.push_to_hub)
    message = f"Checkpoint at step {step}" if step is not None else None
    url = push_checkpoint(out, args.push_to_hub, private=args.private, revision=args.hub_revision, commit_message=message)
    print(f"pushed {out} to {args.push_to_hub}: {url}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()
    on_checkpoint = None
    try:
        cfg, resume = config_from_args(args)
        if args.push_to_hub and is_main_process():
            check_push_target(args.push_to_hub)  # a bad id or no token fails now, not after hours of training
        if args.push_every_checkpoint and is_main_process():
            def on_checkpoint(step: int) -> None:
                if step == cfg.steps:
                    return  # the final checkpoint is pushed below
                try:
                    push(args, cfg.out, step=step)
                except HubError as e:
                    print(f"warning: {e}; training goes on", file=sys.stderr)
        result = train(cfg, resume=resume, progress=not args.no_progress, on_checkpoint=on_checkpoint)
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.interrupted_by:
        pushed = " (not pushed)" if args.push_to_hub else ""
        again = " and the --push-to-hub flags again" if args.push_to_hub else ""
        if is_main_process():
            print(f"stopped by {result.interrupted_by} at step {result.step} of {cfg.steps}; checkpoint saved in "
                  f"{result.out}{pushed}. Continue with: python train.py --out {result.out} --resume{again}",
                  file=sys.stderr)
        return 128 + signal.Signals[result.interrupted_by].value
    if is_main_process():  # one line for the run, not one per torchrun process
        print(f"done: step {result.step}, loss {result.final_loss:.4f}, {result.wall_time_s / 60:.1f} min, "
              f"precision {result.precision}; checkpoint in {result.out}", file=sys.stderr)
    if args.push_to_hub and is_main_process():
        try:
            push(args, str(result.out))
        except (HubError, ValueError) as e:
            print(f"error: {e}\nthe checkpoint is saved; retry with: python -m ddpm.hub push {result.out} "
                  f"{args.push_to_hub}", file=sys.stderr)
            return 3
    return 0


def exit_process(code: int) -> None:
    """Exit with `code`. A torchrun worker leaves without running C++ static destructors: after the process group
    is destroyed, a Gloo thread still joinable at shutdown can abort the process ("terminate called without an
    active exception", exit -6) after a finished run; every file is written and closed by then."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
