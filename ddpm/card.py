"""The model card (README.md with Hub metadata) and the sample grid (samples.png) of a checkpoint folder.

    write_model_card("checkpoints/fashion-mnist", extra={"repo_id": "user/ddpm-fashion"})

Everything in the card comes from the folder: config.json (model, schedule, classes, training facts),
train_config.json (the run's settings, when present), evaluation.json (the figures of
`python -m ddpm.evaluate --json`, when present), card_notes.json (rows given by hand, e.g. the commands of a
resumed run; written by write_model_card) and samples.png (made here when missing or stale). The front matter is
huggingface_hub's ModelCardData (ddpm.card_data: license, tags, pipeline tag, base model, model-index).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .card_data import (
    DEFAULT_LICENSE,
    HUB_DATASETS,
    card_metadata,
    install_lines,
    read_evaluation,
    source_url,
)
from .checkpoint import WEIGHTS_NAME, CheckpointConfig, CheckpointError, load_config
from .evaluate import markdown_table
from .hub import parse_hub_id
from .images import save_grid
from .model import parameter_count
from .pipeline import load
from .train_config import TRAIN_CONFIG_NAME, TrainConfig

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
GRID_NAME = "samples.png"
NOTES_NAME = "card_notes.json"  # the hand-given `extra` of write_model_card, so that any later rewrite keeps it
MARKER = "<!-- ddpm-studio model card: regenerated from config.json on every push; edits are overwritten -->"
GRID_PER_ROW, GRID_UNCONDITIONAL_ROWS = 8, 4  # samples.png: a row of 8 per class, or 4 rows if unconditional
TRAIN_SETTINGS = ("dataset", "preset", "steps", "batch_size", "grad_accum", "lr", "lr_schedule", "warmup_steps",
                  "decay_steps", "weight_decay", "grad_clip", "ema_decay", "label_dropout", "hflip", "schedule",
                  "timesteps", "precision", "weights_dtype", "seed", "init_from")


# -- the sample grid -------------------------------------------------------------------------------
def ensure_sample_grid(folder: str | Path, *, force: bool = False) -> Path:
    """folder/samples.png for the current weights: kept if newer than model.safetensors, else sampled now."""
    folder = Path(folder)
    grid, weights = folder / GRID_NAME, folder / WEIGHTS_NAME
    if not force and grid.is_file() and grid.stat().st_mtime >= weights.stat().st_mtime:
        return grid
    return write_sample_grid(folder)


def grid_caption(config: CheckpointConfig) -> str:
    """The card's line under samples.png: what it shows and the settings it was drawn with (the recommendation)."""
    conditional = config.model.num_classes is not None
    rows = f"one row per class ({', '.join(config.class_names or ())})" if conditional else "uncurated samples"
    how = config.sampling.describe(conditional=conditional, class_names=config.class_names)
    return f"{rows}; {how}; seed 0 (the recommended settings)."


def write_sample_grid(folder: str | Path, *, seed: int = 0) -> Path:
    """Sample folder/samples.png at the recommended settings: one row of 8 per class, or 4 rows if unconditional."""
    folder = Path(folder)
    pipe = load(folder)
    if pipe.conditional:
        labels = torch.arange(pipe.config.model.num_classes).repeat_interleave(GRID_PER_ROW).tolist()
        x0 = pipe.sample(labels, seed=seed)
    else:
        x0 = pipe.sample(n=GRID_PER_ROW * GRID_UNCONDITIONAL_ROWS, seed=seed)
    return save_grid(x0, folder / GRID_NAME, nrow=GRID_PER_ROW)


