"""ddpm.card: the model card's Hub metadata and contents, the sample grid (kept, reused or redrawn), and the
training command it gives (which train.py reads back)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import ddpm
from ddpm import card_data
from ddpm.card import (
    MARKER,
    TRAIN_SETTINGS,
    card_metadata,
    ensure_sample_grid,
    is_generated_card,
    model_card,
    training_command,
    write_model_card,
)
from ddpm.checkpoint import CheckpointConfig, load_config, save_checkpoint, save_config
from ddpm.evaluate import markdown_table
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import front_matter  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def unconditional_checkpoint(folder: Path, dataset: str = "mnist") -> Path:
    model_cfg = preset_config("tiny", image_size=12, num_classes=None)
    torch.manual_seed(0)
    config = CheckpointConfig(model=model_cfg, schedule=ScheduleConfig(name="linear", timesteps=20), dataset=dataset,
                              training={"steps": 3, "wall_time_s": 7200.0, "hardware": "test CPU"})
    return save_checkpoint(folder, UNet(model_cfg), config)


def test_metadata_for_conditional_and_unconditional_models(checkpoint, tmp_path):
    """The Hub has no class-conditional task: both kinds get the unconditional-image-generation pipeline tag (the
    closest; ddpm/card_data.py says why) and a tag saying which kind they are."""
    meta = card_metadata(load_config(checkpoint)).to_dict()
    assert meta == {"license": "mit", "library_name": "ddpm-studio", "pipeline_tag": "unconditional-image-generation",
                    "tags": ["ddpm", "diffusion", "class-conditional-image-generation"]}  # "synthetic": no Hub dataset
    folder = unconditional_checkpoint(tmp_path / "uncond")
    meta = card_metadata(load_config(folder), license="apache-2.0").to_dict()
    assert meta["tags"] == ["ddpm", "diffusion", "unconditional-image-generation"]
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert meta["datasets"] == ["ylecun/mnist"] and meta["license"] == "apache-2.0"


def test_the_card_parses_with_huggingface_hub(tmp_path):
    """The Hub reads the card with huggingface_hub's ModelCard: the written README.md loads, and its data carries
    what the Hub lists the model by."""
    folder = unconditional_checkpoint(tmp_path / "uncond")
    path = write_model_card(folder, extra={"repo_id": "user/digits", "license": "apache-2.0"})
    card = ModelCard.load(path)
    assert card.data.license == "apache-2.0" and card.data.library_name == "ddpm-studio"
    assert card.data.tags == ["ddpm", "diffusion", "unconditional-image-generation"]
    assert card.data.pipeline_tag == "unconditional-image-generation" and card.data.datasets == ["ylecun/mnist"]
    assert card.data.base_model is None and card.data.eval_results is None  # no init_from, no evaluation.json
    assert ModelCard(path.read_text()).data.to_dict() == card.data.to_dict()
    assert "# DDPM on MNIST" in card.text and MARKER in card.text  # the body follows the front matter


def evaluation_report(sampling: dict, *, steps: int) -> dict:
    """A `python -m ddpm.evaluate --json` report with a row at `sampling` between two rows at other settings."""
    def row(accuracy: float, fd: float, **settings) -> dict:
        return {"sampler": "ddim", "steps": 50, "cfg": 3.0, "eta": 0.0, "guidance_interval": None, "spacing": 1.0,
                **settings, "precision": "bf16", "n": 60, "accuracy": accuracy,
                "per_class_accuracy": {"Horizontal": accuracy}, "fd": fd, "fd_over_floor": fd / 0.125,
                "nn_to_train": 3.5, "nn_over_test": 1.0625, "copies": 0.0167, "seconds": 12.0}

    return {"checkpoint": "ckpt", "checkpoint_steps": steps, "classifier": "clf", "classifier_test_accuracy": 0.9,
            "dataset": "synthetic", "n_per_class": 20, "seed": 0,
            "reference": {"n": 60, "fd_train_floor": 0.125, "fd_noise_ceiling": 99.0, "accuracy_train_subset": 0.95,
                          "nn_test_to_train": 3.3, "copies_test": 0.0, "test_images": 60, "train_images": 256},
            "results": [row(0.5, 2.0, cfg=0.0), row(0.9375, 0.4375, **sampling), row(1.0, 9.0, cfg=8.0)]}


def test_model_index_holds_the_evaluation_at_the_recommended_settings(checkpoint):
    """evaluation.json's row at the recommended settings (evaluated in bf16, recommended in fp32) becomes the
    model-index, which huggingface_hub reads back as EvalResults with the report's numbers."""
    config = load_config(checkpoint)
    report = evaluation_report(config.sampling.to_dict(), steps=config.training["steps"])
    (checkpoint / "evaluation.json").write_text(json.dumps(report))
    card = ModelCard.load(write_model_card(checkpoint, extra={"repo_id": "user/tiny"}))
    row, floor = report["results"][1], report["reference"]["fd_train_floor"]
    assert card.data.model_name == "user/tiny"
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        "accuracy": row["accuracy"], "frechet-distance": row["fd"], "frechet-distance-floor": floor,
        "frechet-distance-over-floor": row["fd"] / floor, "nearest-neighbour-ratio": row["nn_over_test"],
        "near-copies": row["copies"]}  # all exact in 4 decimals
    accuracy = results["accuracy"]
    assert accuracy.task_type == "unconditional-image-generation" and accuracy.task_name.startswith("Class-cond")
    assert accuracy.dataset_type == accuracy.dataset_name == "synthetic" and "N = 60" in accuracy.metric_name
    assert accuracy.dataset_split is None  # no Hub dataset, no split to name
    assert "not FID" in results["frechet-distance"].metric_name
    assert markdown_table(report) in card.text  # the body keeps every row

    report["results"].pop(1)  # no row at the recommended settings: no model-index, the table stays
    (checkpoint / "evaluation.json").write_text(json.dumps(report))
    card = ModelCard(model_card(checkpoint))
    assert card.data.eval_results is None and "model-index" not in front_matter(card.content)
    assert "## Evaluation" in card.text


