"""Hugging Face Hub I/O: pull "user/repo[@revision]", push a checkpoint folder, deploy the demo as a Space.

This package only moves files: the folder pushed is uploaded as it is (its model card is written by whoever makes
the folder: ddpm.export, train.py, or the `python -m ddpm.hub push` command, ddpm/hub/__main__.py).

    resolve_checkpoint("checkpoints/fashion-mnist")         # a local folder, as is
    resolve_checkpoint("user/ddpm-fashion@v1")              # downloaded into the huggingface_hub cache, verified
    push_checkpoint("checkpoints/fashion-mnist", "user/ddpm-fashion")
    deploy_space("user/ddpm-studio", model="user/ddpm-fashion")  # pinned to its commit, preloaded at build time

    python -m ddpm.hub pull user/ddpm-fashion[@REV]
    python -m ddpm.hub push checkpoints/fashion-mnist user/ddpm-fashion [--private] [--revision BRANCH]
    python -m ddpm.hub deploy-space user/ddpm-studio --model user/ddpm-fashion[@REV] [--private]

    common.py     Hub ids, the files of a checkpoint repo, HubError
    download.py   pull: time-boxed, bounded, every file checked against the Hub's sha256 / git blob id
    upload.py     push a checkpoint, deploy the Space

The download limits (MAX_*) are read from ddpm.hub.download: change them there (the names here are copies).

The token comes from HF_TOKEN or a saved login (`hf auth login`), as huggingface_hub does, and is never
printed or written. huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is first
imported; every function here also takes `endpoint=` (None = the library's default).
"""

from __future__ import annotations

from .common import (
    CHECKPOINT_FILES,
    COMMIT,
    PUSH_FILES,
    REPO_ID,
    HubError,
    HubId,
    looks_like_hub_id,
    parse_hub_id,
)
from .download import (
    DEFAULT_TIMEOUT_S,
    MAX_CARD_FILES_BYTES,
    MAX_CONFIG_BYTES,
    MAX_HUB_PARAMETERS,
    PICKLE_SUFFIXES,
    SAFETENSORS_HEADER_BYTES,
    HubFile,
    default_timeout,
    download_checkpoint,
    resolve_checkpoint,
)
from .upload import (
    EMBEDDED_CHECKPOINT,
    PROJECT_ROOT,
    SPACE_HARDWARE,
    SPACE_MODEL_VARIABLE,
    SPACE_TAGS,
    SPACE_TITLE,
    TORCH_CPU_INDEX,
    check_push_target,
    deploy_space,
    pinned_version,
    preload_entry,
    push_checkpoint,
    space_files,
    space_readme,
    space_requirements,
)

__all__ = [
    "CHECKPOINT_FILES", "COMMIT", "DEFAULT_TIMEOUT_S", "EMBEDDED_CHECKPOINT", "MAX_CARD_FILES_BYTES",
    "MAX_CONFIG_BYTES", "MAX_HUB_PARAMETERS", "PICKLE_SUFFIXES", "PROJECT_ROOT", "PUSH_FILES", "REPO_ID",
    "SAFETENSORS_HEADER_BYTES", "SPACE_HARDWARE", "SPACE_MODEL_VARIABLE", "SPACE_TAGS", "SPACE_TITLE",
    "TORCH_CPU_INDEX", "HubError", "HubFile", "HubId", "check_push_target", "default_timeout", "deploy_space",
    "download_checkpoint", "looks_like_hub_id", "parse_hub_id", "pinned_version", "preload_entry", "push_checkpoint",
    "resolve_checkpoint", "space_files", "space_readme", "space_requirements",
]
