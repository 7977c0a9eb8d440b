"""ddpm.allocator: raising glibc's mmap/trim thresholds stops the page-fault churn of large tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# allocate and free a 64 MB tensor 3 times (the heap may grow during these), then 30 more times: report the minor
# page faults of each of the last 30 and what tune_allocator said
PROBE = """
import json, resource, sys, torch
from ddpm.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else None
for _ in range(3):
    torch.ones(16_000_000)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16_000_000)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DDPM_NO_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc only")


@pytest.mark.slow
@glibc
def test_tuning_stops_the_page_faults_of_large_tensors():
    plain, tuned = probe("plain"), probe("tune")
    assert tuned["tuned"] is True
    # untuned: every 64 MB tensor is a fresh mmap, ~15,600 pages (4 KiB) faulted in each time; tuned: the heap's
    # memory is reused, so allocations fault almost nothing once the heap has settled. It settles after a few
    # allocations whose number varies from run to run (0 to 5 after the warm-ups on this machine, more under load;
    # each faults a whole tensor in), so the test asks for 20 quiet allocations of 30.
    pages = 16_000_000 * 4 // 4096
    assert all(f > 0.9 * pages for f in plain["faults"]), plain["faults"]
    assert sum(f < 0.1 * pages for f in tuned["faults"]) >= 20, tuned["faults"]


@pytest.mark.slow
@glibc
def test_the_users_choice_wins():
    assert probe("tune", DDPM_NO_MALLOC_TUNING="1")["tuned"] is False
    assert probe("tune", MALLOC_MMAP_THRESHOLD_="65536")["tuned"] is False
