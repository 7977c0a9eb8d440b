"""Speed of the library on this machine, measured in one run so that the ratios hold on a noisy machine.

    python bench/bench_library.py            # ~2-4 minutes on 2 cores
    python bench/bench_library.py --quick    # ~1 minute, fewer repetitions
    python bench/bench_library.py --json bench/out/speed.json

It prints, for the default preset ("small") at 28x28:
  * training images/s at batch 128 in the project's default mode (bf16 autocast where supported) and
    in plain fp32 eager mode, both through the training loop's own code (make_global_batch,
    diffusion_loss, gradient clipping, AdamW, EMA);
  * DDIM sampler milliseconds per step with CFG for 1, 16 and 64 images (network batch 2, 32, 128), in
    fp32 and bf16, with the weights in NCHW and in channels-last layout (what `ddpm.load` uses on a CPU), and
    the sampler's own overhead: the loop's time minus the same network calls alone
    (noisy: a difference of two timings), and, directly, the loop's time around a no-op network;
  * the network's FLOPs per image (torch.utils.flop_counter: convolutions, matmuls and attention, not
    element-wise ops) and the achieved GFLOP/s against a large matmul in the same precision;
  * the same for the tutorial's MyTinyUNet (bench/tutorial_unet.py; at 32x32, its native size).

Every figure is the minimum (sampling) or median (training) over a few timed repetitions after warm-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for `import ddpm`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddpm.data import ImageDataset  # noqa: E402
from ddpm.model import UNet, count_parameters, preset_config  # noqa: E402
from ddpm.options import SamplerOptions  # noqa: E402
from ddpm.samplers import run_to_end, sample_steps  # noqa: E402
from ddpm.schedule import NoiseSchedule, ScheduleConfig  # noqa: E402
from ddpm.device import resolve_precision  # noqa: E402
from ddpm.train_step import EMA, BatchSampler, diffusion_loss, make_global_batch  # noqa: E402
from tutorial_unet import MyTinyUNet  # noqa: E402

NUM_CLASSES = 10
CFG = 3.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# -- measurements ----------------------------------------------------------------------------------
def train_step_times(model: nn.Module, data: ImageDataset, schedule: NoiseSchedule, *, precision: str, batch: int,
                     warmup: int, repeat: int, conditional: bool) -> list[float]:
    """Seconds per optimisation step of the training loop's own pieces: batch, loss, backward, clip, AdamW, EMA."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(model, 0.999)
    sampler = BatchSampler(len(data), seed=0)
    null_label = NUM_CLASSES if conditional else None
    times = []
    for k in range(warmup + repeat):
        t0 = time.perf_counter()
        b = make_global_batch(data, sampler, k, batch, T=schedule.T, seed=0, label_dropout=0.1, null_label=null_label)
        loss, _ = diffusion_loss(model, schedule, b, precision=precision)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, k)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    model.eval()
    return times


