"""A training entry point for the distributed tests, launched by torchrun (or plainly).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT BATCH STEPS [GRAD_ACCUM] [FAIL_RANK]

Trains the tiny preset on a small synthetic dataset (fp32, so runs can be compared exactly). With FAIL_RANK, that rank
raises at its second step, to test that the job goes down instead of hanging.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddpm.data import ImageDataset  # noqa: E402
from ddpm.train_config import TrainConfig  # noqa: E402
from ddpm.training import train  # noqa: E402


def synthetic_dataset(n: int = 64, size: int = 8) -> ImageDataset:
    """Two classes: bright squares on the left or on the right, with a little noise. Deterministic."""
    g = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 40, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    half = size // 2
    for i in range(n):
        if labels[i] == 0:
            images[i, :, :, :half] += 200
        else:
            images[i, :, :, half:] += 200
    return ImageDataset("synthetic", images, labels.long(), ("left", "right"))


def main() -> None:
    out, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    grad_accum = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    fail_rank = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    rank = int(os.environ.get("RANK", "0"))

    def on_step(step: int, loss: float) -> None:
        if rank == fail_rank and step >= 1:
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")

    cfg = TrainConfig(dataset="synthetic", out=out, preset="tiny", steps=steps, batch_size=batch, grad_accum=grad_accum,
                      lr=2e-3, warmup_steps=1, precision="fp32", device="cpu", schedule="linear", timesteps=100,
                      sample_every=0, checkpoint_every=steps, log_every=1, seed=7, threads=1)
    train(cfg, dataset=synthetic_dataset(), progress=False, on_step=on_step)


if __name__ == "__main__":
    main()
