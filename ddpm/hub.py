"""Hugging Face Hub I/O: resolve "user/repo[@revision]" to a local checkpoint folder."""

from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import CheckpointError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def looks_like_hub_id(source: str) -> bool:
    """True for "user/repo" or "user/repo@rev" that is not an existing local path."""
    return bool(REPO_ID.match(source)) and not Path(source).exists()


def resolve_checkpoint(source: str) -> Path:
    """A local folder as is; a Hub id downloaded into the huggingface_hub cache."""
    path = Path(source)
    if path.exists():
        return path
    if looks_like_hub_id(source):
        raise CheckpointError(f"{source!r} is not a local folder, and Hub downloads are not available yet")
    raise CheckpointError(f"checkpoint {source!r} not found: give a checkpoint folder or a Hub id user/repo[@revision]")