def sampler_times(model: nn.Module, schedule: NoiseSchedule, *, n: int, precision: str, steps: int, repeat: int,
                  conditional: bool, image_shape: tuple[int, int, int]) -> tuple[float, float, int]:
    """(loop seconds per step, network-alone seconds per call, network batch): DDIM with CFG (conditional models)."""
    labels = torch.arange(n) % NUM_CLASSES if conditional else None
    options = SamplerOptions(sampler="ddim", steps=steps, cfg=CFG if conditional else 1.0, precision=precision)
    null_label = NUM_CLASSES if conditional else None

    def loop() -> None:
        run_to_end(sample_steps(model, schedule, n=n, labels=labels, seed=0, options=options, null_label=null_label,
                                image_shape=image_shape))

    # the same network calls the loop makes: one batched forward of [x, x] with [labels, null] per step
    net_batch = 2 * n if conditional else n
    x = torch.randn(net_batch, *image_shape)
    t = torch.full((net_batch,), schedule.T // 2, dtype=torch.long)
    y = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)]) if labels is not None else None

    def net() -> None:
        for _ in range(steps):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(x, t, y).float()

    net()  # warm-up (also the loop's first call, below)
    loop_best, net_best = float("inf"), float("inf")
    for _ in range(repeat + 1):  # the first loop run is a warm-up too; interleaved so drift hits both alike
        t0 = time.perf_counter()
        loop()
        loop_best = min(loop_best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        net()
        net_best = min(net_best, time.perf_counter() - t0)
    return loop_best / steps, net_best / steps, net_batch


class NoOpNet(nn.Module):
    """A network that costs nothing: the sampler loop around it measures the sampler's own overhead directly."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


def noop_sampler_time(schedule: NoiseSchedule, *, n: int, steps: int, repeat: int, conditional: bool,
                      image_shape: tuple[int, int, int]) -> float:
    """Seconds per step of the DDIM + CFG loop with a free network (noise, CFG combination, update, copies)."""
    labels = torch.arange(n) % NUM_CLASSES if conditional else None
    options = SamplerOptions(sampler="ddim", steps=steps, cfg=CFG if conditional else 1.0)
    best = float("inf")
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        run_to_end(sample_steps(NoOpNet(), schedule, n=n, labels=labels, seed=0, options=options,
                                null_label=NUM_CLASSES if conditional else None, image_shape=image_shape))
        best = min(best, time.perf_counter() - t0)
    return best / steps


def flops_per_image(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple[float, float]:
    """(forward FLOPs, forward+backward FLOPs) per image, counted by FlopCounterMode in fp32."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x, t, y)
    fwd = counter.get_total_flops()
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as counter:
        model(x, t, y).pow(2).mean().backward()
    for p in params:
        p.grad = None
    return fwd / len(x), counter.get_total_flops() / len(x)


def matmul_gflops(dtype: torch.dtype, *, n: int, repeat: int) -> float:
    """GFLOP/s of an (n x n) @ (n x n) matmul in dtype: a practical peak for this machine and thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# -- the run ---------------------------------------------------------------------------------------
def synthetic_data(size: int, conditional: bool, n: int = 1024) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % NUM_CLASSES if conditional else None
    names = tuple(str(i) for i in range(NUM_CLASSES)) if conditional else None
    return ImageDataset("synthetic", images, labels, names)


def run(quick: bool, log: Callable[[str], None]) -> dict:
    train_warmup, train_repeat = (1, 2) if quick else (2, 5)
    sample_steps_n, sample_repeat = (3, 1) if quick else (8, 2)
    batch = 128
    schedule = NoiseSchedule(ScheduleConfig(name="cosine"))
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    report: dict = {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__, "bf16_autocast": bf16,
        "quick": quick, "load_average_start": load_average(), "matmul": {}, "models": {},
    }
    n_mm = 1024 if quick else 2048
    for p in precisions:
        report["matmul"][p] = matmul_gflops(torch.float32 if p == "fp32" else torch.bfloat16, n=n_mm, repeat=3)
        log(f"matmul {n_mm}x{n_mm} {p}: {report['matmul'][p]:.1f} GFLOP/s")

    torch.manual_seed(0)
    small_cfg = preset_config("small", image_size=28, num_classes=NUM_CLASSES)
    models = {
        "small UNet (default preset, 28x28, conditional)": (lambda: UNet(small_cfg), 28, True),
        "tutorial MyTinyUNet (32x32, unconditional)": (lambda: MyTinyUNet(), 32, False),
    }
    for name, (make, size, conditional) in models.items():
        model = make()
        entry: dict = {"params": count_parameters(model), "image_size": size, "train": {}, "sample": []}
        shape = (1, size, size)
        x = torch.randn(4, *shape)
        t = torch.randint(0, schedule.T, (4,))
        y = torch.arange(4) if conditional else None
        entry["forward_flops"], entry["train_flops"] = flops_per_image(model, x, t, y)
        log(f"{name}: {entry['params']:,} parameters, {entry['forward_flops'] / 1e6:.1f} MFLOP forward per image")

        data = synthetic_data(size, conditional)
        # default mode first: the project's (bf16 autocast where supported); then plain fp32 eager
        modes = (["bf16"] if bf16 else []) + ["fp32"]
        for mode in modes:
            times = train_step_times(make(), data, schedule, precision=mode, batch=batch, warmup=train_warmup,
                                     repeat=train_repeat, conditional=conditional)
            step_s = statistics.median(times)
            gflops = entry["train_flops"] * batch / step_s / 1e9
            entry["train"][mode] = {"ms_per_step": step_s * 1e3, "images_per_s": batch / step_s, "gflops": gflops,
                                    "fraction_of_matmul": gflops / report["matmul"][mode]}
            log(f"  train {mode}: {step_s * 1e3:.0f} ms/step, {batch / step_s:.0f} images/s")

        model.eval()
        layouts = {"NCHW": model, "channels-last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
        for n in (1, 16, 64):
            noop_s = noop_sampler_time(schedule, n=n, steps=max(sample_steps_n, 20), repeat=sample_repeat,
                                       conditional=conditional, image_shape=shape)
            for p, layout in ((p, layout) for p in precisions for layout in layouts):
                loop_s, net_s, net_batch = sampler_times(layouts[layout], schedule, n=n, precision=p,
                                                         steps=sample_steps_n, repeat=sample_repeat,
                                                         conditional=conditional, image_shape=shape)
                gflops = entry["forward_flops"] * net_batch / net_s / 1e9
                entry["sample"].append({
                    "images": n, "network_batch": net_batch, "precision": p, "layout": layout,
                    "ms_per_step": loop_s * 1e3,
                    "network_ms_per_call": net_s * 1e3, "overhead_ms_per_step": (loop_s - net_s) * 1e3,
                    "noop_network_ms_per_step": noop_s * 1e3,
                    "gflops": gflops, "fraction_of_matmul": gflops / report["matmul"][p],
                })
                log(f"  sample {n} images, {p}, {layout}: {loop_s * 1e3:.1f} ms/step (network alone {net_s * 1e3:.1f} ms)")
        report["models"][name] = entry
    report["load_average_end"] = load_average()
    return report


def markdown(report: dict) -> str:
    la = report["load_average_start"], report["load_average_end"]
    out = [
        f"CPU: {report['cpu']}, {report['threads']} torch threads, torch {report['torch']}, "
        f"bf16 autocast {'supported' if report['bf16_autocast'] else 'not supported'}; "
        f"1-min load average {la[0]:.1f} at start, {la[1]:.1f} at end{' (--quick)' if report['quick'] else ''}.",
        "",
        "Matmul (2048x2048, or 1024 with --quick): " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in report["matmul"].items()),
        "",
        "**Training** (batch 128; batch + loss + backward + clip + AdamW + EMA, the training loop's own code)",
        "",
        "| model | params | mode | ms/step | images/s | GFLOP/s | % of matmul |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for i, (name, m) in enumerate(report["models"].items()):
        for mode, r in m["train"].items():
            label = "bf16 autocast" + (" (project default)" if i == 0 else "") if mode == "bf16" else "fp32 eager"
            out.append(f"| {name} | {m['params'] / 1e6:.2f}M | {label} | {r['ms_per_step']:.0f} | {r['images_per_s']:.0f} | "
                       f"{r['gflops']:.1f} | {r['fraction_of_matmul']:.0%} |")
    small = next(iter(report["models"].values()))
    if "bf16" in small["train"]:
        ratio = small["train"]["bf16"]["images_per_s"] / small["train"]["fp32"]["images_per_s"]
        out += ["", f"Default mode vs plain fp32 eager (small UNet): {ratio:.2f}x the images/s."]
    out += [
        "",
        f"**Sampling** (DDIM; conditional models with CFG w={CFG:g}, one batched call of [cond, uncond] per step)",
        "",
        "| model | images | network batch | precision | layout | ms/step | network alone, ms "
        "| overhead (loop - network), ms/step | loop with a no-op network, ms/step | GFLOP/s | % of matmul |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        for r in m["sample"]:
            out.append(f"| {name} | {r['images']} | {r['network_batch']} | {r['precision']} | {r['layout']} | "
                       f"{r['ms_per_step']:.1f} | "
                       f"{r['network_ms_per_call']:.1f} | {r['overhead_ms_per_step']:.2f} | "
                       f"{r['noop_network_ms_per_step']:.2f} | {r['gflops']:.1f} | "
                       f"{r['fraction_of_matmul']:.0%} |")
    for name, m in report["models"].items():
        ratios = []
        for r in m["sample"]:
            if r["layout"] == "channels-last":
                base = next(q for q in m["sample"] if q["layout"] == "NCHW" and q["images"] == r["images"]
                            and q["precision"] == r["precision"])
                plural = "s" if r["images"] > 1 else ""
                ratios.append(f"{base['ms_per_step'] / r['ms_per_step']:.2f}x ({r['images']} image{plural}, {r['precision']})")
        out += ["", f"Channels-last vs NCHW, {name}: " + ", ".join(ratios) + " the speed."]
    out += ["", "**FLOPs per image** (FlopCounterMode: convolutions, matmuls, attention)", "",
            "| model | forward MFLOP | forward + backward MFLOP |", "|---|---:|---:|"]
    for name, m in report["models"].items():
        out.append(f"| {name} | {m['forward_flops'] / 1e6:.1f} | {m['train_flops'] / 1e6:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller matmul (~1 minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the raw figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
