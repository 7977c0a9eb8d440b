"""Hugging Face Hub I/O: pull "user/repo[@revision]", push a checkpoint folder, deploy the demo as a Space.

This package only moves files: the folder pushed is uploaded as it is (its model card is written by whoever makes
the folder: ddpm.export, train.py, or the `python -m ddpm.hub push` command, ddpm/hub/__main__.py).

    resolve_checkpoint("checkpoints/fashion-mnist")         # a local folder, as is
    resolve_checkpoint("user/ddpm-fashion@v1")              # downloaded into the huggingface_hub cache
    push_checkpoint("checkpoints/fashion-mnist", "user/ddpm-fashion")
    deploy_space("user/ddpm-studio", model="user/ddpm-fashion")

    python -m ddpm.hub pull user/ddpm-fashion[@REV]
    python -m ddpm.hub push checkpoints/fashion-mnist user/ddpm-fashion [--private] [--revision BRANCH]
    python -m ddpm.hub deploy-space user/ddpm-studio --model user/ddpm-fashion[@REV] [--private]

Downloading is safe against a hostile or broken repo, and quick when the Hub is unreachable:
  1. one time-boxed request (model_info) finds the commit and the file sizes. If the Hub cannot be reached
     (no network, HF_HUB_OFFLINE=1, a timeout, a 5xx) the cached copy is used, else a CheckpointError.
     A pinned commit (user/repo@<40 hex>) that is already cached needs no request at all;
  2. config.json alone is downloaded and validated (ModelConfig bounds every size, and a UNet from the Hub
     may have at most MAX_HUB_PARAMETERS);
  3. only then model.safetensors (its size checked against the config's parameter count) and the card files.
Weights are only ever read as safetensors; pickle files (.bin, .pt, .ckpt) are never downloaded.

The token comes from HF_TOKEN or a saved login (`hf auth login`), as huggingface_hub does, and is never
printed or written. huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is first
imported; every function here also takes `endpoint=` (None = the library's default).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_config
from ..model import parameter_count

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "samples.png", "examples/*")  # what a pull fetches
PUSH_FILES = CHECKPOINT_FILES + ("evaluation.json",)  # never training_state.pt, logs or samples/
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_CONFIG_BYTES = 1 << 20
MAX_HUB_PARAMETERS = 200_000_000  # ModelConfig allows ~4e9; a UNet from the Hub may not need 16 GB (base preset: 9e6)
MAX_CARD_FILES_BYTES = 256 << 20  # README.md, samples.png and examples/ together
SAFETENSORS_HEADER_BYTES = 1 << 20  # allowance on top of 4 bytes per parameter
DEFAULT_TIMEOUT_S = 10.0  # per Hub request while resolving; DDPM_HUB_TIMEOUT overrides
SPACE_MODEL_VARIABLE = "DDPM_HUB_REPO"  # the Space variable app.py reads


class HubError(RuntimeError):
    """A Hub request for a push or a deployment failed (network, permissions, a rejected file)."""


@dataclass(frozen=True)
class HubId:
    """A parsed "user/repo[@revision]"."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def looks_like_hub_id(source: str) -> bool:
    """True for "user/repo" or "user/repo@rev" that is not an existing local path."""
    return bool(REPO_ID.match(source)) and not Path(source).exists()


def parse_hub_id(source: str, *, allow_revision: bool = True) -> HubId:
    """"user/repo[@revision]" -> HubId; ValueError naming the expected form otherwise."""
    if not isinstance(source, str) or not REPO_ID.match(source) or ".." in source or source.endswith((".", "-")):
        raise ValueError(f"{source!r} is not a Hub id; expected user/repo{'[@revision]' if allow_revision else ''} "
                         "(letters, digits, '-', '_', '.')")
    repo_id, _, revision = source.partition("@")
    if revision and not allow_revision:
        raise ValueError(f"{source!r}: a revision (@...) is not allowed here; give user/repo")
    return HubId(repo_id, revision or None)


