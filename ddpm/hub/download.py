"""Pull a checkpoint from the Hub into the huggingface_hub cache, each file verified against the Hub's record.

Downloading is safe against a hostile or broken repo and against bytes changed on the way, and quick when the Hub
is unreachable:
  1. one time-boxed request (model_info) finds the commit and the files' sizes and digests. If the Hub cannot be
     reached (no network, HF_HUB_OFFLINE=1, a timeout, a 5xx) the cached copy is used (it was verified when it was
     downloaded), else a CheckpointError. A pinned commit (user/repo@<40 hex>) that is already cached needs no
     request at all;
  2. config.json alone is downloaded, verified and validated (ModelConfig bounds every size, and a UNet from the Hub
     may have at most MAX_HUB_PARAMETERS);
  3. only then model.safetensors (its size checked against the config's parameter count) and the card files;
  4. every file is compared with the Hub's record of that commit: its size, and its sha256 (LFS files: the weights,
     images) or its git blob id (small text files). A file that differs is removed from the cache, so the next pull
     downloads it again, and refused with a CheckpointError naming it. With the Hub reachable this check runs on
     every pull, cached files included (hashing costs ~1 ms per MB).
Weights are only ever read as safetensors; pickle files (.bin, .pt, .ckpt) are never downloaded. Loading then
refuses non-finite weights (ddpm.checkpoint.read_weights).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_config
from ..model import parameter_count
from .common import CHECKPOINT_FILES, COMMIT, HubId, looks_like_hub_id, parse_hub_id, reason

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_CONFIG_BYTES = 1 << 20
MAX_HUB_PARAMETERS = 200_000_000  # ModelConfig allows ~4e9; a UNet from the Hub may not need 16 GB (base preset: 9e6)
MAX_CARD_FILES_BYTES = 256 << 20  # README.md, samples.png and examples/ together
SAFETENSORS_HEADER_BYTES = 1 << 20  # allowance on top of 4 bytes per parameter
DEFAULT_TIMEOUT_S = 10.0  # per Hub request while resolving; DDPM_HUB_TIMEOUT overrides
SHORT_DIGEST = 12  # hex digits of a digest shown in a message


def default_timeout() -> float:
    value = os.environ.get("DDPM_HUB_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def resolve_checkpoint(source: str, *, endpoint: str | None = None, cache_dir: str | Path | None = None,
                       token: str | None = None, timeout: float | None = None) -> Path:
    """A local folder as is; a Hub id "user/repo[@revision]" downloaded into the huggingface_hub cache.

    Raises CheckpointError with a message for the user: not found, not a checkpoint, Hub unreachable and
    not cached, a file that does not match the Hub's record, ... Nothing from the Hub is executed or unpickled.
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
    """The snapshot folder of a checkpoint repo (config.json, model.safetensors, card files); see the module doc.

    When the Hub cannot be reached, the cached snapshot is returned as it is: its files were verified when they
    were downloaded.
    """
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
        return cached  # a commit never changes: no request needed (its files were verified when downloaded)

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=rev, files_metadata=True, timeout=timeout)
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
                f"cannot reach the Hugging Face Hub ({reason(e)}) and {where!r} is not in the local cache; connect "
                "once to download it, or give a local checkpoint folder") from None
        log.warning("the Hub cannot be reached (%s); using the cached copy of %s (commit %s)", reason(e), where,
                    cached.name[:10])
        return cached

    files = hub_files(info.siblings)
    _check_listing(where, files)
    folder = get.download(rev, [CONFIG_NAME])  # also records rev -> commit in the cache, for offline use
    commit = folder.name
    if commit != info.sha:  # the branch moved between the two requests: the record of the commit downloaded
        try:
            files = hub_files(api.model_info(repo_id, revision=commit, files_metadata=True, timeout=timeout).siblings)
        except Exception as e:
            raise CheckpointError(f"the Hub repo {where!r} changed while downloading and its new commit {commit[:10]} "
                                  f"cannot be listed ({reason(e)}); run again") from None
        _check_listing(where, files)
    verify_files(where, folder, [CONFIG_NAME], files)
    try:
        config = load_config(folder)
    except CheckpointError as e:
        raise CheckpointError(f"the Hub repo {where!r} is not a usable ddpm-studio checkpoint: {e}") from None
    n_params = parameter_count(config.model)
    if n_params > MAX_HUB_PARAMETERS:
        raise CheckpointError(f"the Hub repo {where!r} describes a {n_params:,}-parameter UNet; more than the "
                              f"{MAX_HUB_PARAMETERS:,} accepted from the Hub, so it is not downloaded")
    _check_size(where, WEIGHTS_NAME, files[WEIGHTS_NAME].size, 4 * n_params + SAFETENSORS_HEADER_BYTES)
    card_files = [n for n in files if n not in (CONFIG_NAME, WEIGHTS_NAME) and _wanted(n)]
    _check_size(where, "set of card files (README.md, samples.png, examples/)",
                sum(files[n].size or 0 for n in card_files), MAX_CARD_FILES_BYTES)
    folder = get.download(commit, list(CHECKPOINT_FILES))
    verify_files(where, folder, [n for n in files if _wanted(n)], files)
    return folder


