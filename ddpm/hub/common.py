"""What pulling and pushing share: Hub ids "user/repo[@revision]", the files of a checkpoint repo, error wording."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "samples.png", "examples/*")  # what a pull fetches
PUSH_FILES = CHECKPOINT_FILES + ("evaluation.json",)  # never training_state.pt, logs or samples/


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


def reason(e: BaseException) -> str:
    """A one-line description of an error (never contains the token: huggingface_hub messages hold URLs only)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