def default_timeout() -> float:
    value = os.environ.get("DDPM_HUB_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


# -- pull ------------------------------------------------------------------------------------------
def resolve_checkpoint(source: str, *, endpoint: str | None = None, cache_dir: str | Path | None = None,
                       token: str | None = None, timeout: float | None = None) -> Path:
    """A local folder as is; a Hub id "user/repo[@revision]" downloaded into the huggingface_hub cache.

    Raises CheckpointError with a message for the user: not found, not a checkpoint, Hub unreachable and
    not cached, ... Nothing from the Hub is executed or unpickled.
    """
    path = Path(source)
    if path.exists():
        return path
    if not looks_like_hub_id(source):
        raise CheckpointError(f"checkpoint {source!r} not found: give a checkpoint folder or a Hub id user/repo[@revision]")
    hub_id = parse_hub_id(source)
    return download_checkpoint(hub_id.repo_id, revision=hub_id.revision, endpoint=endpoint, cache_dir=cache_dir,
                               token=token, timeout=timeout)


def download_checkpoint(repo_id: str, *, revision: str | None = None, endpoint: str | None = None,
                        cache_dir: str | Path | None = None, token: str | None = None,
                        timeout: float | None = None) -> Path:
    """The snapshot folder of a checkpoint repo (config.json, model.safetensors, card files); see the module doc."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = str(HubId(repo_id, revision))
    rev = revision or "main"
    timeout = default_timeout() if timeout is None else timeout
    get = _Snapshots(repo_id, endpoint=endpoint, cache_dir=cache_dir, token=token, timeout=timeout)
    if COMMIT.match(rev) and (cached := get.cached(rev)) is not None:
        return cached  # a commit never changes: no request needed

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=rev, files_metadata=True,
                                                                timeout=timeout)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where!r} is not a local folder, and the Hub has no model repo {repo_id!r} (or it is "
                              "private or gated: set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"the Hub repo {repo_id!r} has no revision {rev!r} (a branch, tag or commit)") from None
    except HFValidationError as e:
        raise CheckpointError(f"{where!r} is not a valid Hub id: {e}") from None
    except (httpx2.TransportError, OfflineModeIsEnabled, HfHubHTTPError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HfHubHTTPError) and status is not None and status < 500:
            raise CheckpointError(f"the Hub refused {where!r} (HTTP {status}); check the id and your token") from None
        cached = get.cached(rev)
        if cached is None:
            raise CheckpointError(
                f"cannot reach the Hugging Face Hub ({_reason(e)}) and {where!r} is not in the local cache; connect "
                "once to download it, or give a local checkpoint folder") from None
        log.warning("the Hub cannot be reached (%s); using the cached copy of %s (commit %s)", _reason(e), where,
                    cached.name[:10])
        return cached

    sizes = {s.rfilename: s.size for s in info.siblings or []}
    if CONFIG_NAME not in sizes:
        raise CheckpointError(f"the Hub repo {where!r} has no {CONFIG_NAME}: it is not a ddpm-studio checkpoint "
                              f"(it holds {_listing(sizes)})")
    if WEIGHTS_NAME not in sizes:
        pickles = [f for f in sizes if f.endswith(PICKLE_SUFFIXES)]
        why = f"; pickle files ({', '.join(pickles)}) are never loaded" if pickles else ""
        raise CheckpointError(f"the Hub repo {where!r} has no {WEIGHTS_NAME}{why}")
    _check_size(where, CONFIG_NAME, sizes[CONFIG_NAME], MAX_CONFIG_BYTES)

    folder = get.download(rev, [CONFIG_NAME])  # also records rev -> commit in the cache, for offline use
    try:
        config = load_config(folder)
    except CheckpointError as e:
        raise CheckpointError(f"the Hub repo {where!r} is not a usable ddpm-studio checkpoint: {e}") from None
    n_params = parameter_count(config.model)
    if n_params > MAX_HUB_PARAMETERS:
        raise CheckpointError(f"the Hub repo {where!r} describes a {n_params:,}-parameter UNet; more than the "
                              f"{MAX_HUB_PARAMETERS:,} accepted from the Hub, so it is not downloaded")
    commit = folder.name
    tree = get.tree(commit) or sizes
    _check_size(where, WEIGHTS_NAME, tree.get(WEIGHTS_NAME, 0), 4 * n_params + SAFETENSORS_HEADER_BYTES)
    card_files = [n for n in tree if n not in (CONFIG_NAME, WEIGHTS_NAME) and any(fnmatch(n, p) for p in CHECKPOINT_FILES)]
    _check_size(where, "set of card files (README.md, samples.png, examples/)", sum(tree[n] or 0 for n in card_files),
                MAX_CARD_FILES_BYTES)
    return get.download(commit, list(CHECKPOINT_FILES))


class _Snapshots:
    """snapshot_download for one repo, with its errors turned into CheckpointErrors."""

    def __init__(self, repo_id: str, *, endpoint: str | None, cache_dir: str | Path | None, token: str | None,
                 timeout: float) -> None:
        self.repo_id, self.endpoint, self.cache_dir, self.token, self.timeout = repo_id, endpoint, cache_dir, token, timeout

    def download(self, revision: str, patterns: list[str], *, local_files_only: bool = False) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.repo_id, revision=revision, allow_patterns=patterns,
                                          endpoint=self.endpoint, cache_dir=self.cache_dir, token=self.token,
                                          etag_timeout=self.timeout, local_files_only=local_files_only))
        except Exception as e:  # network lost half-way, disk full, ...: one clear message, no traceback page
            if local_files_only:
                raise
            raise CheckpointError(f"downloading {self.repo_id}@{revision} failed: {_reason(e)}") from e

    def cached(self, revision: str) -> Path | None:
        """The complete cached snapshot for a branch, tag or commit, or None."""
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = self.download(revision, list(CHECKPOINT_FILES), local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
        return folder if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file() else None

    def tree(self, commit: str) -> dict[str, int] | None:
        """path -> size of the commit's files, from the listing snapshot_download cached (no request); None if
        it could not be cached (e.g. a read-only cache)."""
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError

        try:
            files = get_cached_repo_tree(self.repo_id, revision=commit, cache_dir=self.cache_dir)
        except CachedRepoTreeNotFoundError:
            return None
        return {f.path: f.size for f in files}


def _check_size(where: str, name: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise CheckpointError(f"the Hub repo {where!r} has a {size:,}-byte {name}; more than the {limit:,} bytes "
                              "a checkpoint of this config can need, so it is not downloaded")


def _listing(sizes: dict[str, int | None]) -> str:
    names = sorted(sizes)
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "no files"


def _reason(e: BaseException) -> str:
    """A one-line description of an error (never contains the token: huggingface_hub messages hold URLs only)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- push ------------------------------------------------------------------------------------------
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
        raise HubError(f"pushing {folder} to {hub_id.repo_id} failed: {_reason(e)}") from e
    return str(info.commit_url)


# -- deploy the demo as a Space --------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_CHECKPOINT = "checkpoints/fashion-mnist"  # the app's built-in default, shipped in the Space too
SPACE_TITLE = "DDPM Studio"


def space_files(root: str | Path = PROJECT_ROOT) -> dict[str, Path]:
    """path in the Space -> local file: exactly what the app needs to start, nothing else.

    app.py, the ddpm package's .py files, requirements.txt, and the embedded default checkpoint (its
    config, weights, card, sample grid and examples/) when present. No tests, caches, runs or training state.
    """
    root = Path(root)
    files: dict[str, Path] = {}
    for name in ("app.py", "requirements.txt"):
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


def space_readme(model: str, *, gradio_version: str) -> str:
    """The Space's README.md: the front matter the Hub reads to build it, and a short description."""
    import yaml

    meta = {
        "title": SPACE_TITLE,
        "emoji": "🌀",
        "colorFrom": "indigo",
        "colorTo": "pink",
        "sdk": "gradio",
        "sdk_version": gradio_version,
        "app_file": "app.py",
        "python_version": "3.11",
        "models": [parse_hub_id(model).repo_id],
        "short_description": "Watch a diffusion model denoise, step by step",
        "pinned": False,
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return (f"---\n{front}\n---\n\n# {SPACE_TITLE}\n\n"
            f"A denoising diffusion model (DDPM) that draws images from noise while you watch. The model is "
            f"[`{model}`](https://huggingface.co/{parse_hub_id(model).repo_id}), loaded from the Hub at start-up "
            f"(the Space variable `{SPACE_MODEL_VARIABLE}`; change it in the Space settings to show another "
            f"checkpoint). If the Hub cannot be reached, the app falls back to the checkpoint shipped in "
            f"`{EMBEDDED_CHECKPOINT}` and says so on the page.\n\n"
            "Run it locally: `pip install -r requirements.txt && python app.py`.\n")


def deploy_space(space_id: str, *, model: str, root: str | Path = PROJECT_ROOT, private: bool = False,
                 endpoint: str | None = None, token: str | None = None) -> str:
    """Create or update a Gradio Space running app.py with `model` ("user/repo[@rev]"). Returns the commit URL.

    The Space's files become exactly space_files(root) + README.md (stale files are deleted), and the
    Space variable DDPM_HUB_REPO is set to `model`.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    space = check_push_target(space_id, token=token)
    model_id = parse_hub_id(model)
    files = space_files(root)
    readme = space_readme(str(model_id), gradio_version=pinned_version(files["requirements.txt"].read_text(), "gradio"))
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.model_info(model_id.repo_id, revision=model_id.revision or "main")
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise HubError(f"the Hub has no model {str(model_id)!r} (or it is private): push it first with "
                       f"`python -m ddpm.hub push CHECKPOINT_DIR {model_id.repo_id}`") from None
    except Exception as e:
        raise HubError(f"checking the model {str(model_id)!r} failed: {_reason(e)}") from e
    try:
        api.create_repo(space.repo_id, repo_type="space", space_sdk="gradio", private=True if private else None,
                        exist_ok=True)
        api.add_space_variable(space.repo_id, SPACE_MODEL_VARIABLE, str(model_id),
                               description="the checkpoint app.py loads (user/repo[@revision])")
        wanted = set(files) | {"README.md"}
        stale = [p for p in api.list_repo_files(space.repo_id, repo_type="space")
                 if p not in wanted and p != ".gitattributes"]
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in sorted(files.items())]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode()))
        info = api.create_commit(space.repo_id, operations, repo_type="space",
                                 commit_message=f"Deploy ddpm-studio with {model_id}")
    except Exception as e:
        raise HubError(f"deploying the Space {space.repo_id} failed: {_reason(e)}") from e
    return str(info.commit_url)
