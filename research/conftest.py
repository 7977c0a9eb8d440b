"""For `python -m pytest research` from the repository root: this checkout's ddpm on sys.path, and the product
suite's shared fixtures (tests/conftest.py: `tiny_checkpoint`, `synthetic_dataset_factory`, ...) by name here too.

The product suite (`pytest`, testpaths = tests) does not collect research/.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# tests/ is not a package and its conftest is not loaded for research/, so load it under its own name and take
# its fixtures (pytest finds fixtures among a conftest module's names). It also sets the tests' torch threads.
_spec = importlib.util.spec_from_file_location("ddpm_tests_conftest", ROOT / "tests" / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
globals().update({name: value for name, value in vars(_shared).items()
                  if not name.startswith("_") and name not in globals()})
