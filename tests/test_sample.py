"""python -m ddpm.sample on the tiny checkpoint: grid PNG, raw .npz, the trajectory GIF, one-line errors, and the
checkpoint's recommended settings (a guidance interval, per-class scales) unless flags say otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ddpm
from conftest import INTERVAL, PER_CLASS
from ddpm.frames import GAP
from ddpm.images import to_uint8
from ddpm.sample import main

ROOT = Path(__file__).resolve().parents[1]
TINY = 12  # the tiny checkpoint's image side


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ddpm.sample", *args, "--threads", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def grid_side(n: int, pad: int = 2) -> int:
    return n * TINY + (n + 1) * pad


@pytest.mark.slow
def test_grid_of_every_class(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    r = run_cli("--checkpoint", str(tiny_checkpoint), "--label", "all", "--n", "2", "--steps", "5", "--scale", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    img = Image.open(out)
    assert img.size == (grid_side(2), grid_side(3))  # one row of 2 per class, 3 classes
    assert img.mode == "L"


@pytest.mark.slow
def test_npz_and_gif_match_the_python_api(tiny_checkpoint, tmp_path):
    npz, gif = tmp_path / "s.npz", tmp_path / "t.gif"
    r = run_cli("--checkpoint", str(tiny_checkpoint), "--label", "vertical", "--n", "3", "--sampler", "ddpm",
                "--steps", "8", "--cfg", "2", "--seed", "5", "--out", str(npz), "--gif", str(gif), "--frames", "5")
    assert r.returncode == 0, r.stderr
    data = np.load(npz)
    assert data["images"].shape == (3, TINY, TINY, 1) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [1, 1, 1]
    assert data["seeds"].tolist() == [5, 6, 7]
    assert data["class_names"].tolist() == ["Horizontal", "Vertical", "Square"]
    expected = to_uint8(ddpm.load(tiny_checkpoint).sample(labels=[1] * 3, sampler="ddpm", steps=8, cfg=2.0, seed=5))
    assert np.abs(data["images"].astype(int) - expected.astype(int)).max() <= 2
    with Image.open(gif) as anim:
        assert anim.n_frames == 5
        side = grid_side(2)  # 3 images -> 2 per row, 2 rows
        assert anim.size == ((2 * side + GAP) * 2, side * 2)  # x_t | x0_pred, default scale 2


@pytest.mark.slow
def test_redraws_give_what_the_python_api_gives(tiny_checkpoint, tmp_path):
    pipe = ddpm.load(tiny_checkpoint)
    kw = dict(steps=5, cfg=1.0, sampler="ddim")
    # a seed where the (barely trained) tiny model redraws some of the 4 images
    seed = next(s for s in range(50) if [st.draw for st in pipe.stream([2] * 4, seed=s, redraws=2, **kw)][-1] > 0)
    npz = tmp_path / "r.npz"
    r = run_cli("--checkpoint", str(tiny_checkpoint), "--label", "square", "--n", "4", "--steps", "5", "--cfg", "1",
                "--sampler", "ddim", "--seed", str(seed), "--redraws", "2", "--out", str(npz))
    assert r.returncode == 0, r.stderr
    got = np.load(npz)["images"].astype(int)
    expected = to_uint8(pipe.sample(labels=[2] * 4, seed=seed, redraws=2, **kw)).astype(int)
    plain = to_uint8(pipe.sample(labels=[2] * 4, seed=seed, **kw)).astype(int)
    assert np.abs(got - expected).max() <= 2 and np.abs(got - plain).max() > 2


@pytest.mark.slow
def test_bad_label_is_one_line_exit_2(tiny_checkpoint, tmp_path):
    r = run_cli("--checkpoint", str(tiny_checkpoint), "--label", "Sneaker", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "unknown class 'Sneaker'; classes are Horizontal, Vertical, Square" in r.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "steps must be an integer in 1..1000, got 0"),
    (["--steps", "1001"], "steps must be an integer in 1..1000"),
    (["--label", "3"], "label 3 is out of range; use a class index 0..2"),
    (["--cfg", "-1"], "cfg (guidance scale) must be a finite number >= 0"),
    (["--sampler", "euler"], "invalid choice: 'euler'"),
    (["--sampler", "ddpm", "--steps", "20", "--variance", "beta"], "variance='beta' is only allowed with all 1000 steps"),
    (["--eta", "3"], "eta must be a number in 0..1"),
    (["--seed", "-1"], "seed must be an integer in 0.."),
    (["--n", "0"], "--n must be in 1..10000"),
    (["--out", "samples.txt"], "use a .npz file or an image"),
    (["--gif", "anim.mp4"], "must end in .gif"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--device", "quantum"], "unknown device 'quantum'"),
    (["--steps", "many"], "invalid int value: 'many'"),
    (["--redraws", "9"], "redraws must be an integer in 0..5"),
    (["--strength", "0.5"], "need an input image: add --init IMAGE"),
    (["--init", "missing.png"], "the input image 'missing.png' does not exist"),
    (["--init", "README.md"], "is not a readable image"),
    (["--init", "docs/app.png", "--strength", "2"], "strength must be a number in [0, 1]"),
    (["--init", "docs/app.png", "--mask", "checkpoints/fashion-mnist/samples.png"], "the mask is"),
])
def test_bad_input_messages(tiny_checkpoint, tmp_path, capsys, args, message):
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o.png"), *args]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_missing_or_broken_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_defaults_come_from_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = {"sampler": "ddpm", "steps": 3, "cfg": 1.5}
    (folder / "config.json").write_text(json.dumps(config))
    gif = tmp_path / "t.gif"
    assert main(["--checkpoint", str(folder), "--label", "0", "--n", "1", "--out", str(tmp_path / "g.png"),
                 "--gif", str(gif), "--frames", "50"]) == 0
    with Image.open(gif) as anim:
        assert anim.n_frames == 3  # the recommended 3 steps, every one a frame


def test_spacing_from_the_flag_or_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    import ddpm
    import ddpm.images

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["sampling"] = {"sampler": "ddim", "steps": 5, "cfg": 2.0, "spacing": 2.0}
    (folder / "config.json").write_text(json.dumps(config))
    common = ["--checkpoint", str(folder), "--label", "1", "--n", "2"]
    assert main(common + ["--out", str(tmp_path / "rec.npz")]) == 0
    assert main(common + ["--spacing", "1", "--out", str(tmp_path / "even.npz")]) == 0
    pipe = ddpm.load(folder)
    for name, spacing in (("rec", 2.0), ("even", 1.0)):
        expected = pipe.sample([1, 1], steps=5, cfg=2.0, spacing=spacing, seed=0)
        got = np.load(tmp_path / f"{name}.npz")["images"].astype(int)
        assert np.abs(got - ddpm.images.to_uint8(expected).astype(int)).max() <= 1
    assert main(common + ["--spacing", "0.5", "--out", str(tmp_path / "bad.npz")]) == 2
    assert "spacing must be a number in 1..4" in capsys.readouterr().err


def test_default_is_every_class_8_per_row(tiny_checkpoint, tmp_path):
    out = tmp_path / "all.png"
    assert main(["--checkpoint", str(tiny_checkpoint), "--steps", "2", "--scale", "3", "--out", str(out)]) == 0
    assert Image.open(out).size == (grid_side(8) * 3, grid_side(3) * 3)


def test_bf16_precision(tiny_checkpoint, tmp_path):
    out = tmp_path / "b.npz"
    assert main(["--checkpoint", str(tiny_checkpoint), "--label", "Square", "--n", "2", "--steps", "4",
                 "--precision", "bf16", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (2, TINY, TINY, 1)


def test_unconditional_checkpoint_refuses_label(tmp_path, capsys):
    from ddpm.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm.model import UNet, preset_config
    from ddpm.schedule import ScheduleConfig

    model = UNet(preset_config("tiny", image_size=8, num_classes=None))
    save_checkpoint(tmp_path / "u", model, CheckpointConfig(model=model.config, schedule=ScheduleConfig(timesteps=20)))
    assert main(["--checkpoint", str(tmp_path / "u"), "--label", "1", "--out", str(tmp_path / "u.png")]) == 2
    assert "unconditional; drop --label" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "u"), "--n", "3", "--steps", "2", "--out", str(tmp_path / "u.npz")]) == 0
    data = np.load(tmp_path / "u.npz")
    assert data["images"].shape == (3, 8, 8, 1) and data["labels"].tolist() == [-1, -1, -1]
    assert "class_names" not in data


# -- a checkpoint's recommended guidance interval and per-class scales ----------------------------------
@pytest.mark.usefixtures("one_thread")
def test_sample_cli_uses_the_recommendation_unless_told_otherwise(interval_checkpoint: Path, tmp_path: Path):
    def images(*flags: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert main(["--checkpoint", str(interval_checkpoint), "--label", "1", "--n", "1", "--steps", "10",
                     "--seed", "2", "--out", str(out), *flags]) == 0
        return np.load(out)["images"]

    pipe = ddpm.load(interval_checkpoint)
    expect = lambda **kw: to_uint8(pipe.sample([1], seed=2, steps=10, **kw))  # noqa: E731
    assert np.array_equal(images(), expect(guidance_interval=INTERVAL))
    assert np.array_equal(images("--full-guidance"), expect(guidance_interval=None))
    assert np.array_equal(images("--guidance-interval", "0", "0.5"), expect(guidance_interval=(0.0, 0.5)))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sample_cli_guides_each_class_at_its_scale_unless_told_otherwise(per_class: Path, tmp_path: Path, capsys):
    def images(*flags: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert main(["--checkpoint", str(per_class), "--label", "all", "--n", "2", "--steps", "8",
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
    assert main(["--checkpoint", str(per_class), "--cfg", "2", "--class-cfg", "1", "2", "3",
                 "--out", str(out)]) == 2
    assert "give --cfg or --class-cfg, not both" in capsys.readouterr().err


def test_bounded_batches_give_the_images_of_one_batch(tiny_checkpoint, tmp_path, capsys):
    """--batch-size splits the run (memory flat in --n); image i keeps its seed, so the images are the same up to
    float rounding between batch sizes; a GIF animates one batch only and says so."""
    def images(*flags: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        assert main(["--checkpoint", str(tiny_checkpoint), "--label", "all", "--n", "3", "--steps", "4", "--seed", "2",
                     "--out", str(out), *flags]) == 0
        return np.load(out)

    whole, split = images("--batch-size", "9"), images("--batch-size", "2")
    assert split["labels"].tolist() == whole["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert split["seeds"].tolist() == list(range(2, 11))
    assert np.abs(split["images"].astype(int) - whole["images"].astype(int)).max() <= 2
    assert main(["--checkpoint", str(tiny_checkpoint), "--n", "3", "--batch-size", "2", "--out",
                 str(tmp_path / "g.png"), "--gif", str(tmp_path / "g.gif")]) == 2
    assert "--gif animates one batch: 9 images need --batch-size 9 or more" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_checkpoint), "--batch-size", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "--batch-size must be in 1..10000, got 0" in capsys.readouterr().err


def test_image_to_image_and_inpainting_give_what_the_python_api_gives(tiny_checkpoint, tmp_path, capsys):
    """--init/--strength and --mask are pipe.edit + pipe.stream(edit=...); the conversion is reported on stderr."""
    src, hole = tmp_path / "in.png", tmp_path / "hole.png"
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]  # a red ramp
    Image.fromarray(rgb).save(src)
    mask = np.zeros((24, 24), np.uint8)
    mask[:, 12:] = 255
    Image.fromarray(mask).save(hole)
    pipe = ddpm.load(tiny_checkpoint)
    common = ["--checkpoint", str(tiny_checkpoint), "--label", "Square", "--n", "2", "--sampler", "ddim", "--steps", "10",
              "--seed", "3", "--threads", "1"]
    assert main([*common, "--init", str(src), "--strength", "0.5", "--out", str(tmp_path / "a.npz")]) == 0
    err = capsys.readouterr().err
    assert "converted colour to grayscale" in err and "resized 24x24 to the model's 12x12" in err
    want = pipe.sample(["Square"] * 2, seed=3, sampler="ddim", steps=10, init=src, strength=0.5)
    assert np.abs(np.load(tmp_path / "a.npz")["images"].astype(int) - to_uint8(want).astype(int)).max() <= 1
    assert main([*common, "--init", str(src), "--mask", str(hole), "--out", str(tmp_path / "b.npz")]) == 0
    got = np.load(tmp_path / "b.npz")["images"]
    known = to_uint8(pipe.edit(src).init)[0]
    assert np.array_equal(got[:, :, :6], np.broadcast_to(known[:, :6], (2, 12, 6, 1)))
