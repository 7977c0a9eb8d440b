"""Sampling on the thread that loaded the model against another thread: why the app has a torch thread.

    python bench/bench_threads.py                      # checkpoints/fashion-mnist, the app's 4x4 default
    python bench/bench_threads.py --rounds 3 --repeats 3

PyTorch's OpenMP runtime gives each thread that runs a parallel loop a team of its own; with more team threads
than CPUs it stops spin-waiting between loops (see ddpm/torch_thread.py). Each mode runs in a fresh process
(teams live as long as their process), the modes alternate, and each process times the app's default request
(16 images of class 7 with the checkpoint's sampler, spacing, interval and that class's scale; precision auto)
after one warm-up:
  * one thread: the model loaded and sampled on one TorchThread, as app.py does now;
  * split: loaded on the main thread, sampled on a TorchThread, as a gradio handler did before
    (gradio runs handlers on its worker threads, the model was loaded on the main one).
Prints the medians and the ratio split / one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("one-thread", "split")


def child(checkpoint: str, mode: str, repeats: int) -> dict:
    # imports here: the parent process never loads torch (no OpenMP team of its own), the child tunes malloc first
    sys.path.insert(0, str(ROOT))
    from ddpm.allocator import tune_allocator

    tune_allocator()
    import torch

    from ddpm.samplers import run_to_end
    from ddpm.torch_thread import TorchThread

    tt = TorchThread()
    # split: the model loaded and the request checked (its bf16 probe runs a convolution) on the main thread
    setup = tt.call if mode == "one-thread" else (lambda fn, *a: fn(*a))
    pipe, request = setup(_setup, checkpoint)

    def once() -> float:
        t0 = time.perf_counter()
        tt.call(run_to_end, request.stream(pipe))
        return time.perf_counter() - t0

    once()
    times = [once() for _ in range(repeats)]
    return {"mode": mode, "times": times, "threads": torch.get_num_threads(), "request": request.describe(),
            "tasks": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None}


def _setup(checkpoint: str):
    """The pipeline and the app's default request for it (class 7 at its scale, 16 images, the controls' start)."""
    import ddpm
    from ddpm.studio import label_choices, parse_request, start_options

    pipe = ddpm.load(checkpoint)
    o = start_options(pipe)
    label = min(7, len(pipe.label_names) - 1) if pipe.conditional else None
    request = parse_request(pipe, label=label_choices(pipe)[label] if pipe.conditional else None,
                            cfg=o.cfg_for(label), steps=o.steps, seed=0, n_images=16, sampler=o.sampler, eta=o.eta,
                            precision=o.precision, limit_guidance=o.guidance_interval is not None,
                            spacing=o.spacing, redraws=o.redraws)
    return pipe, request


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--rounds", type=int, default=2, help="processes per mode (alternating)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per process, after one warm-up")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.checkpoint, args.child, args.repeats)))
        return
    if not (Path(args.checkpoint) / "config.json").exists():
        raise SystemExit(f"no checkpoint at {args.checkpoint}")
    results: dict[str, list[float]] = {m: [] for m in MODES}
    info = {}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--checkpoint", args.checkpoint, "--child", mode,
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode] += r["times"]
            info = r
    print(f"request: {info['request']} · {info['threads']} torch threads · {os.cpu_count()} CPUs")
    med = {m: statistics.median(v) for m, v in results.items()}
    for m in MODES:
        print(f"{m:>10}: median {med[m]:.2f} s   (all: {[round(x, 2) for x in results[m]]})")
    print(f"split / one thread: {med['split'] / med['one-thread']:.2f}x")


if __name__ == "__main__":
    main()