def test_an_evaluation_of_other_weights_stays_out_of_the_model_index(checkpoint):
    config = load_config(checkpoint)
    report = evaluation_report(config.sampling.to_dict(), steps=config.training["steps"] - 50)
    (checkpoint / "evaluation.json").write_text(json.dumps(report))
    card = ModelCard(model_card(checkpoint))
    assert card.data.eval_results is None and "Measured on the checkpoint at step" in card.text


def test_base_model_names_the_hub_repo_a_run_started_from(checkpoint):
    """--init-from USER/REPO records the Hub id (ddpm.run_folder); a folder, even one named like a repo id, is no
    base model."""
    config = load_config(checkpoint)
    init = {"source": "someone/base@v2", "hub_id": "someone/base@v2", "steps": 200, "images_seen": 6400,
            "wall_time_s": 60.0}
    save_config(checkpoint, dataclasses.replace(config, training={**config.training, "init_from": init}))
    card = ModelCard(model_card(checkpoint))
    assert card.data.base_model == "someone/base" == front_matter(card.content)["base_model"]
    local = {k: v for k, v in init.items() if k != "hub_id"} | {"source": "checkpoints/base"}
    save_config(checkpoint, dataclasses.replace(config, training={**config.training, "init_from": local}))
    card = ModelCard(model_card(checkpoint))
    assert card.data.base_model is None and "base_model" not in front_matter(card.content)


def test_the_usage_snippet_says_how_to_install(checkpoint, monkeypatch):
    text = model_card(checkpoint, extra={"repo_id": "user/tiny"})
    use = text.split("## Use it")[1].split("## Model")[0]
    assert "```bash\npip install ddpm-studio  # the library, imported as ddpm\n```" in use  # no public URL recorded
    assert use.index("pip install") < use.index('ddpm.load("user/tiny")')
    monkeypatch.setattr("ddpm.card.source_url", lambda: "https://example.org/ddpm-studio")
    use = model_card(checkpoint).split("## Use it")[1]
    assert 'pip install "ddpm-studio @ git+https://example.org/ddpm-studio"' in use
    assert "Source: [https://example.org/ddpm-studio](https://example.org/ddpm-studio)." in use


