"""ddpm.export: a training run folder -> a shippable checkpoint folder (with the recommended sampling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ddpm
from conftest import PER_CLASS
from ddpm.card import model_card
from ddpm.checkpoint import load_config
from ddpm.export import export_checkpoint, main
from ddpm.options import SamplerOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def report() -> dict:
    row = {"sampler": "ddim", "steps": 50, "cfg": 2.0, "eta": 0.0, "guidance_interval": None, "precision": "fp32",
           "accuracy": 0.98, "fd": 1.0, "fd_over_floor": 1.5, "nn_over_test": 1.1, "nn_to_train": 0.1, "seconds": 3.0}
    return {"checkpoint": "x", "checkpoint_steps": 100, "classifier": "c", "classifier_test_accuracy": 0.92,
            "dataset": "synthetic", "n_per_class": 10, "seed": 0,
            "reference": {"n": 30, "fd_train_floor": 0.7, "fd_noise_ceiling": 50.0, "accuracy_train_subset": 0.95,
                          "nn_test_to_train": 0.1, "test_images": 10, "train_images": 100},
            "results": [row]}


def test_export_writes_only_what_sampling_and_the_card_need(run: Path, tmp_path: Path):
    (tmp_path / "eval.json").write_text(json.dumps(report()))
    dst = export_checkpoint(run, tmp_path / "ship", dtype="fp16", sampling=SamplerOptions(sampler="ddim", steps=20, cfg=2.5),
                            evaluation=tmp_path / "eval.json")
    names = sorted(p.name for p in dst.iterdir())
    assert names == ["README.md", "config.json", "evaluation.json", "examples", "model.safetensors", "samples.png",
                     "train_config.json"]
    assert (dst / "examples" / "0_Horizontal.png").read_bytes() == b"\x89PNG fake"
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert (dst / "model.safetensors").stat().st_size < 0.6 * (run / "model.safetensors").stat().st_size
    sampling = json.loads((dst / "config.json").read_text())["sampling"]
    assert SamplerOptions.from_dict(sampling) == SamplerOptions(sampler="ddim", steps=20, cfg=2.5)
    card = (dst / "README.md").read_text()
    assert "## Evaluation" in card and "Reproduce it:" in card and "| recommended sampling | DDIM, 20 steps · CFG 2.5" in card

    # the exported model samples what the run's model samples, up to fp16 rounding of the weights
    a = ddpm.load(run).sample(labels=[0, 1, 2], steps=10, cfg=2.5, seed=3)
    b = ddpm.load(dst).sample(labels=[0, 1, 2], steps=10, cfg=2.5, seed=3)
    assert (a - b).abs().max() < 0.05
    assert not torch.equal(a, ddpm.load(run).sample(labels=[0, 1, 2], steps=10, cfg=2.5, seed=4))


@pytest.mark.slow
def test_export_records_the_command_that_made_these_weights(run: Path, tmp_path: Path):
    settings = json.loads((run / "train_config.json").read_text())
    settings["steps"] = 5000  # the run was started for 5000 steps and stopped (constant lr) at the checkpoint's step
    (run / "train_config.json").write_text(json.dumps(settings))
    dst = export_checkpoint(run, tmp_path / "ship")
    reached = json.loads((run / "config.json").read_text())["training"]["steps"]
    assert json.loads((dst / "train_config.json").read_text())["steps"] == reached
    cosine = dict(settings, lr_schedule="cosine")  # with a decaying lr, stopping early is not a shorter run
    (run / "train_config.json").write_text(json.dumps(cosine))
    export_checkpoint(run, dst)
    assert json.loads((dst / "train_config.json").read_text())["steps"] == 5000
    cooled = dict(settings, decay_steps=1000)  # nor with a cool-down at the end
    (run / "train_config.json").write_text(json.dumps(cooled))
    export_checkpoint(run, dst)
    assert json.loads((dst / "train_config.json").read_text())["steps"] == 5000


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int8"), "unknown weight dtype 'int8'"),
    (dict(sampling={"steps": 0}), "steps must be an integer in 1..1000"),
    (dict(sampling={"cfg": -1.0}), "cfg (guidance scale) must be a finite number >= 0"),
    (dict(sampling={"sampler": "euler"}), "unknown sampler 'euler'"),
    (dict(sampling={"guidance_interval": (0.9, 0.1)}), "guidance_interval must be (lo, hi)"),
    (dict(sampling={"spacing": 0.5}), "spacing must be a number in 1..4"),
])
def test_bad_settings_fail_before_anything_is_written(run: Path, tmp_path: Path, kwargs, message):
    if "sampling" in kwargs:
        kwargs = {**kwargs, "sampling": SamplerOptions().replace(**kwargs["sampling"])}
    with pytest.raises(ValueError) as e:
        export_checkpoint(run, tmp_path / "ship", **kwargs)
    assert message in str(e.value)
    assert not (tmp_path / "ship").exists()


def test_bad_sources_give_clear_errors(run: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="different folder than the run"):
        export_checkpoint(run, run)
    (tmp_path / "bad.json").write_text('{"not": "a report"}')
    with pytest.raises(ValueError, match="is not a report of `python -m ddpm.evaluate --json`"):
        export_checkpoint(run, tmp_path / "ship", evaluation=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="has no config.json"):
        export_checkpoint(tmp_path, tmp_path / "ship")


@pytest.mark.slow
def test_cli(run: Path, tmp_path: Path, capsys):
    assert main([str(run), str(tmp_path / "ship"), "--steps", "30", "--cfg", "2", "--guidance-interval", "0.1", "0.9"]) == 0
    assert "model.safetensors (fp16" in capsys.readouterr().out
    sampling = json.loads((tmp_path / "ship" / "config.json").read_text())["sampling"]
    assert SamplerOptions.from_dict(sampling) == SamplerOptions(steps=30, cfg=2.0, guidance_interval=(0.1, 0.9))
    assert main([str(run), str(tmp_path / "spaced"), "--cfg", "2", "--spacing", "1.5"]) == 0
    spaced = json.loads((tmp_path / "spaced" / "config.json").read_text())["sampling"]
    assert SamplerOptions.from_dict(spaced) == SamplerOptions(cfg=2.0, spacing=1.5)
    assert "DDIM, 50 steps (spacing 1.5) · CFG 2 · fp32" in (tmp_path / "spaced" / "README.md").read_text()
    assert main([str(run), str(tmp_path / "other"), "--steps", "5000"]) == 2
    assert "steps must be an integer in 1..1000, got 5000" in capsys.readouterr().err


@pytest.mark.slow
def test_card_notes_are_given_on_the_command_line_and_not_inherited(run: Path, tmp_path: Path, capsys):
    notes = {"compute time": "6 h on 2 cores", "reproduce": "python train.py --out r\npython train.py --out r --resume"}
    (tmp_path / "notes.json").write_text(json.dumps(notes))
    dst = tmp_path / "ship"
    assert main([str(run), str(dst), "--card-notes", str(tmp_path / "notes.json")]) == 0
    card = (dst / "README.md").read_text()
    assert "| compute time | 6 h on 2 cores |" in card and f"```bash\n{notes['reproduce']}\n```" in card
    assert json.loads((dst / "card_notes.json").read_text()) == notes

    assert main([str(run), str(dst)]) == 0  # new weights into the same folder: the old notes described the old ones
    assert not (dst / "card_notes.json").exists() and "compute time" not in (dst / "README.md").read_text()

    (tmp_path / "list.json").write_text("[1]")
    for bad, message in (("list.json", "must hold a JSON object of card entries"), ("none.json", "cannot read the card notes")):
        assert main([str(run), str(tmp_path / "other"), "--card-notes", str(tmp_path / bad)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # nothing written


@pytest.mark.slow
def test_export_writes_the_per_class_recommendation_and_the_card_states_it(tiny_checkpoint: Path, tmp_path: Path,
                                                                           capsys):
    dst = tmp_path / "exported"
    assert main([str(tiny_checkpoint), str(dst), "--class-cfg", *map(str, PER_CLASS)]) == 0
    sampling = json.loads((dst / "config.json").read_text())["sampling"]
    assert sampling["class_cfg"] == PER_CLASS and sampling["cfg"] == load_config(tiny_checkpoint).sampling.cfg
    card = model_card(dst)
    assert "CFG per class (Horizontal 0.5, Vertical 3, Square 1.5)" in card  # SamplerOptions.describe

    assert main([str(tiny_checkpoint), str(tmp_path / "two"), "--class-cfg", "1", "2"]) == 2
    assert "class_cfg needs one guidance scale per class: 3 classes, got 2 scales" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()  # nothing half-written
