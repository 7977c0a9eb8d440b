"""The training loop: loss goes down, t and label dropout are drawn right, resume is exact, NaN stops
cleanly, a killed run leaves a loadable checkpoint, a signal stops the run after its step with a checkpoint,
EMA and learning-rate warm-ups follow their formulas."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import ddpm
from ddpm import training
from ddpm.checkpoint import CheckpointConfig, load_training_state, save_checkpoint
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig
from ddpm.train_config import TrainConfig
from ddpm.train_step import EMA, BatchSampler, lr_at, make_global_batch
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


def test_first_loss_is_one(tmp_path, synthetic_dataset, tiny_train_config_factory):
    """The output layer starts at zero, so eps_pred = 0 and the first loss is E[eps^2] = 1."""
    losses = []
    train(tiny_train_config_factory(tmp_path, steps=1, batch_size=64), dataset=synthetic_dataset, progress=False,
          on_step=lambda step, loss: losses.append(loss))
    n = 64 * 12 * 12
    assert losses[0] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def _batch(data, step: int, size: int, *, T: int, label_dropout: float = 0.1, seed: int = 0):
    return make_global_batch(data, BatchSampler(len(data), seed), step, size, T=T, seed=seed,
                             label_dropout=label_dropout, null_label=data.num_classes)


def test_t_is_uniform_over_exactly_0_to_T_minus_1(synthetic_dataset):
    T = 1000
    t = torch.cat([_batch(synthetic_dataset, step, 4096, T=T).t for step in range(8)])  # 32768 draws
    assert int(t.min()) == 0 and int(t.max()) == T - 1  # both ends are trained; T itself never appears
    counts = torch.bincount(t * 4 // T, minlength=4).double()  # per quarter of the t range
    expected = len(t) / 4
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 0.75)).all(), counts
    small = torch.cat([_batch(synthetic_dataset, step, 256, T=5).t for step in range(4)])
    assert set(small.tolist()) == {0, 1, 2, 3, 4}


def test_label_dropout_is_per_sample(synthetic_dataset):
    null = synthetic_dataset.num_classes
    fractions = []
    for step in range(20):
        b = _batch(synthetic_dataset, step, 128, T=1000)
        kept = b.y != null
        fractions.append(float((~kept).double().mean()))
        idx = BatchSampler(len(synthetic_dataset), 0).indices(step, 128)
        assert torch.equal(b.y[kept], synthetic_dataset.labels[idx][kept])  # the others keep their true label
    # ~10% null labels inside every batch, never all-or-nothing
    assert all(0.0 < f < 0.3 for f in fractions), fractions
    assert float(np.mean(fractions)) == pytest.approx(0.1, abs=5 * math.sqrt(0.09 / (20 * 128)))
    assert not (_batch(synthetic_dataset, 0, 128, T=1000, label_dropout=0.0).y == null).any()


def test_same_step_same_batch_any_process_count(synthetic_dataset):
    a = _batch(synthetic_dataset, 3, 64, T=1000)
    b = _batch(synthetic_dataset, 3, 64, T=1000)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.y, b.y) and torch.equal(a.x0, b.x0)
    half = a.slice(1, 32)
    assert torch.equal(half.t, a.t[32:])
    assert float(a.x0.min()) >= -1.0 and float(a.x0.max()) <= 1.0


def _state(folder: Path) -> dict:
    return load_training_state(folder)


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


def write_image_folder(root: Path, data, n: int = 48) -> Path:
    """The first n images of an ImageDataset as PNG files, one sub-folder per class."""
    for i in range(n):
        d = root / data.class_names[int(data.labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i, 0].numpy()).save(d / f"{i:03d}.png")
    return root


def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(tmp_path, synthetic_dataset):
    data = write_image_folder(tmp_path / "data", synthetic_dataset)
    out = tmp_path / "run"
    common = ["--image-size", "12", "--channels", "1", "--preset", "tiny", "--batch-size", "16", "--sample-every", "0",
              "--log-every", "5", "--precision", "fp32", "--threads", "1", "--timesteps", "100", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "train.py", "--dataset", f"folder:{data}", "--steps", "1000000",
                             "--checkpoint-every", "3", "--out", str(out), *common], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # a guard against a hung child, not a speed requirement
        while time.monotonic() < deadline and proc.poll() is None:
            config = out / "config.json"
            if config.exists():
                try:
                    if json.loads(config.read_text())["training"]["steps"] >= 6:  # at least one checkpoint overwritten
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, f"train.py exited early: {proc.stderr.read().decode()[-2000:]}"
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
    pipe = ddpm.load(out)
    step = pipe.config.training["steps"]
    assert step >= 6 and step % 3 == 0
    images = pipe.sample(labels=["Square", "vertical"], steps=4, seed=0)
    assert images.shape == (2, 1, 12, 12) and torch.isfinite(images).all()
    saved_step = load_training_state(out)["step"]
    assert saved_step % 3 == 0 and saved_step >= step
    # the forward-process examples are written when the run starts, so a killed run has them too
    assert sorted(p.name for p in (out / "examples").iterdir()) == ["0_Horizontal.png", "1_Square.png", "2_Vertical.png"]
    # --resume continues from the last checkpoint (flags not given again come from the saved run)
    done = subprocess.run([sys.executable, "train.py", "--out", str(out), "--resume", "--steps", str(saved_step + 2),
                           "--no-progress", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_training_state(out)["step"] == saved_step + 2
    assert ddpm.load(out).config.training["steps"] == saved_step + 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path, synthetic_dataset, sig):
    """Ctrl-C or a scheduler's SIGTERM between checkpoints loses no steps: the run saves where it is and says how
    to go on."""
    data = write_image_folder(tmp_path / "data", synthetic_dataset)
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


def test_ema_decay_warm_up_and_update():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    for k, expected in ((0, 0.1), (8, 0.5), (90, 0.91), (10**7, 0.999)):
        assert ema.decay_at(k) == pytest.approx(min(0.999, (1 + k) / (10 + k)))
        assert ema.decay_at(k) == pytest.approx(expected, rel=1e-6)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.sub_(2.0)
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.update(model, 0)  # decay 0.1: the average moves 90% of the way
    for k in before:
        torch.testing.assert_close(ema.shadow[k], 0.1 * before[k] + 0.9 * after[k])
    ema.update(model, 10**7)  # decay 0.999 once warmed up
    for k in before:
        prev = 0.1 * before[k] + 0.9 * after[k]
        torch.testing.assert_close(ema.shadow[k], 0.999 * prev + 0.001 * after[k])
    target = nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


def test_lr_warm_up_and_schedules():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="constant")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == lr_at(109, cfg) == pytest.approx(1e-3)
    cos = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine")
    assert lr_at(10, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: cos(pi/2) = 0
    assert lr_at(110, cos) == pytest.approx(1e-4)  # 10% at the end
    lrs = [lr_at(s, cos) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # warmup-stable-decay: constant, then a linear cool-down over the last 20 steps to lr / 20 at the final step
    wsd = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="constant", decay_steps=20)
    assert lr_at(9, wsd) == lr_at(89, wsd) == lr_at(90, wsd) == pytest.approx(1e-3)
    assert lr_at(100, wsd) == pytest.approx(0.5e-3)
    assert lr_at(109, wsd) == pytest.approx(1e-3 / 20)
    # on a cosine schedule the cool-down multiplies it
    cos_decay = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, lr_schedule="cosine", decay_steps=100)
    assert lr_at(60, cos_decay) == pytest.approx(lr_at(60, cos) * 50 / 100)


@pytest.mark.parametrize("kw", [dict(steps=0), dict(batch_size=-1), dict(precision="fp16"), dict(lr_schedule="step"),
                                dict(label_dropout=1.0), dict(ema_decay=1.0), dict(lr=0.0), dict(grad_accum=0),
                                dict(decay_steps=-1), dict(steps=10, decay_steps=11), dict(decay_steps=2.5)])
def test_bad_train_config(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw).validate()


def test_unknown_preset_and_device(tmp_path, synthetic_dataset, tiny_train_config_factory):
    with pytest.raises(ValueError, match="unknown preset"):
        train(tiny_train_config_factory(tmp_path, preset="giant"), dataset=synthetic_dataset, progress=False)
    with pytest.raises(ValueError, match="device"):
        train(tiny_train_config_factory(tmp_path, device="tpu:9"), dataset=synthetic_dataset, progress=False)


# -- starting from a checkpoint's weights (init_from) ------------------------------------------------
def test_init_from_starts_at_the_checkpoints_weights(tmp_path, synthetic_dataset, tiny_train_config_factory,
                                                     tiny_checkpoint):
    """A fresh tiny model's first loss is E[eps^2] = 1 (zero output layer); one started from the 100-step
    checkpoint begins at that checkpoint's loss, and with a vanishing learning rate its weights stay the source's."""
    losses = []
    out = tmp_path / "ft"
    train(tiny_train_config_factory(out, steps=3, batch_size=64, lr=1e-12, init_from=str(tiny_checkpoint), seed=1),
          dataset=synthetic_dataset, progress=False, on_step=lambda step, loss: losses.append(loss))
    trained_loss = read_log(tiny_checkpoint)[-1]["loss"]
    assert losses[0] < 0.5 and losses[0] == pytest.approx(trained_loss, rel=0.6), (losses, trained_loss)
    src, new = load_file(str(tiny_checkpoint / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert src.keys() == new.keys()
    for k in src:
        torch.testing.assert_close(new[k], src[k], atol=1e-6, rtol=0, msg=k)


def test_init_from_is_recorded_and_survives_resume_and_chaining(tmp_path, synthetic_dataset, tiny_train_config_factory,
                                                                 tiny_checkpoint):
    kw = dict(batch_size=16, checkpoint_every=1000, log_every=5)
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny_train_config_factory(first, steps=5, init_from=str(tiny_checkpoint), **kw), dataset=synthetic_dataset,
          progress=False)
    rec = json.loads((first / "config.json").read_text())["training"]
    assert rec["steps"] == 5
    src = json.loads((tiny_checkpoint / "config.json").read_text())["training"]
    assert rec["init_from"] == {"source": str(tiny_checkpoint), "steps": 100, "images_seen": src["images_seen"],
                                "wall_time_s": src["wall_time_s"]}
    # --resume keeps the record (the run's weights came from there, whatever the resumed process was told)
    train(tiny_train_config_factory(first, steps=8, init_from=str(tiny_checkpoint), **kw), dataset=synthetic_dataset,
          progress=False, resume=True)
    rec = json.loads((first / "config.json").read_text())["training"]
    assert rec["steps"] == 8 and rec["init_from"]["steps"] == 100
    # a run started from that run counts everything before it
    train(tiny_train_config_factory(second, steps=2, init_from=str(first), **kw), dataset=synthetic_dataset,
          progress=False)
    chained = json.loads((second / "config.json").read_text())["training"]["init_from"]
    assert chained["steps"] == 108 and chained["images_seen"] == src["images_seen"] + 8 * 16


def test_init_from_without_ema_warm_up():
    """Weights that are already trained get the full EMA decay from the first update."""
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99, warmup=False)
    assert ema.decay_at(0) == ema.decay_at(5) == 0.99
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 0)
    torch.testing.assert_close(ema.shadow["weight"], before["weight"] + 0.01)


def test_init_from_a_different_network_or_schedule_is_refused(tmp_path, synthetic_dataset, tiny_train_config_factory,
                                                              tiny_checkpoint):
    with pytest.raises(ValueError, match="network .* differs .* --preset"):
        train(tiny_train_config_factory(tmp_path / "a", steps=2, preset="mini", init_from=str(tiny_checkpoint)),
              dataset=synthetic_dataset, progress=False)
    with pytest.raises(ValueError, match="cosine schedule.*uses linear"):
        train(tiny_train_config_factory(tmp_path / "b", steps=2, schedule="linear", init_from=str(tiny_checkpoint)),
              dataset=synthetic_dataset, progress=False)
    with pytest.raises(ValueError, match="not found"):
        train(tiny_train_config_factory(tmp_path / "c", steps=2, init_from=str(tmp_path / "nowhere")),
              dataset=synthetic_dataset, progress=False)
    assert not (tmp_path / "a" / "model.safetensors").exists() and not (tmp_path / "b").exists()


def test_init_from_a_network_with_fewer_residual_blocks_is_refused(tmp_path, synthetic_dataset,
                                                                   tiny_train_config_factory):
    """Only the same architecture loads: a `small` checkpoint under --preset medium (one block per level fewer) names
    the field that differs."""
    small_cfg = preset_config("small", in_channels=1, image_size=12, num_classes=3)
    src = save_checkpoint(tmp_path / "small", UNet(small_cfg), CheckpointConfig(
        model=small_cfg, schedule=ScheduleConfig(name="cosine", timesteps=1000), dataset="synthetic"))
    with pytest.raises(ValueError, match=r"network .* differs .* num_res_blocks = 1 \(this run: 2\).*only a "
                                         r"checkpoint of the same architecture"):
        train(tiny_train_config_factory(tmp_path / "run", steps=1, preset="medium", init_from=str(src)),
              dataset=synthetic_dataset, progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_help_states_the_real_defaults(capsys):
    """Every flag's default is None (so --resume can tell which were given): the help must show TrainConfig's."""
    sys.path.insert(0, str(ROOT))
    import train

    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "None" not in out
    d = TrainConfig()
    for flag, value in (("--steps", d.steps), ("--batch-size", d.batch_size), ("--lr", d.lr),
                        ("--ema-decay", d.ema_decay), ("--preset", d.preset)):
        assert flag in out and f"(default {value})" in out, flag
