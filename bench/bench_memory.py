"""Peak memory of `python -m ddpm.sample` as the number of images grows: flat in --n once it exceeds --batch-size.

    python bench/bench_memory.py [--checkpoint checkpoints/fashion-mnist] [--steps 5]

Each run is a fresh process (peak RSS = its ru_maxrss); memory does not depend on the number of steps, so a few steps
keep the benchmark short. Prints peak RSS for --n 10 and --n 100 per class (--label all: 100 and 1,000 images), in
bounded batches (the default) and in one batch (--batch-size 10000, how the CLI sampled before), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys
from ddpm.sample import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_mb(checkpoint: str, n: int, steps: int, batch_size: int | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--checkpoint", checkpoint, "--label", "all", "--n", str(n), "--steps", str(steps),
                "--out", str(Path(tmp) / "s.npz")] + (["--batch-size", str(batch_size)] if batch_size else [])
        res = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["code"] != 0:
        raise RuntimeError(res.stderr)
    return out["peak_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    for label, batch in (("bounded batches (default)", None), ("one batch (--batch-size 10000)", 10_000)):
        small, large = (peak_mb(args.checkpoint, n, args.steps, batch) for n in (10, 100))
        print(f"{label:32s} --n 10: {small:7.0f} MB   --n 100: {large:7.0f} MB   ratio {large / small:.2f}x", flush=True)


if __name__ == "__main__":
    main()
