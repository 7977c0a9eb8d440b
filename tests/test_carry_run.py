"""scripts/carry_run.py: a run packed into small parts, unpacked elsewhere, resumes as if it had never moved."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from ddpm.checkpoint import load_training_state
from ddpm.training import train

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("carry_run", ROOT / "scripts" / "carry_run.py")
carry_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(carry_run)


def _fake_run(folder: Path, state_bytes: int = 300_000) -> Path:
    folder.mkdir(parents=True)
    (folder / "training_state.pt").write_bytes(os.urandom(state_bytes))  # incompressible, like fp32 weights
    (folder / "train_config.json").write_text('{"steps": 7}\n')
    (folder / "log.jsonl").write_text('{"step": 5, "loss": 0.5}\n{"step": 7, "loss": 0.4}\n')
    (folder / "samples").mkdir()
    (folder / "samples" / "step_7.png").write_bytes(b"\x89PNG not needed to resume")
    return folder


def test_pack_cuts_small_parts_and_unpack_restores_every_file(tmp_path):
    run = _fake_run(tmp_path / "run")
    m = carry_run.pack(run, tmp_path / "carry", part_mib=0.1)
    parts = sorted((tmp_path / "carry").glob("part-*"))
    assert len(parts) == len(m["parts"]) >= 3 and m["step"] == 7
    assert all(p.stat().st_size <= int(0.1 * 2**20) for p in parts)
    assert sum(p.stat().st_size for p in parts) == m["bytes"]
    carry_run.unpack(tmp_path / "carry", tmp_path / "moved")
    for name in ("training_state.pt", "train_config.json", "log.jsonl"):
        assert (tmp_path / "moved" / name).read_bytes() == (run / name).read_bytes()
    assert not (tmp_path / "moved" / "samples").exists()
    # a run stopped by a signal between log lines: its checkpoint (config.json) is at a later step than the log
    (run / "config.json").write_text('{"training": {"steps": 9}}\n')
    assert carry_run.pack(run, tmp_path / "carry9", part_mib=0.1)["step"] == 9
    # packing again into the same folder replaces it: no part of the old pack is left beside fewer new ones
    (run / "training_state.pt").write_bytes(os.urandom(1000))
    m2 = carry_run.pack(run, tmp_path / "carry", part_mib=0.1)
    assert len(m2["parts"]) == 1 and sorted(p.name for p in (tmp_path / "carry").iterdir()) == ["MANIFEST.json", "part-000"]


def test_unpack_refuses_damaged_missing_or_foreign_parts_and_writes_nothing(tmp_path, capsys):
    carry_run.pack(_fake_run(tmp_path / "run"), tmp_path / "carry", part_mib=0.1)
    part = tmp_path / "carry" / "part-001"
    good = part.read_bytes()
    part.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(carry_run.CarryError, match="part-001 does not match MANIFEST.json"):
        carry_run.unpack(tmp_path / "carry", tmp_path / "moved")
    part.unlink()
    assert carry_run.main(["unpack", str(tmp_path / "carry"), str(tmp_path / "moved")]) == 2
    assert "part-001 is missing" in capsys.readouterr().err
    assert not (tmp_path / "moved").exists()
    with pytest.raises(carry_run.CarryError, match="no MANIFEST.json"):
        carry_run.unpack(tmp_path / "run", tmp_path / "moved")
    with pytest.raises(carry_run.CarryError, match="no training_state.pt"):
        carry_run.pack(tmp_path / "carry", tmp_path / "elsewhere")


def test_unpack_does_not_overwrite_a_training_state_unless_forced(tmp_path):
    carry_run.pack(_fake_run(tmp_path / "run"), tmp_path / "carry")
    other = _fake_run(tmp_path / "other", state_bytes=10)
    with pytest.raises(carry_run.CarryError, match="already holds a training state; pass --force"):
        carry_run.unpack(tmp_path / "carry", other)
    assert (other / "training_state.pt").stat().st_size == 10
    carry_run.unpack(tmp_path / "carry", other, force=True)
    assert (other / "training_state.pt").read_bytes() == (tmp_path / "run" / "training_state.pt").read_bytes()


def test_a_carried_run_resumes_to_the_weights_of_a_run_that_never_moved(tmp_path, synthetic_dataset,
                                                                         tiny_train_config_factory):
    kw = dict(batch_size=16, warmup_steps=5, log_every=5, checkpoint_every=1000)
    straight, first, moved = tmp_path / "straight", tmp_path / "first", tmp_path / "moved"
    train(tiny_train_config_factory(straight, steps=20, **kw), dataset=synthetic_dataset, progress=False)
    train(tiny_train_config_factory(first, steps=10, **kw), dataset=synthetic_dataset, progress=False)
    carry_run.pack(first, tmp_path / "carry", part_mib=0.05)
    assert json.loads((tmp_path / "carry" / "MANIFEST.json").read_text())["step"] == 10
    carry_run.unpack(tmp_path / "carry", moved)
    train(tiny_train_config_factory(moved, steps=20, **kw), dataset=synthetic_dataset, progress=False, resume=True)
    a, b = load_training_state(straight), load_training_state(moved)
    assert a["step"] == b["step"] == 20
    for k in a["ema"]:
        torch.testing.assert_close(a["ema"][k], b["ema"][k], atol=1e-6, rtol=1e-5, msg=k)
