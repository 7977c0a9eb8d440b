"""ddpm.training, the training loop: loss goes down, resume is exact, NaN stops cleanly, a signal stops the run
after its step with a checkpoint, and bad settings are refused before anything is trained."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddpm
from ddpm import training
from ddpm.checkpoint import load_training_state
from ddpm.training import TrainingDivergedError, train

ROOT = Path(__file__).resolve().parents[1]


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_loss_goes_down(tiny_checkpoint):
    """The shared tiny checkpoint trained for 100 steps: the loss of the last logged window is far below the first."""
    log = read_log(tiny_checkpoint)
    assert [r["step"] for r in log] == [25, 50, 75, 100]
    assert all(math.isfinite(r["loss"]) for r in log)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], [r["loss"] for r in log]
    assert log[-1]["loss"] < 0.3
    for key in ("loss_q0", "loss_q1", "loss_q2", "loss_q3", "lr", "images_per_s"):
        assert key in log[-1]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["training"]["steps"] == 100 and config["data"]["class_names"] == ["Horizontal", "Vertical", "Square"]


def _state(folder: Path) -> dict:
    return load_training_state(folder)


@pytest.mark.slow
@pytest.mark.parametrize("decay_steps", [0, 6])
def test_resume_gives_the_same_weights(tmp_path, synthetic_dataset, tiny_train_config_factory, decay_steps):
    # a constant-lr run stopped at step 10 and resumed to 20 (with a cool-down over the last decay_steps steps added
    # only at the resume) is the same run as one started for 20 steps with that cool-down
    kw = dict(batch_size=16, warmup_steps=5, log_every=5, checkpoint_every=1000)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_train_config_factory(straight, steps=20, decay_steps=decay_steps, **kw), dataset=synthetic_dataset,
          progress=False)
    train(tiny_train_config_factory(split, steps=10, **kw), dataset=synthetic_dataset, progress=False)
    assert _state(split)["step"] == 10
    train(tiny_train_config_factory(split, steps=20, decay_steps=decay_steps, **kw), dataset=synthetic_dataset,
          progress=False, resume=True)
    if decay_steps:
        assert [r["lr"] for r in read_log(split)][-2:] == pytest.approx([2e-3 * 6 / 6, 2e-3 * 1 / 6])
    a, b = _state(straight), _state(split)
    assert a["step"] == b["step"] == 20
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=1e-5, msg=f"{part}.{k}")
    for k, s in a["optimizer"]["state"].items():
        torch.testing.assert_close(s["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"], atol=1e-9, rtol=1e-5)
    # the shipped weights are the EMA weights
    weights = load_file(str(straight / "model.safetensors"))
    assert all(torch.equal(weights[k], a["ema"][k]) for k in weights)
    # the log continues where it stopped
    assert [r["step"] for r in read_log(split)] == [5, 10, 15, 20]


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_dataset, tiny_train_config_factory,
                                                           monkeypatch):
    real_loss, calls = training.diffusion_loss, []

    def poisoned(model, schedule, batch, *, precision):  # the loss turns NaN from the 13th step (step index 12) on
        loss, per_example = real_loss(model, schedule, batch, precision=precision)
        calls.append(1)
        return (loss * float("nan"), per_example) if len(calls) > 12 else (loss, per_example)

    monkeypatch.setattr(training, "diffusion_loss", poisoned)
    out = tmp_path / "run"
    cfg = tiny_train_config_factory(out, steps=30, batch_size=16, checkpoint_every=5)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 12.*last good checkpoint \(step 10\)"):
        train(cfg, dataset=synthetic_dataset, progress=False)
    monkeypatch.undo()
    assert _state(out)["step"] == 10
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 10
    pipe = ddpm.load(out)
    assert all(torch.isfinite(p).all() for p in pipe.model.parameters())
    images = pipe.sample(labels=[0, 1], steps=3, seed=0)
    assert torch.isfinite(images).all()


def test_nan_before_any_checkpoint(tmp_path, synthetic_dataset, tiny_train_config_factory, monkeypatch):
    real_loss = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss",
                        lambda *a, **k: (lambda l, p: (l * float("inf"), p))(*real_loss(*a, **k)))
    with pytest.raises(TrainingDivergedError, match="loss became (inf|nan) at step 0; no checkpoint was written"):
        train(tiny_train_config_factory(tmp_path, steps=5, batch_size=8), dataset=synthetic_dataset, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path, synthetic_image_folder, sig):
    """Ctrl-C or a scheduler's SIGTERM between checkpoints loses no steps: the run saves where it is and says how
    to go on."""
    data = synthetic_image_folder
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "train.py", "--dataset", f"folder:{data}", "--steps", "1000000",
                             "--checkpoint-every", "1000000", "--out", str(out), "--image-size", "12", "--channels",
                             "1", "--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "2",
                             "--precision", "fp32", "--threads", "1", "--timesteps", "100", "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # a guard against a hung child, not a speed requirement
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"train.py exited early: {proc.stderr.read()[-2000:]}"
        assert not (out / "model.safetensors").exists()  # no checkpoint yet: --checkpoint-every is far away
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig.value, stderr[-2000:]
    step = load_training_state(out)["step"]
    assert step >= 4
    assert ddpm.load(out).config.training["steps"] == step
    assert f"stopped by {sig.name} at step {step} of 1000000; checkpoint saved in {out}" in stderr
    assert f"python train.py --out {out} --resume" in stderr


def test_graceful_stop_catches_one_signal_then_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = training.GracefulStop(enabled=True).install()
    try:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread at the next bytecode boundary
        assert stop.received == "SIGTERM"
        # the first signal hands the signals back: a second one acts as it would have without the trainer
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        stop.restore()
    assert training.GracefulStop(enabled=False).install().received is None
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_unknown_preset_and_device(tmp_path, synthetic_dataset, tiny_train_config_factory):
    with pytest.raises(ValueError, match="unknown preset"):
        train(tiny_train_config_factory(tmp_path, preset="giant"), dataset=synthetic_dataset, progress=False)
    with pytest.raises(ValueError, match="device"):
        train(tiny_train_config_factory(tmp_path, device="tpu:9"), dataset=synthetic_dataset, progress=False)
