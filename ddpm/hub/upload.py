"""Upload to the Hub: push a checkpoint folder to a model repo, deploy the demo app as a Gradio Space.

Both move files as they are: a pushed folder's model card is written by whoever makes the folder (ddpm.export,
train.py, or the `python -m ddpm.hub push` command).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_config
from .common import CHECKPOINT_FILES, COMMIT, PUSH_FILES, HubError, HubId, parse_hub_id, reason

log = logging.getLogger(__name__)


# -- push a checkpoint ------------------------------------------------------------------------------
def check_push_target(repo_id: str, *, token: str | None = None) -> HubId:
    """Fail early (before a long training run) on a bad repo id or a missing token; no request is made."""
    from huggingface_hub import get_token

    hub_id = parse_hub_id(repo_id, allow_revision=False)
    if token is None and get_token() is None:
        raise HubError("pushing to the Hub needs a token with write access: set HF_TOKEN or run `hf auth login`")
    return hub_id


def push_checkpoint(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                    endpoint: str | None = None, token: str | None = None, commit_message: str | None = None) -> str:
    """Upload a checkpoint folder (config, weights, model card, sample grid, examples, evaluation) to a model repo.

    Creates the repo (and the branch `revision`) when needed. Only PUSH_FILES are uploaded, as they are; such files
    on the Hub that the folder no longer has are deleted. Returns the commit URL.
    """
    hub_id = check_push_target(repo_id, token=token)
    folder = Path(folder)
    config = load_config(folder)  # a CheckpointError before any request
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{str(folder)!r} has no {WEIGHTS_NAME} to push")
    from huggingface_hub import HfApi

    if not (folder / "README.md").is_file():
        log.warning("%s has no README.md (model card): the Hub repo gets none", folder)
    api = HfApi(endpoint=endpoint, token=token)
    steps = config.training.get("steps")
    message = commit_message or (f"Upload checkpoint at step {steps}" if steps else "Upload checkpoint")
    try:
        api.create_repo(hub_id.repo_id, private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(hub_id.repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=hub_id.repo_id, folder_path=folder, allow_patterns=list(PUSH_FILES),
                                 delete_patterns=list(PUSH_FILES), revision=revision, commit_message=message)
    except Exception as e:  # HTTP, network, a README rejected by the Hub
        raise HubError(f"pushing {folder} to {hub_id.repo_id} failed: {reason(e)}") from e
    return str(info.commit_url)


# -- deploy the demo as a Space --------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_CHECKPOINT = "checkpoints/fashion-mnist"  # the app's built-in default, shipped in the Space too
SPACE_TITLE = "DDPM Studio"
SPACE_MODEL_VARIABLE = "DDPM_HUB_REPO"  # the Space variable app.py reads
SPACE_TAGS = ("diffusion", "ddpm", "image-generation", "education", "gradio")
SPACE_HARDWARE = "cpu-basic"  # the free tier: the app samples small models on 2 CPU cores
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's index of CPU-only wheels ("X.Y.Z+cpu")
CPU_WHEELS = ("torch", "torchvision", "torchaudio")  # the packages that index builds without CUDA


APP_FILES = ("app.py", "app_layout.py", "requirements.txt")  # the top-level files the Space runs


def space_files(root: str | Path = PROJECT_ROOT) -> dict[str, Path]:
    """path in the Space -> local file: exactly what the app needs to start, nothing else.

    app.py and app_layout.py (the page), the ddpm package's .py files, requirements.txt, and the embedded default checkpoint (its
    config, weights, card, sample grid and examples/) when present. No tests, caches, runs or training state.
    """
    root = Path(root)
    files: dict[str, Path] = {}
    for name in APP_FILES:
        if not (root / name).is_file():
            raise ValueError(f"{str(root / name)!r} not found; --root must be the ddpm-studio project folder")
        files[name] = root / name
    for path in sorted((root / "ddpm").rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" not in rel.parts:
            files[rel.as_posix()] = path
    ckpt = root / EMBEDDED_CHECKPOINT
    for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md", "samples.png"):
        if (ckpt / name).is_file():
            files[f"{EMBEDDED_CHECKPOINT}/{name}"] = ckpt / name
    if (ckpt / "examples").is_dir():
        for path in sorted((ckpt / "examples").rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and not path.name.startswith("."):
                files[rel.as_posix()] = path
    return files


def pinned_version(requirements: str, package: str) -> str:
    """The version pinned as package==X in a requirements.txt text."""
    for line in requirements.splitlines():
        m = re.match(rf"^\s*{re.escape(package)}\s*==\s*([\w.+-]+)", line, flags=re.IGNORECASE)
        if m:
            return m.group(1)
    raise ValueError(f"requirements.txt pins no {package} version ({package}==X.Y.Z); the Space needs one")


def space_requirements(requirements: str) -> str:
    """The Space's requirements.txt: the project's pins, with torch (and torchvision, torchaudio) as the CPU-only
    wheels of PyTorch's own index. A Space on CPU hardware needs no CUDA, and the PyPI wheels bring several GB of
    CUDA libraries to download and store. Not install-tested here (see docs/app.md)."""
    pinned_version(requirements, "torch")  # a ValueError unless torch==X is pinned
    lines = []
    for line in requirements.splitlines():
        m = re.match(rf"^(\s*(?:{'|'.join(CPU_WHEELS)})\s*==\s*)([\w.]+)(\s*(?:#.*)?)$", line, flags=re.IGNORECASE)
        lines.append(f"{m.group(1)}{m.group(2)}+cpu{m.group(3)}" if m else line)
    header = ["# The Space's copy (python -m ddpm.hub deploy-space): CPU-only torch wheels from PyTorch's index.",
              f"--extra-index-url {TORCH_CPU_INDEX}"]
    return "\n".join(header + lines) + "\n"


def preload_entry(model: str, files: Sequence[str] = ()) -> str:
    """A `preload_from_hub` entry of a Space's README: "user/repo", "user/repo f1,f2" or, for a model pinned to a
    commit ("user/repo@<40 hex>"), "user/repo f1,f2 <commit>" (the Spaces configuration reference's forms)."""
    hub_id = parse_hub_id(model)
    if hub_id.revision and not COMMIT.match(hub_id.revision):
        raise ValueError(f"preload_from_hub pins a commit, not a branch or tag: {model!r}")
    if hub_id.revision and not files:
        raise ValueError(f"a preload pinned to a commit names its files: {model!r}")
    return " ".join(part for part in (hub_id.repo_id, ",".join(files), hub_id.revision) if part)


def space_readme(model: str, *, gradio_version: str, files: Sequence[str] = ()) -> str:
    """The Space's README.md: the front matter the Hub reads to build it (preloading `model`'s `files` into the
    Space's Hugging Face cache at build time), and a short description."""
    from huggingface_hub import SpaceCardData

    hub_id = parse_hub_id(model)
    meta = dict(
        title=SPACE_TITLE, emoji="🌀", colorFrom="indigo", colorTo="pink", sdk="gradio", sdk_version=gradio_version,
        app_file="app.py", python_version="3.11", license="mit", models=[hub_id.repo_id], tags=list(SPACE_TAGS),
        preload_from_hub=[preload_entry(model, files)], suggested_hardware=SPACE_HARDWARE,
        short_description="Watch a diffusion model denoise, step by step", pinned=False)
    front = SpaceCardData(**meta).to_yaml(original_order=list(meta))  # keys in this order
    pinned = f" at commit `{hub_id.revision[:10]}`" if hub_id.revision and COMMIT.match(hub_id.revision) else ""
    return (f"---\n{front}\n---\n\n# {SPACE_TITLE}\n\n"
            f"A denoising diffusion model (DDPM) that draws images from noise while you watch. The model is "
            f"[`{hub_id.repo_id}`](https://huggingface.co/{hub_id.repo_id}){pinned}, preloaded into the Space's "
            f"Hugging Face cache when the Space is built (`preload_from_hub`), so the app starts from disk without "
            f"asking the Hub. The Space variable `{SPACE_MODEL_VARIABLE}` names it; set it to another checkpoint in "
            f"the Space settings and the app downloads that one at start-up instead. If the Hub cannot be reached, "
            f"the app falls back to the checkpoint shipped in `{EMBEDDED_CHECKPOINT}` and says so on the page.\n\n"
            "Run it locally: `pip install -r requirements.txt && python app.py`.\n")


def checkpoint_files(paths: Sequence[str]) -> list[str]:
    """The files of a model repo that a pull fetches (CHECKPOINT_FILES), sorted."""
    return sorted(p for p in paths if any(fnmatch(p, pattern) for pattern in CHECKPOINT_FILES))


def deploy_space(space_id: str, *, model: str, root: str | Path = PROJECT_ROOT, private: bool = False,
                 endpoint: str | None = None, token: str | None = None) -> str:
    """Create or update a Gradio Space running app.py with `model` ("user/repo[@rev]"). Returns the commit URL.

    The Space's files become exactly space_files(root) + README.md (stale files are deleted), its requirements.txt
    the project's with CPU-only torch (space_requirements). `model` is pinned to the commit it names now: the README
    preloads that commit's checkpoint files into the Space's Hugging Face cache at build time, and the Space variable
    DDPM_HUB_REPO is set to "user/repo@<commit>", which ddpm.hub.resolve_checkpoint reads from that cache with no
    request (a commit never changes).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    space = check_push_target(space_id, token=token)
    model_id = parse_hub_id(model)
    files = space_files(root)
    requirements_txt = files["requirements.txt"].read_text()
    gradio_version, requirements = pinned_version(requirements_txt, "gradio"), space_requirements(requirements_txt)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(model_id.repo_id, revision=model_id.revision or "main")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise HubError(f"the Hub has no model {str(model_id)!r} (or it is private): push it first with "
                       f"`python -m ddpm.hub push CHECKPOINT_DIR {model_id.repo_id}`") from None
    except Exception as e:
        raise HubError(f"checking the model {str(model_id)!r} failed: {reason(e)}") from e
    preload = checkpoint_files([s.rfilename for s in info.siblings or []])
    if not info.sha or not {CONFIG_NAME, WEIGHTS_NAME} <= set(preload):
        raise HubError(f"{str(model_id)!r} is not a ddpm-studio checkpoint on the Hub (it needs {CONFIG_NAME} and "
                       f"{WEIGHTS_NAME}): push one with `python -m ddpm.hub push CHECKPOINT_DIR {model_id.repo_id}`")
    pinned = HubId(model_id.repo_id, info.sha)
    readme = space_readme(str(pinned), gradio_version=gradio_version, files=preload)
    try:
        api.create_repo(space.repo_id, repo_type="space", space_sdk="gradio", private=True if private else None,
                        exist_ok=True)
        api.add_space_variable(space.repo_id, SPACE_MODEL_VARIABLE, str(pinned),
                               description="the checkpoint app.py loads (user/repo[@revision]); the README "
                                           "preloads this commit")
        wanted = set(files) | {"README.md"}
        stale = [p for p in api.list_repo_files(space.repo_id, repo_type="space")
                 if p not in wanted and p != ".gitattributes"]
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
        written = {"requirements.txt": requirements.encode()}  # the Space's own version of that file
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=written.get(p, str(f)))
                       for p, f in sorted(files.items())]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode()))
        info = api.create_commit(space.repo_id, operations, repo_type="space",
                                 commit_message=f"Deploy ddpm-studio with {pinned}")
    except Exception as e:
        raise HubError(f"deploying the Space {space.repo_id} failed: {reason(e)}") from e
    return str(info.commit_url)
