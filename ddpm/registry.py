"""The models a server offers: local checkpoint folders and Hub ids, the last few loaded (shared by all users), and
each model's example images for the forward process.

    registry = ModelRegistry([*preferred, *local_checkpoints("checkpoints")])
    source, pipe, failures = registry.first_loadable(preferred)   # the first that loads, and why the others did not
    pipe = registry.get(source)                                    # cached; only listed sources load
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import CONFIG_NAME, FORMAT
from .hub import resolve_checkpoint
from .images import to_uint8
from .pipeline import Pipeline, load
from .studio import LABEL_SEP, label_choices

Example = tuple[str, np.ndarray]  # (name, uint8 (H, W, C))


# -- example images --------------------------------------------------------------------------------
def example_name(stem: str) -> str:
    """"7_Sneaker" -> "7 · Sneaker"; "Ankle_boot" stays readable as "Ankle boot"."""
    m = re.fullmatch(r"(\d+)_(.+)", stem)
    return f"{m.group(1)}{LABEL_SEP}{m.group(2).replace('_', ' ')}" if m else stem.replace("_", " ")


def load_examples(folder: str | Path) -> list[Example]:
    """(name, uint8 (H, W, C)) for every PNG in folder/examples, sorted by file name; [] when absent."""
    ex = Path(folder) / "examples"
    out = []
    for p in sorted(ex.glob("*.png")) if ex.is_dir() else []:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB" if im.mode in ("RGB", "RGBA", "P") else "L"))
        out.append((example_name(p.stem), a if a.ndim == 3 else a[..., None]))
    return out


def generated_examples(pipe: Pipeline, *, steps: int = 20, seed: int = 0) -> list[Example]:
    """One sample per class (or four for an unconditional model), for models shipped without examples."""
    steps = min(steps, pipe.T)
    if pipe.conditional:
        names = label_choices(pipe)
        x = pipe.sample(labels=list(range(len(names))), seed=seed, steps=steps, cfg=2.0)
        labels = [f"{name} (generated)" for name in names]
    else:
        x = pipe.sample(n=4, seed=seed, steps=steps)
        labels = [f"sample {i + 1} (generated)" for i in range(4)]
    return list(zip(labels, to_uint8(x)))


# -- models ----------------------------------------------------------------------------------------
def local_checkpoints(root: str | Path = "checkpoints") -> list[str]:
    """Sub-folders of root that hold a diffusion checkpoint's config.json, sorted.

    A folder whose config.json declares another format (the evaluation classifiers shipped beside the models)
    is left out; one whose config.json cannot be read stays in, so that the app reports why it fails to load.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir()
                  if p.is_dir() and (p / CONFIG_NAME).is_file() and _declared_format(p / CONFIG_NAME) in (None, FORMAT))


def _declared_format(path: Path) -> str | None:
    """The "format" a config.json declares, or None if it declares none or cannot be read."""
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d.get("format") if isinstance(d, dict) and isinstance(d.get("format"), str) else None


class ModelRegistry:
    """The checkpoints a server offers (local folders, Hub ids) and the last few loaded, shared by all users.

    Only sources listed here can be loaded: a request naming anything else is refused.
    """

    def __init__(self, sources: Sequence[str], *, cache_size: int = 2) -> None:
        self.sources = list(dict.fromkeys(str(s) for s in sources))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Pipeline] = OrderedDict()
        self._examples: dict[str, list[Example]] = {}
        self._lock = threading.Lock()

    def get(self, source: object) -> Pipeline:
        """The loaded pipeline of a listed source (ddpm.load, cached). Raises ValueError / CheckpointError."""
        if not isinstance(source, str) or source not in self.sources:
            raise ValueError(f"unknown model {source!r}; choose one of {', '.join(self.sources)}")
        with self._lock:
            if source in self._cache:
                self._cache.move_to_end(source)
                return self._cache[source]
            pipe = load(source)
            self._cache[source] = pipe
            while len(self._cache) > self.cache_size:
                old, _ = self._cache.popitem(last=False)
                self._examples.pop(old, None)
            return pipe

    def first_loadable(self, preferred: Sequence[str]) -> tuple[str, Pipeline, dict[str, str]]:
        """The first of `preferred` (then of all sources) that loads, and {source: error} for those that failed.

        Sources that failed are dropped from the list. Raises ValueError when none loads.
        """
        failures: dict[str, str] = {}
        for source in list(dict.fromkeys([*preferred, *self.sources])):
            try:
                pipe = self.get(source)
            except (ValueError, OSError) as e:
                failures[source] = str(e)
                continue
            self.sources = [s for s in self.sources if s not in failures]
            return source, pipe, failures
        raise ValueError("no model could be loaded: " + "; ".join(f"{s}: {e}" for s, e in failures.items()))

    def examples(self, source: str) -> list[Example]:
        """The model's shipped example images (folder/examples/*.png), else generated ones; cached."""
        pipe = self.get(source)
        with self._lock:
            if source not in self._examples:
                try:
                    shipped = load_examples(resolve_checkpoint(source))
                except (ValueError, OSError):
                    shipped = []
                self._examples[source] = shipped or generated_examples(pipe)
            return self._examples[source]
