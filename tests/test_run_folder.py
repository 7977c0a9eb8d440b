"""ddpm.run_folder: what a run leaves in its folder. A killed run leaves a loadable checkpoint (and its examples)
that --resume continues; a run started from a checkpoint's weights (init_from) loads only the same network and
schedule, and records where its weights came from through resumes and chains of runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddpm
from ddpm.checkpoint import CheckpointConfig, load_training_state, save_checkpoint
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig
from ddpm.training import train

ROOT = Path(__file__).resolve().parents[1]


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(tmp_path, synthetic_image_folder):
    data = synthetic_image_folder
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


def test_init_from_a_hub_id_records_it_for_the_model_cards_base_model(tiny_checkpoint, monkeypatch):
    """A source downloaded from the Hub is recorded as hub_id (the card's base_model); a folder gets none, even one
    whose path reads like a repo id."""
    from ddpm import run_folder
    from ddpm.checkpoint import load_config
    from ddpm.hub import parse_hub_id

    config = load_config(tiny_checkpoint)
    asked = []
    monkeypatch.setattr(run_folder, "resolve_checkpoint", lambda source: asked.append(source) or tiny_checkpoint)
    record = run_folder.load_initial_weights(UNet(config.model), "someone/base@v2", config)
    assert asked == ["someone/base@v2"] and record["hub_id"] == "someone/base@v2"
    assert record["source"] == "someone/base@v2" and record["steps"] == config.training["steps"]
    monkeypatch.chdir(tiny_checkpoint.parent.parent)
    folder = f"{tiny_checkpoint.parent.name}/{tiny_checkpoint.name}"  # a folder whose path has a repo id's form
    assert parse_hub_id(folder)
    local = run_folder.load_initial_weights(UNet(config.model), folder, config)
    assert "hub_id" not in local and local["source"] == folder and asked[-1] == folder


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