def test_the_source_url_comes_from_the_packages_project_urls(monkeypatch):
    class Metadata:
        def get_all(self, name: str) -> list[str]:
            return {"Project-URL": ["Documentation, https://docs.example.org", "Source, https://example.org/src"]}[name]

    monkeypatch.setattr(card_data.importlib.metadata, "metadata", lambda name: Metadata())
    assert card_data.source_url() == "https://example.org/src"

    def missing(name: str) -> None:
        raise card_data.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(card_data.importlib.metadata, "metadata", missing)
    assert card_data.source_url() is None


def test_card_shows_training_facts_settings_grid_and_usage(checkpoint):
    config = load_config(checkpoint)
    text = model_card(checkpoint, extra={"repo_id": "user/tiny", "license": "cc-by-4.0", "note": "a | b"})
    meta = front_matter(text)
    assert meta["license"] == "cc-by-4.0" and meta["library_name"] == "ddpm-studio"
    assert 'ddpm.load("user/tiny")' in text and "python app.py --hub user/tiny" in text
    local = model_card(checkpoint)  # the card of a folder that is not on the Hub
    assert f'ddpm.load("{checkpoint}")  # a local folder' in local and f"python app.py --checkpoint {checkpoint}" in local
    assert "--hub" not in local
    assert f"| steps | {config.training['steps']:,} |" in text
    assert f"| hardware | {config.training['hardware']} |" in text
    assert "| parameters | 45,169 |" in text and "Horizontal, Vertical, Square" in text
    assert "| lr_schedule | constant |" in text  # from train_config.json
    assert "| note | a \\| b |" in text  # extra rows, escaped for the table
    assert "samples.png" not in text  # no grid yet: no broken image link
    assert "## Evaluation" not in text


def test_card_includes_evaluation_json_and_flags_a_stale_one(checkpoint):
    steps = load_config(checkpoint).training["steps"]
    (checkpoint / "evaluation.json").write_text(json.dumps({"checkpoint_steps": steps, "fd": 1.25}))
    text = model_card(checkpoint)
    assert "## Evaluation" in text and "| fd | 1.25 |" in text and "Measured on the checkpoint at step" not in text
    (checkpoint / "evaluation.json").write_text(json.dumps({"checkpoint_steps": steps - 50, "fd": 1.25}))
    assert f"Measured on the checkpoint at step {steps - 50:,}; these weights are from step {steps:,}" in model_card(checkpoint)


@pytest.mark.slow
def test_sample_grid_is_drawn_kept_and_redrawn_when_stale(checkpoint):
    grid = ensure_sample_grid(checkpoint)
    with Image.open(grid) as img:  # 3 classes x 8 columns of 12 px, 2 px padding
        assert img.size == (8 * 12 + 9 * 2, 3 * 12 + 4 * 2)
    first = grid.read_bytes()
    grid.write_bytes(b"marker")
    assert ensure_sample_grid(checkpoint).read_bytes() == b"marker"  # newer than the weights: kept
    weights = checkpoint / "model.safetensors"
    os.utime(grid, (weights.stat().st_mtime - 10,) * 2)
    assert ensure_sample_grid(checkpoint).read_bytes() == first  # stale: redrawn, seeded, so identical

    card = write_model_card(checkpoint).read_text()
    assert "![Samples from this model](samples.png)" in card and "one row per class" in card


def test_only_generated_cards_count_as_rewritable(checkpoint):
    assert is_generated_card(checkpoint)  # none yet
    write_model_card(checkpoint)
    assert is_generated_card(checkpoint)
    (checkpoint / "README.md").write_text("# written by hand\n")
    assert not is_generated_card(checkpoint)


