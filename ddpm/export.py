"""Turn a training run's folder into a checkpoint folder fit to ship in checkpoints/ or push to the Hub.

    python -m ddpm.export runs/fashion-mnist checkpoints/fashion-mnist --dtype fp16 \
        --sampler ddim --steps 50 --cfg 2 [--class-cfg W0 W1 ...] [--guidance-interval 0.2 0.8] [--spacing 1.5] \
        [--evaluation eval.json] [--card-notes notes.json]

The sampling flags (all of ddpm.SamplerOptions' fields) set the recommendation saved in config.json.

A run folder holds what training needs (training_state.pt, log.jsonl, samples/, ...). The exported folder
holds only what sampling and the model card need:

    config.json          with the recommended sampling settings ("sampling"), which the app and CLIs use
    model.safetensors    the EMA weights, stored as --dtype (fp16 halves the size; loading casts to fp32)
    train_config.json    the run's settings (for the card's training command)
    examples/            the real images of the app's forward-process tab
    evaluation.json      the report of `python -m ddpm.evaluate --json`, when given
    samples.png          a fresh sample grid of these weights
    card_notes.json      the card's hand-given rows (--card-notes), when given; notes of earlier weights are dropped
    README.md            the model card
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from .card import NOTES_NAME, read_card_notes, write_model_card, write_sample_grid
from .card_data import EVALUATION_NAME
from .checkpoint import CONFIG_NAME, WEIGHT_DTYPES, WEIGHTS_NAME, load_config, load_model, save_config, save_weights
from .options import SamplerOptions, add_arguments, from_args
from .train_config import TRAIN_CONFIG_NAME


def export_checkpoint(run: str | Path, dst: str | Path, *, dtype: str = "fp16", sampling: SamplerOptions | None = None,
                      evaluation: str | Path | None = None, card_extra: dict | None = None) -> Path:
    """Write the shippable folder `dst` from the run folder `run` (see the module docstring). Returns dst.

    sampling: the recommended settings to save (default: the run's own). card_extra: the model card's hand-given
    entries (see ddpm.card.model_card), saved in dst/card_notes.json.
    """
    run, dst = Path(run), Path(dst)
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    if dst.resolve() == run.resolve():
        raise ValueError(f"export into a different folder than the run itself ({str(run)!r})")
    model, config = load_model(run, load_config(run))  # a CheckpointError for a broken run, before writing
    if sampling is not None:
        sampling.validate(config.schedule.timesteps, num_classes=config.model.num_classes)
        config = replace(config, sampling=sampling)
    report = None
    if evaluation is not None:
        try:
            report = json.loads(Path(evaluation).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the evaluation report {str(evaluation)!r}: {e}") from e
        if not isinstance(report, dict) or "results" not in report:
            raise ValueError(f"{str(evaluation)!r} is not a report of `python -m ddpm.evaluate --json`")

    dst.mkdir(parents=True, exist_ok=True)
    save_weights(dst, model.state_dict(), dtype=dtype)
    save_config(dst, config)
    train_cfg = run / TRAIN_CONFIG_NAME
    if train_cfg.is_file():
        settings = json.loads(train_cfg.read_text())
        steps = config.training.get("steps")
        decaying = settings.get("lr_schedule", "constant") != "constant" or settings.get("decay_steps", 0) > 0
        if steps is not None and not decaying:
            # with a constant learning rate the run up to step k IS a k-step run: record the command that made these weights
            settings["steps"] = steps
        (dst / TRAIN_CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    if (run / "examples").is_dir():
        shutil.rmtree(dst / "examples", ignore_errors=True)
        shutil.copytree(run / "examples", dst / "examples")
    if report is not None:
        (dst / EVALUATION_NAME).write_text(json.dumps(report, indent=2) + "\n")
    write_sample_grid(dst)
    (dst / NOTES_NAME).unlink(missing_ok=True)  # notes about the weights this export replaces
    write_model_card(dst, extra=card_extra)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the training run's folder (train.py --out)")
    p.add_argument("dst", help="the folder to write, e.g. checkpoints/fashion-mnist")
    p.add_argument("--dtype", default="fp16", choices=tuple(WEIGHT_DTYPES), help="dtype of the stored weights")
    p.add_argument("--evaluation", default=None, help="a `python -m ddpm.evaluate --json` report to include")
    p.add_argument("--card-notes", default=None, metavar="JSON",
                   help='rows for the model card, a JSON object such as {"compute time": "6 h", "reproduce": "..."}; '
                        "kept in the folder's card_notes.json, so later rewrites of the card (a Hub push) keep them")
    add_arguments(p, default_note="the recommendation saved in config.json; default: the run's own")
    args = p.parse_args(argv)
    try:
        notes = read_card_notes(args.card_notes) if args.card_notes else None
        sampling = from_args(args, load_config(args.run).sampling)
        out = export_checkpoint(args.run, args.dst, dtype=args.dtype, sampling=sampling,
                                evaluation=args.evaluation, card_extra=notes)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = (out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"wrote {out}: {WEIGHTS_NAME} ({args.dtype}, {size:.1f} MiB), {CONFIG_NAME}, README.md, samples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
