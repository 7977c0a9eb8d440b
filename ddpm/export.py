"""Turn a training run's folder into a checkpoint folder fit to ship in checkpoints/ or push to the Hub.

    python -m ddpm.export runs/fashion-mnist checkpoints/fashion-mnist --dtype fp16 \
        --sampler ddim --steps 50 --cfg 2 [--class-cfg W0 W1 ...] [--guidance-interval 0.2 0.8] [--spacing 1.5] \
        [--evaluation eval.json] [--card-notes notes.json]

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
from typing import Any

from .card import read_card_notes
from .checkpoint import CONFIG_NAME, WEIGHT_DTYPES, WEIGHTS_NAME, load_config, load_model, save_config, save_weights
from .samplers import SAMPLERS, SamplerOptions
from .training import TRAIN_CONFIG_NAME
SAMPLING_KEYS = ("sampler", "steps", "cfg", "eta", "guidance_interval", "spacing", "class_cfg", "redraws",
                 "redraw_threshold")


def check_sampling(sampling: dict[str, Any], T: int, num_classes: int | None = None) -> dict[str, Any]:
    """The recommended sampling settings, validated like a sampling request; raises ValueError naming the bad one."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {', '.join(unknown)}; allowed: {', '.join(SAMPLING_KEYS)}")
    clean = dict(sampling)
    for key in ("guidance_interval", "class_cfg"):
        if clean.get(key) is not None:
            clean[key] = tuple(float(v) for v in clean[key])
    SamplerOptions(**clean).validate(T, num_classes=num_classes)
    for key in ("guidance_interval", "class_cfg"):
        if clean.get(key) is not None:
            clean[key] = list(clean[key])  # JSON
    return clean


def export_checkpoint(run: str | Path, dst: str | Path, *, dtype: str = "fp16", sampling: dict[str, Any] | None = None,
                      evaluation: str | Path | None = None, card_extra: dict | None = None) -> Path:
    """Write the shippable folder `dst` from the run folder `run` (see the module docstring). Returns dst.

    card_extra: the model card's hand-given entries (see ddpm.card.model_card), saved in dst/card_notes.json.
    """
    from .card import EVALUATION_NAME, NOTES_NAME, write_model_card, write_sample_grid

    run, dst = Path(run), Path(dst)
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    if dst.resolve() == run.resolve():
        raise ValueError(f"export into a different folder than the run itself ({str(run)!r})")
    model, config = load_model(run, load_config(run))  # a CheckpointError for a broken run, before writing
    if sampling is not None:
        sampling = check_sampling({**config.sampling, **sampling}, config.schedule.timesteps, config.model.num_classes)
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
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="recommended sampler")
    p.add_argument("--steps", type=int, default=None, help="recommended number of steps")
    p.add_argument("--cfg", type=float, default=None, help="recommended guidance scale w")
    p.add_argument("--class-cfg", type=float, nargs="+", default=None, metavar="W",
                   help="recommended guidance scale per class (class c's images use the c-th), over --cfg")
    p.add_argument("--eta", type=float, default=None, help="recommended DDIM eta")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="recommended guidance interval: CFG only for t/T in [LO, HI]")
    p.add_argument("--spacing", type=float, default=None,
                   help="recommended time-step spacing power (1 = even steps in t, 2 = quadratic)")
    p.add_argument("--redraws", type=int, default=None,
                   help="recommended rounds of redrawing the samples the model reads as another class (ddpm.selfcheck)")
    p.add_argument("--redraw-threshold", type=float, default=None,
                   help="recommended margin at or below which a sample is redrawn (default 0)")
    p.add_argument("--evaluation", default=None, help="a `python -m ddpm.evaluate --json` report to include")
    p.add_argument("--card-notes", default=None, metavar="JSON",
                   help='rows for the model card, a JSON object such as {"compute time": "6 h", "reproduce": "..."}; '
                        "kept in the folder's card_notes.json, so later rewrites of the card (a Hub push) keep them")
    args = p.parse_args(argv)
    sampling = {k: getattr(args, k) for k in SAMPLING_KEYS if getattr(args, k) is not None}
    try:
        notes = read_card_notes(args.card_notes) if args.card_notes else None
        out = export_checkpoint(args.run, args.dst, dtype=args.dtype, sampling=sampling or None,
                                evaluation=args.evaluation, card_extra=notes)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = (out / WEIGHTS_NAME).stat().st_size / 2**20
    print(f"wrote {out}: {WEIGHTS_NAME} ({args.dtype}, {size:.1f} MiB), {CONFIG_NAME}, README.md, samples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
