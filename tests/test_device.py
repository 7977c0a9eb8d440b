"""Devices and precision: names to devices, bf16 where it works, and the sampling rule for "auto"."""

from __future__ import annotations

import pytest
import torch

import ddpm.device
from ddpm.device import (
    AUTO_BF16_MIN_BATCH,
    choose_precision,
    cpu_memory_format,
    hardware_description,
    resolve_device,
    resolve_precision,
)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("supported", [True, False])
def test_precision_follows_what_the_device_supports(monkeypatch, supported):
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: supported)
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) == ("bf16" if supported else "fp32")
    if supported:
        assert resolve_precision("bf16", cpu) == "bf16"
    else:
        with pytest.raises(ValueError, match="bf16 autocast is not supported on cpu"):
            resolve_precision("bf16", cpu)
    assert cpu_memory_format() == (torch.contiguous_format if supported else torch.channels_last)
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16"):
        resolve_precision("fp16", cpu)


def test_auto_picks_bf16_for_big_sampling_batches_only(monkeypatch):
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: True)
    assert choose_precision("auto", AUTO_BF16_MIN_BATCH - 1) == ("fp32", "auto: network batch 15 < 16")
    assert choose_precision("auto", AUTO_BF16_MIN_BATCH) == ("bf16", "auto: network batch 16 >= 16")
    assert choose_precision("fp32", 64) == ("fp32", "chosen")
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: False)
    assert choose_precision("auto", 64) == ("fp32", "auto: bf16 not supported here")
    with pytest.raises(ValueError, match="bf16 autocast is not supported"):
        choose_precision("bf16", 64)


def test_where_bf16_is_reported_an_autocast_convolution_runs_in_bf16():
    if not ddpm.device.bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 autocast")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 5, 5)).dtype == torch.bfloat16
    assert "CPU" in hardware_description(torch.device("cpu"))
