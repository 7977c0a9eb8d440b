"""A checkpoint that recommends one guidance scale per class (config.json "sampling": {"class_cfg": [...]}), as
the checkpoint format, the export CLI, the sampling and evaluation CLIs, the app and the model card use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import app
import ddpm
from ddpm import handlers
from ddpm.card import model_card
from ddpm.checkpoint import CheckpointError, load_config
from ddpm.export import main as export_main
from ddpm.images import to_uint8
from ddpm.registry import ModelRegistry
from ddpm.sample import main as sample_main
from ddpm.studio import CLASS_SCALE_JS, class_scales, label_choices, parse_label
from tests.test_app_browser import CHROMIUM, CHROMIUM_ARGS

PER_CLASS = [0.5, 3.0, 1.5]  # Horizontal, Vertical, Square (the tiny model's classes)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def per_class(tiny_checkpoint: Path, tmp_path: Path, with_sampling) -> Path:
    return with_sampling(tiny_checkpoint, tmp_path / "checkpoints" / "per-class", {"cfg": 2.0, "class_cfg": PER_CLASS})


def test_the_recommended_scale_of_each_class(per_class: Path, tiny_checkpoint: Path):
    rec = ddpm.load(per_class).recommended
    assert [rec.cfg_for(c) for c in range(3)] == PER_CLASS
    assert rec.cfg_for(None) == 2.0  # no class: the single scale
    plain = load_config(tiny_checkpoint).sampling
    assert plain.class_cfg is None and plain.cfg_for(1) == plain.cfg_for(None) == plain.cfg


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 2.0], [1.0, "2", 3.0],
                                 [1.0, True, 2.0], [1.0, float("nan"), 2.0], 2.0, []])
def test_a_bad_per_class_recommendation_is_a_clear_checkpoint_error(tiny_checkpoint: Path, tmp_path: Path,
                                                                       with_sampling, bad):
    folder = with_sampling(tiny_checkpoint, tmp_path / "bad", {"class_cfg": bad})
    with pytest.raises(CheckpointError, match=r'"sampling" is invalid: class_cfg (needs one guidance scale per class: '
                                              r"3 classes|must be a sequence of finite guidance scales >= 0)"):
        load_config(folder)


def test_export_writes_the_per_class_recommendation_and_the_card_states_it(tiny_checkpoint: Path, tmp_path: Path,
                                                                           capsys):
    dst = tmp_path / "exported"
    assert export_main([str(tiny_checkpoint), str(dst), "--class-cfg", *map(str, PER_CLASS)]) == 0
    sampling = json.loads((dst / "config.json").read_text())["sampling"]
    assert sampling["class_cfg"] == PER_CLASS and sampling["cfg"] == load_config(tiny_checkpoint).sampling.cfg
    card = model_card(dst)
    assert "CFG per class (Horizontal 0.5, Vertical 3, Square 1.5)" in card  # SamplerOptions.describe

    assert export_main([str(tiny_checkpoint), str(tmp_path / "two"), "--class-cfg", "1", "2"]) == 2
    assert "class_cfg needs one guidance scale per class: 3 classes, got 2 scales" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()  # nothing half-written


def test_sample_cli_guides_each_class_at_its_scale_unless_told_otherwise(per_class: Path, tmp_path: Path, capsys):
    def images(*flags: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert sample_main(["--checkpoint", str(per_class), "--label", "all", "--n", "2", "--steps", "8",
                            "--seed", "4", "--out", str(out), *flags]) == 0
        return np.load(out)["images"]

    pipe = ddpm.load(per_class)
    labels = [0, 0, 1, 1, 2, 2]
    per_image = to_uint8(pipe.sample(labels, seed=4, steps=8, class_cfg=PER_CLASS))
    assert np.array_equal(images(), per_image)
    for c, w in enumerate(PER_CLASS):  # the same as running each class alone at its own scale
        alone = to_uint8(pipe.sample([c, c], seed=4 + 2 * c, steps=8, cfg=w))
        assert np.array_equal(per_image[2 * c:2 * c + 2], alone)
    uniform = images("--cfg", "2")
    assert np.array_equal(uniform, to_uint8(pipe.sample(labels, seed=4, steps=8, cfg=2.0)))
    assert not np.array_equal(uniform, per_image)
    assert np.array_equal(images("--class-cfg", "2", "2", "2"), uniform)
    out = tmp_path / "both.npz"
    assert sample_main(["--checkpoint", str(per_class), "--cfg", "2", "--class-cfg", "1", "2", "3",
                        "--out", str(out)]) == 2
    assert "give --cfg or --class-cfg, not both" in capsys.readouterr().err


def test_the_app_moves_the_cfg_slider_to_the_chosen_class(per_class: Path, tiny_checkpoint: Path, tmp_path: Path):
    import gradio as gr

    def slider(demo: gr.Blocks) -> gr.Slider:
        return next(b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "CFG scale (guidance)")

    demo = app.build_demo(str(per_class), checkpoints_dir=str(tmp_path / "none"))
    assert slider(demo).value == PER_CLASS[0] and "scale per class" in slider(demo).info  # the dropdown starts at 0
    # the browser moves the slider (CLASS_SCALE_JS) from the scales the page holds
    scales = next(b for b in demo.blocks.values() if isinstance(b, gr.JSON) and not b.visible)
    assert scales.value == {"names": ["horizontal", "vertical", "square"], "scales": PER_CLASS}
    assert not slider(app.build_demo(str(tiny_checkpoint), checkpoints_dir=str(tmp_path / "none"))).info

    # switching models: the page takes the new model's scales, or none (one scale: the person's w stays)
    registry = ModelRegistry([str(tiny_checkpoint), str(per_class)])
    view = handlers.select_model(registry, str(per_class), fallback=str(tiny_checkpoint))
    assert view.cfg == PER_CLASS[0] and "scale per class" in view.cfg_info and view.class_scales["scales"] == PER_CLASS
    view = handlers.select_model(registry, str(tiny_checkpoint), fallback=str(tiny_checkpoint))
    assert view.cfg_info == "" and view.class_scales is None  # "" clears the previous model's note


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_browser_reads_a_label_as_the_server_does(per_class: Path):
    """CLASS_SCALE_JS, run in Chromium, picks the scale of the class studio.parse_label reads from each label."""
    from playwright.sync_api import sync_playwright

    pipe = ddpm.load(per_class)
    rec = class_scales(pipe, pipe.recommended)
    labels = [*label_choices(pipe), "Square", "vertical", " 2 ", "1", "0 · anything", "no such class", "7", "-1", "",
              None]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            got = page.evaluate(f"([labels, rec]) => labels.map(l => ({CLASS_SCALE_JS})(l, rec, -1))", [labels, rec])
            unconditional = page.evaluate(f"() => ({CLASS_SCALE_JS})('1', null, 2.5)")
        finally:
            browser.close()

    def server(label):
        try:
            return PER_CLASS[parse_label(pipe, label)]
        except ValueError:
            return -1  # not a class: the slider keeps its value

    assert got == [server(label) for label in labels]
    assert got[:3] == PER_CLASS and got.count(-1) == 5
    assert unconditional == 2.5