def _wanted(name: str) -> bool:
    return any(fnmatch(name, p) for p in CHECKPOINT_FILES)


def _check_listing(where: str, files: dict[str, HubFile]) -> None:
    """Refuse a repo without config.json or model.safetensors, or with an oversized config, before downloading."""
    if CONFIG_NAME not in files:
        raise CheckpointError(f"the Hub repo {where!r} has no {CONFIG_NAME}: it is not a ddpm-studio checkpoint "
                              f"(it holds {_listing(files)})")
    if WEIGHTS_NAME not in files:
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        why = f"; pickle files ({', '.join(pickles)}) are never loaded" if pickles else ""
        raise CheckpointError(f"the Hub repo {where!r} has no {WEIGHTS_NAME}{why}")
    _check_size(where, CONFIG_NAME, files[CONFIG_NAME].size, MAX_CONFIG_BYTES)


# -- verification against the Hub's record -------------------------------------------------------------
@dataclass(frozen=True)
class HubFile:
    """The Hub's record of one file of a commit: its size, and its sha256 (LFS files) or git blob id (other files)."""

    size: int | None
    sha256: str | None = None
    blob_id: str | None = None

    @classmethod
    def of(cls, entry: Any) -> "HubFile":
        """From a huggingface_hub RepoSibling (model_info(files_metadata=True)) or RepoFile (list_repo_tree).

        For an LFS file the git blob id is that of its pointer file, so only the LFS sha256 and size describe it.
        """
        if entry.lfs is not None:
            return cls(entry.lfs.size, sha256=entry.lfs.sha256)
        return cls(entry.size, blob_id=entry.blob_id)


def hub_files(siblings: list[Any] | None) -> dict[str, HubFile]:
    """path -> HubFile for the siblings of a model_info(files_metadata=True) answer."""
    return {s.rfilename: HubFile.of(s) for s in siblings or []}


def git_blob_id(path: Path) -> str:
    """The git object id of a file: sha1(b"blob <size>\\0" + content), what the Hub reports for non-LFS files."""
    return _digest(path, hashlib.sha1(b"blob %d\0" % path.stat().st_size))


def sha256_of(path: Path) -> str:
    return _digest(path, hashlib.sha256())


def _digest(path: Path, h: Any) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def mismatch(path: Path, record: HubFile) -> str | None:
    """How a file differs from the Hub's record ("sha256 expected 3f2a9c01d4e5, got 7b1e0c9a2f11"), or None."""
    size = path.stat().st_size
    if record.size is not None and size != record.size:
        return f"size expected {record.size:,} bytes, got {size:,}"
    for kind, expected, actual in (("sha256", record.sha256, sha256_of), ("git blob id", record.blob_id, git_blob_id)):
        if expected is not None and (got := actual(path)) != expected.lower():
            return f"{kind} expected {expected[:SHORT_DIGEST]}, got {got[:SHORT_DIGEST]}"
    return None


def verify_files(where: str, folder: Path, names: list[str], files: dict[str, HubFile]) -> None:
    """Compare each downloaded file of `names` with the Hub's record; a file that differs is removed from the
    cache (so the next pull downloads it again) and refused with a CheckpointError naming it."""
    for name in names:
        path = folder / name
        record = files.get(name)
        if record is None or not path.is_file():
            continue
        if record.sha256 is None and record.blob_id is None:
            log.warning("the Hub gives no digest for %s in %s; only its size is checked", name, where)
        problem = mismatch(path, record)
        if problem is None:
            continue
        entry = f"{path} and {path.resolve()}, the blob it links to" if path.is_symlink() else str(path)
        failed = _discard(path)
        what_now = ("The bad copy was removed from the cache; run again." if failed is None else
                    f"The bad copy could not be removed ({failed}): clear the cache entry at {entry}, then run again.")
        raise CheckpointError(f"the Hub repo {where!r} (commit {folder.name[:10]}): the downloaded {name} does not "
                              f"match the Hub's record of it ({problem}), so it is not used: the download was "
                              f"corrupted or the repo changed while downloading. {what_now}")


def _discard(path: Path) -> str | None:
    """Remove a cached file: the blob its snapshot link points to, then the link. None, or why it failed."""
    try:
        if path.is_symlink():
            path.resolve().unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    except OSError as e:
        return reason(e)
    return None


# -- the huggingface_hub cache -------------------------------------------------------------------------
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
            raise CheckpointError(f"downloading {self.repo_id}@{revision} failed: {reason(e)}") from e

    def cached(self, revision: str) -> Path | None:
        """The complete cached snapshot for a branch, tag or commit, or None."""
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = self.download(revision, list(CHECKPOINT_FILES), local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
        return folder if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file() else None


def _check_size(where: str, name: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise CheckpointError(f"the Hub repo {where!r} has a {size:,}-byte {name}; more than the {limit:,} bytes "
                              "a checkpoint of this config can need, so it is not downloaded")


def _listing(files: dict[str, Any]) -> str:
    names = sorted(files)
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "no files"
