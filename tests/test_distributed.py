"""Data-parallel training with torchrun (Gloo on the CPU, 2 processes) and gradient accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm.checkpoint import load_training_state
from ddpm.model import UNet, preset_config
from ddpm.train_config import TrainConfig
from ddpm.training import train

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from ddp_worker import synthetic_dataset  # noqa: E402


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DDPM_DIST_TIMEOUT="60", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def params_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_training_state(folder)["model"]


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_double_batch(tmp_path: Path) -> None:
    """One optimisation step with 2 ranks at batch b == 1 process at batch 2b on the same examples."""
    res = torchrun(str(WORKER), str(tmp_path / "ddp"), "4", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = TrainConfig(dataset="synthetic", out=str(tmp_path / "single"), preset="tiny", steps=2, batch_size=8, lr=2e-3,
                      warmup_steps=1, precision="fp32", device="cpu", schedule="linear", timesteps=100, sample_every=0,
                      checkpoint_every=2, log_every=1, seed=7)
    train(cfg, dataset=synthetic_dataset(), progress=False)
    ddp, single = params_of(tmp_path / "ddp"), params_of(tmp_path / "single")
    # the steps really changed the weights, so this compares trained weights, not two initialisations
    torch.manual_seed(7)
    init = UNet(preset_config("tiny", in_channels=1, image_size=8, num_classes=2)).state_dict()
    assert sum(not torch.equal(init[k], v) for k, v in ddp.items()) >= 20  # zero-initialised outputs gate the rest
    assert_same_params(ddp, single)
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2  # rank 0 alone writes the log
    # ... and logs the global batch's loss (both ranks' examples), as the one process does
    one = [json.loads(line) for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(log, one):
        for key in ("loss", "loss_q0", "loss_q1", "loss_q2", "loss_q3"):
            assert (a[key] is None and b[key] is None) or abs(a[key] - b[key]) < 1e-5, (key, a[key], b[key])


def test_gradient_accumulation_equals_larger_batch(tmp_path: Path) -> None:
    common = dict(dataset="synthetic", preset="tiny", steps=3, lr=2e-3, warmup_steps=1, precision="fp32", device="cpu",
                  schedule="linear", timesteps=100, sample_every=0, checkpoint_every=3, log_every=1, seed=3)
    train(TrainConfig(out=str(tmp_path / "accum"), batch_size=4, grad_accum=2, **common), dataset=synthetic_dataset(),
          progress=False)
    train(TrainConfig(out=str(tmp_path / "big"), batch_size=8, grad_accum=1, **common), dataset=synthetic_dataset(),
          progress=False)
    assert_same_params(params_of(tmp_path / "accum"), params_of(tmp_path / "big"))
    cfg = json.loads((tmp_path / "accum" / "config.json").read_text())
    assert cfg["training"]["global_batch_size"] == 8


@pytest.mark.slow
def test_train_py_under_torchrun_writes_one_checkpoint_and_learns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ds = synthetic_dataset(n=64, size=8)
    for i in range(len(ds)):
        cls = ds.class_names[int(ds.labels[i])]
        (data / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i, 0].numpy()).save(data / cls / f"{i}.png")
    out = tmp_path / "run"
    res = torchrun(str(ROOT / "train.py"), "--dataset", f"folder:{data}", "--image-size", "8", "--channels", "1",
                   "--hflip", "off", "--preset", "tiny", "--steps", "60", "--batch-size", "16", "--lr", "3e-3",
                   "--warmup-steps", "5", "--precision", "fp32", "--schedule", "linear", "--timesteps", "100",
                   "--sample-every", "0", "--checkpoint-every", "30", "--log-every", "10", "--threads", "1",
                   "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global batch 32 = 16 x 2 process(es) x 1 accumulation" in res.stderr
    assert res.stderr.count("done: step 60") == 1  # one line for the run, not one per process
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "examples", "log.jsonl", "model.safetensors", "train_config.json", "training_state.pt"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 61, 10))  # one writer: no duplicated lines
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["steps"] == 60 and cfg["training"]["images_seen"] == 60 * 32

    # --resume in a distributed run continues from step 60
    res = torchrun(str(ROOT / "train.py"), "--out", str(out), "--resume", "--steps", "70", "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 70


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down(tmp_path: Path) -> None:
    res = torchrun(str(WORKER), str(tmp_path / "fail"), "4", "20", "1", "1", timeout=180)
    assert res.returncode != 0
    assert "injected failure on rank 1" in res.stderr + res.stdout
    assert not (tmp_path / "fail" / "training_state.pt").exists()
