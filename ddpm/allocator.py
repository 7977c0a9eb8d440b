"""Process-wide tuning of glibc's malloc for PyTorch on the CPU.

PyTorch's CPU allocator gets its memory from malloc. Activations of a few MB and more are above glibc's mmap
threshold, so every network call maps fresh pages, faults each one in (zeroed by the kernel) and unmaps them again
when the tensor is freed. On this project's 2-core machine that kernel work was half the time of sampling a
250-image batch with full guidance (8 DDIM steps: 27 s of 31 s were system time, ~10 million page faults).
Raising the mmap and trim thresholds makes malloc serve those tensors from its heap and keep freed memory for the
next call: the same batch took 15 s. `python bench/bench_allocator.py` measures it: the app's 4x4 grid 3.73 s ->
3.29 s (1.13x), a 250-image evaluation batch 12.69 s -> 8.78 s (1.45x).

The price is that freed memory stays with the process (its resident size does not shrink after a peak), which is
what a long-running app or training run wants anyway. Entry points (app.py, train.py, the `python -m ddpm.*`
tools) call `tune_allocator()` once at start-up; importing the library changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 2**31 - 1  # the largest int: nothing is ever mmapped or trimmed
ENV_OPT_OUT = "DDPM_NO_MALLOC_TUNING"
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set.

    A no-op (False) off Linux/glibc, when the environment already sets MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ (the user's choice wins), or when DDPM_NO_MALLOC_TUNING=1.
    """
    if os.environ.get(ENV_OPT_OUT, "") not in ("", "0") or any(v in os.environ for v in GLIBC_ENV):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
