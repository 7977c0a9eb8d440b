"""train.py, the training CLI: its --help states TrainConfig's real defaults.

Runs of train.py itself are tested where their behaviour lives: a killed run in test_run_folder.py, a signal in
test_training.py, torchrun in test_distributed.py, --push-to-hub in test_hub.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ddpm.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_train_help_states_the_real_defaults(capsys):
    """Every flag's default is None (so --resume can tell which were given): the help must show TrainConfig's."""
    sys.path.insert(0, str(ROOT))
    import train

    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "None" not in out
    d = TrainConfig()
    for flag, value in (("--steps", d.steps), ("--batch-size", d.batch_size), ("--lr", d.lr),
                        ("--ema-decay", d.ema_decay), ("--preset", d.preset)):
        assert flag in out and f"(default {value})" in out, flag