# -- the card --------------------------------------------------------------------------------------
def model_card(folder: str | Path, *, extra: dict | None = None) -> str:
    """The text of README.md for a checkpoint folder.

    extra: "repo_id" (used in the usage example; default: the folder), "license" (default "mit"), "reproduce" (the
    commands that made the weights, e.g. a run resumed with other settings; default: from train_config.json); any other
    key/value pairs are listed under Training. They go over the notes saved in folder/card_notes.json (None removes one).
    """
    folder = Path(folder)
    config = load_config(folder)
    on_hub = "repo_id" in (extra or {})  # else the card describes a local folder
    repo_id = str(extra["repo_id"] if on_hub else folder)
    extra = _notes(folder, extra)
    license = str(extra.pop("license", DEFAULT_LICENSE))
    reproduce = extra.pop("reproduce", None)  # commands that made the weights, when train_config.json alone cannot say
    m, s, tr = config.model, config.schedule, config.training
    conditional = m.num_classes is not None
    dataset_name = HUB_DATASETS.get(config.dataset, (config.dataset, None))[0]
    kind = "class-conditional" if conditional else "unconditional"
    color = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(m.in_channels, f"{m.in_channels}-channel")
    sampling = config.sampling
    init = tr.get("init_from") if isinstance(tr.get("init_from"), dict) else {}  # a run started from other weights

    report = read_evaluation(folder)
    meta = card_metadata(config, license=license, model_name=repo_id if on_hub else folder.name, evaluation=report)
    out = ["---", meta.to_yaml(), "---", MARKER, ""]  # huggingface_hub's own YAML: what ModelCard.load reads back
    out += [f"# DDPM on {dataset_name}", "",
            f"A {kind} denoising diffusion probabilistic model (Ho et al., 2020) of {m.image_size}x{m.image_size} "
            f"{color} images, trained {'further' if init else 'from scratch'} on "
            f"{dataset_name} with ddpm-studio "
            f"({_human(parameter_count(m))} parameters). The network predicts the noise eps; "
            f"`config.json` describes it completely and `{WEIGHTS_NAME}` holds its (EMA) weights.", ""]
    if (folder / GRID_NAME).is_file():
        out += [f"![Samples from this model]({GRID_NAME})", "", f"*{grid_caption(config)}*", ""]

    where = "downloads into the Hugging Face cache" if on_hub else "a local folder; a Hub id user/repo works too"
    out += ["## Use it", "", *install_lines(source_url()), "```python", "import ddpm", "",
            f'pipe = ddpm.load("{repo_id}")  # {where}']
    dims = f"{m.in_channels}, {m.image_size}, {m.image_size}"
    if conditional:
        first = (config.class_names or ("0",))[0]
        out.append(f'images = pipe.sample(labels=["{first}"] * 4, seed=0)  # the recommended settings: '
                   f"(4, {dims}) in [-1, 1]")
        out.append("images = pipe.sample(labels=[0, 1], steps=25, cfg=3, seed=0)  # change any setting by name")
    else:
        out.append(f"images = pipe.sample(n=4, seed=0)  # the recommended settings: (4, {dims}) in [-1, 1]")
    out += ["for step in pipe.stream(" + ('labels=[0]' if conditional else 'n=1') + "):  # one Step per denoising step",
            "    ...  # step.x_t, step.x0_pred", "```", "",
            (f"The app streams the denoising: `python app.py --hub {repo_id}` (append `@REVISION` to pin a version)."
             if on_hub else f"The app streams the denoising: `python app.py --checkpoint {repo_id}`."), ""]

    model_rows = [
        ("parameters", f"{parameter_count(m):,}"),
        ("network", f"UNet, {m.base_channels} base channels x {list(m.channel_mult)}, {m.num_res_blocks} residual "
                    f"block(s) per level, self-attention at level(s) {list(m.attention_levels) or 'none'}"),
        ("images", f"{m.image_size}x{m.image_size}, {m.in_channels} channel(s), pixel values in [-1, 1]"),
        ("classes", f"{m.num_classes}: {', '.join(config.class_names or ())}, plus a null label for "
                    "classifier-free guidance" if conditional else "none (unconditional)"),
        ("noise schedule", f"{s.name}, T = {s.timesteps}"),
        ("recommended sampling", sampling.describe(conditional=conditional, class_names=config.class_names)),
    ]
    out += ["## Model", "", *_table(model_rows), ""]

    def total(key: str) -> Any:
        """This run's figure plus, for a run started from other weights, theirs (None when this run has none)."""
        mine, theirs = tr.get(key), init.get(key)
        if not isinstance(mine, (int, float)):
            return None
        return mine + theirs if isinstance(theirs, (int, float)) else mine

    in_all = " in all" if init else ""
    steps = _int(tr.get("steps"))
    if init and steps:
        steps += f" (this run; {_int(total('steps'))} in all)"
    started = (f"the weights of `{init.get('source')}` ({_int(init.get('steps')) or '?'} steps, "
               f"{_int(init.get('images_seen')) or '?'} images, {_duration(init.get('wall_time_s')) or '?'})"
               if init else None)
    train_rows = [
        ("started from", started),
        ("steps", steps),
        ("images seen" + in_all, _int(total("images_seen"))),
        ("global batch", _int(tr.get("global_batch_size"))),
        ("wall time" + in_all, _duration(total("wall_time_s"))),
        ("hardware", tr.get("hardware")),
        ("precision", tr.get("precision")),
        ("final loss", tr.get("final_loss")),
        ("smoothed loss", tr.get("smoothed_loss")),
        ("torch", tr.get("torch_version")),
        *((str(k), v) for k, v in extra.items()),
    ]
    out += ["## Training", "", f"Dataset: {dataset_name}. Objective: the simple loss of Ho et al. "
            "(eq. 14), mean ||eps - eps_theta(x_t, t, y)||^2" + (", with the label dropped to the null label "
            f"with probability {tr.get('label_dropout')} (classifier-free guidance)" if conditional and
            tr.get("label_dropout") is not None else "") + ".", "", *_table(train_rows), ""]
    command = str(reproduce) if reproduce else training_command(folder)
    if command:
        out += ["Reproduce it:", "", "```bash", command, "```", ""]
    settings = _train_settings(folder)
    if settings:
        out += ["<details><summary>All training settings (train_config.json)</summary>", "",
                *_table(settings), "", "</details>", ""]

    evaluation = _evaluation(report, tr.get("steps")) if report else ""
    if evaluation:
        out += ["## Evaluation", "", evaluation, ""]
        if meta.eval_results:
            out += ["The Hub metadata (`model-index`) holds the row at the recommended settings.", ""]

    out += ["## Limitations", "",
            f"A small model trained on small {dataset_name} images: samples are {m.image_size}x{m.image_size} "
            "and show the dataset's biases. It is a teaching and demo model, not a production image generator.", ""]
    return "\n".join(out)


