"""The training loss on images the model never saw: a cheap first look at a checkpoint before a full evaluation.

    python research/heldout_loss.py checkpoints/fashion-mnist runs/fm-medium [--n 2000 --draws 8]

For N images of the dataset's test split (a fixed balanced subset) and DRAWS fixed (t, eps) pairs per image, the
mean of ||eps - eps_theta(x_t, t, y)||^2 over pixels (Ho et al. eq. 14 with uniform t), overall and by quarter of
the t range. Every checkpoint gets the same images, t and eps, so two checkpoints are compared on equal terms
(the difference is much less noisy than either number). A lower loss is not a better sampler by itself: it says
which checkpoints are worth the minutes of `python -m ddpm.evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.classifier import load_split  # noqa: E402
from ddpm.data import to_model_range  # noqa: E402
from ddpm.device import PRECISION_CHOICES, resolve_precision  # noqa: E402
from ddpm.metrics import balanced_subset  # noqa: E402
from ddpm.schedule import NoiseSchedule  # noqa: E402


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None,
                 *, draws: int = 8, seed: int = 0, precision: str = "auto", batch_size: int = 250) -> dict[str, float]:
    """Mean eps-prediction MSE over images (N, C, H, W) (uint8, or float in [-1, 1]) x `draws` (t, eps) draws.

    precision: "auto" = bf16 autocast where the CPU supports it, else fp32 (bf16 emulated on a CPU without it is
    about ten times slower), or "bf16" / "fp32".

    Returns {"loss": ..., "q0".."q3": the loss for t in each quarter of [0, T), low noise first}. The draws depend
    only on seed, N and the image shape, not on the model.
    """
    precision = resolve_precision(precision, torch.device("cpu"))
    x0_all = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    g = torch.Generator().manual_seed(seed)
    t_all = torch.randint(0, schedule.T, (draws, len(x0_all)), generator=g)
    eps_all = torch.randn((draws, *x0_all.shape), generator=g)
    per_example = torch.empty(draws, len(x0_all))
    for d in range(draws):
        for start in range(0, len(x0_all), batch_size):
            sl = slice(start, start + batch_size)
            x0, t, eps = x0_all[sl], t_all[d, sl], eps_all[d, sl]
            y = labels[sl] if labels is not None else None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                eps_pred = model(schedule.q_sample(x0, t, eps), t, y)
            per_example[d, sl] = (eps_pred.float() - eps).pow(2).flatten(1).mean(1)
    out = {"loss": float(per_example.mean())}
    quarter = (t_all * 4) // schedule.T
    for q in range(4):
        out[f"q{q}"] = float(per_example[quarter == q].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run folders (a run folder holds its EMA weights)")
    p.add_argument("--n", type=int, default=2000, help="test images, balanced over the classes")
    p.add_argument("--draws", type=int, default=8, help="(t, eps) draws per image")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="auto = bf16 autocast where the CPU supports it, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ddpm import load

    rows = []
    try:
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for ckpt in args.checkpoints:
            pipe = load(ckpt)
            m = pipe.config.model
            key = f"{pipe.config.dataset}/{m.image_size}/{m.in_channels}"
            if key not in cache:
                test = load_split(pipe.config.dataset, train=False, image_size=m.image_size, channels=m.in_channels)
                k = test.num_classes or int(test.labels.max()) + 1
                if args.n < k or args.n % k:
                    raise ValueError(f"--n must be a multiple of the {k} classes, got {args.n}")
                idx = balanced_subset(test.labels, args.n // k, k, seed=args.seed)
                cache[key] = (test.images[idx], test.labels[idx])
            images, labels = cache[key]
            r = heldout_loss(pipe.model, pipe.schedule, images, labels if pipe.conditional else None,
                             draws=args.draws, seed=args.seed, precision=args.precision)
            rows.append((ckpt, pipe.config.training.get("steps"), r))
            print(f"{ckpt}: {r['loss']:.5f}", file=sys.stderr, flush=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"| checkpoint | steps | held-out loss | t in 1st quarter | 2nd | 3rd | 4th |\n|---|---:|---:|---:|---:|---:|---:|")
    for ckpt, steps, r in rows:
        print(f"| {ckpt} | {steps if steps is not None else '-'} | {r['loss']:.5f} | "
              + " | ".join(f"{r[f'q{q}']:.4f}" for q in range(4)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