def test_unconditional_card_and_grid(tmp_path):
    folder = unconditional_checkpoint(tmp_path / "uncond")
    with Image.open(ensure_sample_grid(folder)) as img:  # 4 rows of 8
        assert img.size == (8 * 12 + 9 * 2, 4 * 12 + 5 * 2)
    text = write_model_card(folder).read_text()
    assert "# DDPM on MNIST" in text and "pipe.sample(n=4" in text and "uncurated samples" in text
    assert "| wall time | 2.0 h |" in text and "guidance" not in text


@pytest.mark.parametrize("sampling, said", [
    ({"sampler": "ddim", "steps": 7, "cfg": 3.5, "guidance_interval": [0.2, 1.0]},
     "DDIM, 7 steps · CFG 3.5 for t/T in 0.2..1 · fp32"),
    ({"sampler": "ddim", "steps": 7, "cfg": 3.5, "guidance_interval": [0.2, 1.0], "spacing": 2.0},
     "DDIM, 7 steps (spacing 2) · CFG 3.5 for t/T in 0.2..1 · fp32"),
    ({"sampler": "ddim", "steps": 7, "cfg": 3.5, "eta": 0.5}, "DDIM (eta 0.5), 7 steps · CFG 3.5 · fp32"),
    ({"sampler": "ddim", "steps": 7, "cfg": 1.0, "redraws": 2}, "DDIM, 7 steps · CFG 1 · up to 2 redraw rounds · fp32"),
    ({"sampler": "dpm++2m", "steps": 6, "class_cfg": [1.0, 2.0, 3.0]},
     "DPM-Solver++(2M), 6 steps · CFG per class (Horizontal 1, Vertical 2, Square 3) · fp32"),
])
@pytest.mark.slow
def test_grid_and_caption_follow_the_recommended_sampling(checkpoint, tmp_path, sampling, said):
    """samples.png is drawn at the recommendation (what the app and pipe.sample() run by default), and the caption,
    the model table and the usage lines say so."""
    from ddpm.card import grid_caption
    from ddpm.checkpoint import save_config
    from ddpm.images import save_grid
    from ddpm.pipeline import load

    save_config(checkpoint, dataclasses.replace(load_config(checkpoint), sampling=sampling))
    (checkpoint / "model.safetensors").touch()  # any grid is now older than the weights
    grid = ensure_sample_grid(checkpoint).read_bytes()
    labels = [c for c in range(3) for _ in range(8)]
    options = ddpm.SamplerOptions.from_dict(sampling)
    expected = load(checkpoint).sample(labels, seed=0, options=options)
    assert save_grid(expected, tmp_path / "expected.png", nrow=8).read_bytes() == grid
    caption = grid_caption(load_config(checkpoint))
    assert caption == f"one row per class (Horizontal, Vertical, Square); {said}; seed 0 (the recommended settings)."
    card = write_model_card(checkpoint).read_text()
    assert f"*{caption}*" in card and f"| recommended sampling | {said} |" in card
    assert 'images = pipe.sample(labels=["Horizontal"] * 4, seed=0)  # the recommended settings' in card


def test_card_states_the_recommendation(interval_checkpoint: Path):
    card = model_card(interval_checkpoint)
    assert "| recommended sampling | DDIM, 50 steps · CFG 4 for t/T in 0.2..0.7 · fp32 |" in card


def test_training_command_round_trips_through_train_py(run: Path):
    sys.path.insert(0, str(ROOT))
    import train

    command = training_command(run)
    assert command.startswith("python train.py --dataset synthetic --preset tiny")
    args = train.parse_args(command.split()[2:])
    cfg, resume = train.config_from_args(args)
    saved = json.loads((run / "train_config.json").read_text())
    assert not resume
    assert {k: getattr(cfg, k) for k in TRAIN_SETTINGS} == {k: saved[k] for k in TRAIN_SETTINGS}
    assert cfg.out == saved["out"]


