"""ddpm.registry: the models a server offers, loading only listed ones, falling back, and example images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import ddpm
from ddpm.registry import ModelRegistry, example_name, generated_examples, load_examples, local_checkpoints
from ddpm.studio import label_choices


def test_examples_shipped_and_generated(tiny_checkpoint, tmp_path):
    assert example_name("7_Sneaker") == "7 · Sneaker" and example_name("9_Ankle_boot") == "9 · Ankle boot"
    folder = tmp_path / "ckpt"
    (folder / "examples").mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(folder / "examples" / "1_Vertical.png")
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(folder / "examples" / "0_Horizontal.png")
    ex = load_examples(folder)
    assert [n for n, _ in ex] == ["0 · Horizontal", "1 · Vertical"]
    assert ex[0][1].shape == (28, 28, 3) and ex[1][1].shape == (28, 28, 1) and ex[1][1].max() == 200
    assert load_examples(tmp_path / "nowhere") == []
    pipe = ddpm.load(tiny_checkpoint)
    gen = generated_examples(pipe, steps=3)
    assert [n for n, _ in gen] == [f"{c} (generated)" for c in label_choices(pipe)]
    assert gen[0][1].shape == (12, 12, 1) and gen[0][1].dtype == np.uint8


def test_registry_loads_listed_sources_only_and_falls_back(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"format": "something-else"}))
    reg = ModelRegistry([str(broken), str(tiny_checkpoint)], cache_size=1)
    with pytest.raises(ValueError, match=r"unknown model '/etc'; choose one of"):
        reg.get("/etc")
    source, p, failures = reg.first_loadable([str(tmp_path / "missing"), str(broken)])
    assert source == str(tiny_checkpoint) and p.T == 1000
    assert set(failures) == {str(tmp_path / "missing"), str(broken)}
    assert "not a ddpm-studio checkpoint" in failures[str(broken)]
    assert reg.sources == [str(tiny_checkpoint)]  # failed sources are no longer offered
    assert reg.get(str(tiny_checkpoint)) is p  # cached
    names = [n for n, _ in reg.examples(str(tiny_checkpoint))]
    assert names  # shipped by training, or generated
    with pytest.raises(ValueError, match="no model could be loaded"):
        ModelRegistry([str(broken)]).first_loadable([str(broken)])


def test_the_cache_keeps_the_last_few_models(tiny_checkpoint, tmp_path):
    a, b = (str(shutil.copytree(tiny_checkpoint, tmp_path / name)) for name in ("a", "b"))
    reg = ModelRegistry([a, b, str(tiny_checkpoint)], cache_size=2)
    first, second = reg.get(a), reg.get(b)
    assert reg.get(a) is first  # both cached; a is now the last used
    reg.get(str(tiny_checkpoint))  # the least recently used, b, goes
    assert reg.get(a) is first and reg.get(b) is not second


def test_local_checkpoints(tmp_path, tiny_checkpoint):
    shutil.copytree(tiny_checkpoint, tmp_path / "b-model")
    (tmp_path / "a-empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert local_checkpoints(tmp_path) == [str(tmp_path / "b-model")]
    # an evaluation classifier beside the models is not a model to offer; a garbled config still is (its
    # load error is shown on the page)
    (tmp_path / "c-classifier").mkdir()
    (tmp_path / "c-classifier" / "config.json").write_text('{"format": "ddpm-studio-classifier", "format_version": 1}')
    (tmp_path / "d-garbled").mkdir()
    (tmp_path / "d-garbled" / "config.json").write_text("{not json")
    assert local_checkpoints(tmp_path) == [str(tmp_path / "b-model"), str(tmp_path / "d-garbled")]
    assert local_checkpoints(tmp_path / "missing") == []
