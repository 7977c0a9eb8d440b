"""Devices and precision: a leaf module every other module may use.

    resolve_device("auto")        -> cuda if there is one, else cpu
    bf16_supported(device)        -> whether bf16 autocast works there (tried, not guessed)
    resolve_precision("auto", d)  -> "bf16" where supported, else "fp32" (training, evaluation)
    choose_precision("auto", b)   -> bf16 only for a network batch >= 16 (sampling: small batches run faster in fp32)
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import nn

PRECISION_CHOICES = ("auto", "fp32", "bf16")
AUTO_BF16_MIN_BATCH = 16  # sampling: bf16 autocast pays from a network batch of 16 rows (bench/bench_library.py)


def resolve_device(name: str) -> torch.device:
    """A torch device from "auto", "cpu", "cuda" or "cuda:N"; ValueError for an unknown or unavailable one."""
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
    return _cpu_bf16()


@functools.cache
def _cpu_bf16() -> bool:
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
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "fp32":
        return "fp32"
    ok = bf16_supported(device)
    if precision == "bf16" and not ok:
        raise ValueError(f"bf16 autocast is not supported on {device}; use precision fp32")
    return "bf16" if ok else "fp32"


def choose_precision(choice: str, batch: int, device: torch.device = torch.device("cpu")) -> tuple[str, str]:
    """(precision, why) for sampling with `batch` rows per network call; "auto" = bf16 from AUTO_BF16_MIN_BATCH."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if choice != "auto":
        return resolve_precision(choice, device), "chosen"
    if batch < AUTO_BF16_MIN_BATCH:
        return "fp32", f"auto: network batch {batch} < {AUTO_BF16_MIN_BATCH}"
    if not bf16_supported(device):
        return "fp32", "auto: bf16 not supported here"
    return "bf16", f"auto: network batch {batch} >= {AUTO_BF16_MIN_BATCH}"


def cpu_memory_format() -> torch.memory_format:
    """The weight layout sampling on this CPU runs fastest in: channels-last without bf16 autocast, else NCHW.

    Measured with the shipped small UNet (DPM-Solver++(2M), 50 steps, CFG in 0.2..0.8): on a CPU without bf16,
    channels-last sampled a 4x4 grid 1.24x as fast as NCHW (fp32); on one with bf16 it sampled the same grid in
    bf16 (the app's choice for a network batch of 16 or more) at 0.95x the speed of NCHW, and 1-4 images in fp32
    at 0.98-1.12x. bench/bench_library.py measures both layouts on the machine at hand.
    """
    return torch.contiguous_format if bf16_supported(torch.device("cpu")) else torch.channels_last


def hardware_description(device: torch.device) -> str:
    """"NVIDIA A100 ..." or "x86_64 CPU, 2 threads": recorded in a checkpoint's training facts."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