def test_card_reproduce_commands_can_be_given(checkpoint):
    """A run resumed with other settings is not one train.py command: the card takes the real sequence."""
    auto = model_card(checkpoint)
    assert "Reproduce it:" in auto and "python train.py --dataset" in auto
    steps = "python train.py --steps 100 --decay-steps 20 --out r\npython train.py --out r --resume --steps 200"
    text = model_card(checkpoint, extra={"reproduce": steps})
    assert f"Reproduce it:\n\n```bash\n{steps}\n```" in text
    assert "| reproduce |" not in text  # not a row of the training table


def test_card_of_a_run_started_from_other_weights(checkpoint):
    """A run started with --init-from: the card names the source and gives totals over both runs."""
    config = load_config(checkpoint)
    steps, images, wall = config.training["steps"], config.training["images_seen"], config.training["wall_time_s"]
    init = {"source": "checkpoints/base-model", "steps": 22000, "images_seen": 2816000, "wall_time_s": 21600.0}
    save_checkpoint_config = dataclasses.replace(config, training={**config.training, "init_from": init})
    (checkpoint / "config.json").write_text(json.dumps(save_checkpoint_config.to_dict()))
    text = model_card(checkpoint)
    assert "trained further on" in text and "from scratch" not in text
    assert "| started from | the weights of `checkpoints/base-model` (22,000 steps, 2,816,000 images, 6.0 h) |" in text
    assert f"| steps | {steps:,} (this run; {steps + 22000:,} in all) |" in text
    assert f"| images seen in all | {images + 2816000:,} |" in text
    assert f"| wall time in all | {(wall + 21600) / 3600:.1f} h |" in text
    settings = json.loads((checkpoint / "train_config.json").read_text())
    (checkpoint / "train_config.json").write_text(json.dumps({**settings, "init_from": "checkpoints/base-model"}))
    command = model_card(checkpoint).split("Reproduce it:")[1].split("```")[1]
    assert "--init-from checkpoints/base-model" in command and command.startswith("bash\npython train.py")


def test_hand_given_entries_survive_a_rewrite(checkpoint):
    """Every Hub push regenerates the card: rows, license and commands given once are kept in card_notes.json."""
    from ddpm.card import NOTES_NAME

    steps = "python train.py --steps 100 --out r\npython train.py --out r --resume --steps 200"
    write_model_card(checkpoint, extra={"repo_id": "user/tiny", "license": "cc-by-4.0", "compute time": "3 h",
                                        "reproduce": steps})
    assert json.loads((checkpoint / NOTES_NAME).read_text()) == {"license": "cc-by-4.0", "compute time": "3 h",
                                                                 "reproduce": steps}  # not the repo: that is per push
    assert "| compute time | 3 h |" in model_card(checkpoint)  # the text of the card includes them too
    text = write_model_card(checkpoint, extra={"repo_id": "other/name"}).read_text()
    assert "| compute time | 3 h |" in text and f"```bash\n{steps}\n```" in text
    assert front_matter(text)["license"] == "cc-by-4.0" and 'ddpm.load("other/name")' in text
    assert 'ddpm.load("user/tiny")' not in text

    text = write_model_card(checkpoint, extra={"compute time": "4 h", "reproduce": None}).read_text()
    assert "| compute time | 4 h |" in text and steps not in text and "python train.py --dataset" in text
    write_model_card(checkpoint, extra={"compute time": None, "license": None})
    assert not (checkpoint / NOTES_NAME).exists()  # nothing left to keep
    assert "compute time" not in (checkpoint / "README.md").read_text()


@pytest.mark.parametrize("content, message", [("{not json", "cannot read the card notes"),
                                              ('["a row"]', "must hold a JSON object of card entries")])
def test_unreadable_notes_are_named_and_change_nothing(checkpoint, content, message):
    from ddpm.card import NOTES_NAME
    from ddpm.checkpoint import CheckpointError

    write_model_card(checkpoint)
    card = (checkpoint / "README.md").read_bytes()
    (checkpoint / NOTES_NAME).write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        write_model_card(checkpoint, extra={"compute time": "3 h"})
    assert NOTES_NAME in str(info.value)
    assert (checkpoint / "README.md").read_bytes() == card and (checkpoint / NOTES_NAME).read_text() == content