def is_generated_card(folder: str | Path) -> bool:
    """True when folder/README.md is absent or was written by write_model_card (so it may be rewritten)."""
    path = Path(folder) / CARD_NAME
    return not path.exists() or MARKER in path.read_text(encoding="utf-8", errors="replace")


def read_card_notes(path: str | Path) -> dict[str, Any]:
    """A JSON object of card entries (name: text) from `path`; a CheckpointError saying what is wrong otherwise."""
    path = Path(path)
    try:
        notes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the card notes {str(path)!r}: {e}") from e
    if not isinstance(notes, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object of card entries (name: text), "
                              f"not a {type(notes).__name__}")
    return notes


def write_model_card(folder: str | Path, *, extra: dict | None = None) -> Path:
    """Write folder/README.md (see model_card) and return its path.

    The entries of `extra` other than "repo_id" (license, reproduce, rows) are merged over the notes saved in
    folder/card_notes.json and saved there, so a later rewrite (every push to the Hub regenerates the card) keeps
    them; a value of None removes a saved entry.
    """
    folder = Path(folder)
    notes = _notes(folder, extra)
    text = model_card(folder, extra=extra)  # before anything is written: a bad folder changes nothing
    if notes:
        (folder / NOTES_NAME).write_text(json.dumps(notes, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        (folder / NOTES_NAME).unlink(missing_ok=True)
    path = folder / CARD_NAME
    path.write_text(text, encoding="utf-8")
    return path


def prepare_for_hub(folder: str | Path, repo_id: str) -> None:
    """Before a push to `repo_id`: draw samples.png if missing or stale, and write the card for that repo (its
    usage lines name it) unless README.md was written by hand. Raises ValueError for a bad repo id."""
    hub_id = parse_hub_id(repo_id, allow_revision=False)
    ensure_sample_grid(folder)
    if is_generated_card(folder):
        write_model_card(folder, extra={"repo_id": hub_id.repo_id})
    else:
        log.warning("%s/README.md was not written by ddpm-studio: it is pushed as it is", folder)


# -- helpers ---------------------------------------------------------------------------------------
def _notes(folder: Path, extra: dict | None) -> dict[str, Any]:
    """The card's hand-given entries: those saved in folder/card_notes.json, updated by `extra` (minus "repo_id")."""
    saved = read_card_notes(folder / NOTES_NAME) if (folder / NOTES_NAME).is_file() else {}
    given = {k: v for k, v in (extra or {}).items() if k != "repo_id"}
    return {k: v for k, v in {**saved, **given}.items() if v is not None}


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    kept = [(k, v) for k, v in rows if v is not None and v != ""]
    return ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in kept)]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _int(value: Any) -> str | None:
    return f"{int(value):,}" if isinstance(value, (int, float)) else None


def _human(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _train_settings(folder: Path) -> list[tuple[str, Any]]:
    path = folder / "train_config.json"
    try:
        settings = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    return [(k, settings[k]) for k in TRAIN_SETTINGS if isinstance(settings, dict) and k in settings]


def training_command(folder: str | Path) -> str | None:
    """The train.py command line that reproduces the run in train_config.json (flags that differ from the defaults,
    plus dataset, preset, steps and batch size); None without train_config.json."""
    path = Path(folder) / TRAIN_CONFIG_NAME
    try:
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return None
    default = TrainConfig()
    parts = ["python train.py"]
    for name in TRAIN_SETTINGS + ("image_size", "channels", "conditional"):
        value = getattr(cfg, name)
        if name not in ("dataset", "preset", "steps", "batch_size") and value == getattr(default, name):
            continue
        if name == "conditional":
            parts.append("--unconditional")
        elif name == "hflip":
            parts.append(f"--hflip {'on' if value else 'off'}")
        elif value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts + ["--out", cfg.out])


def _evaluation(report: dict[str, Any], steps: Any) -> str:
    """evaluation.json as markdown: ddpm.evaluate's table when it has that form, else a key/value table."""
    try:
        text = markdown_table(report)
    except (KeyError, TypeError, ValueError):
        text = "\n".join(_table([(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in report.items()]))
    evaluated_at = report.get("checkpoint_steps")
    if evaluated_at is not None and steps is not None and evaluated_at != steps:
        text = f"*Measured on the checkpoint at step {evaluated_at:,}; these weights are from step {steps:,}.*\n\n" + text
    return text
