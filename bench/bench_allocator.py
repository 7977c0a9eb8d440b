"""What ddpm.allocator.tune_allocator buys: sampling with glibc's default malloc settings vs tuned ones.

    python bench/bench_allocator.py                      # checkpoints/fashion-mnist, 2 repeats
    python bench/bench_allocator.py --repeats 3

mallopt settings are per process and cannot be undone, so each measurement runs in its own child process (plain:
DDPM_NO_MALLOC_TUNING=1; tuned: tune_allocator() first), alternating plain and tuned so both see the same machine.
Two workloads:
  * app grid: a 4x4 grid, 50 DDIM steps, the checkpoint's CFG and guidance interval, bf16 (the app's Generate);
  * eval batch: 250 images, 10 DDIM steps, same guidance, bf16 (a batch of `python -m ddpm.evaluate`).
Prints wall time, user and system CPU time and minor page faults (medians after a warm-up), and plain / tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {"app grid (16 images, 50 steps)": (16, 50), "eval batch (250 images, 10 steps)": (250, 10)}

CHILD = """
import json, resource, sys, time
mode, checkpoint, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from ddpm.allocator import tune_allocator
if mode == "tuned":
    assert tune_allocator(), "tune_allocator() did not apply"
import ddpm
pipe = ddpm.load(checkpoint)
s = pipe.config.sampling
kw = dict(labels=[i % pipe.config.model.num_classes for i in range(n)] if pipe.conditional else None,
          n=None if pipe.conditional else n, steps=steps, cfg=s.get("cfg", 3.0),
          guidance_interval=tuple(s["guidance_interval"]) if s.get("guidance_interval") else None, precision="bf16")
pipe.sample(**{**kw, "steps": 2})  # warm-up
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
pipe.sample(**kw)
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"wall": t1 - t0, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt}))
"""


def measure(mode: str, checkpoint: str, n: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    if mode == "plain":
        env["DDPM_NO_MALLOC_TUNING"] = "1"
    else:
        env.pop("DDPM_NO_MALLOC_TUNING", None)
    out = subprocess.run([sys.executable, "-c", CHILD, mode, checkpoint, str(n), str(steps)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    print(f"checkpoint {args.checkpoint}, {os.cpu_count()} CPUs, medians of {args.repeats} child processes each")
    print(f"{'workload':36} {'malloc':6} {'wall s':>7} {'user s':>7} {'sys s':>7} {'page faults':>12}")
    for name, (n, steps) in WORKLOADS.items():
        runs: dict[str, list[dict]] = {"plain": [], "tuned": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(measure(mode, args.checkpoint, n, steps))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
        for mode, m in med.items():
            print(f"{name:36} {mode:6} {m['wall']:7.2f} {m['user']:7.2f} {m['sys']:7.2f} {m['faults']:12,.0f}")
        print(f"{name:36} plain / tuned wall time: {med['plain']['wall'] / med['tuned']['wall']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
