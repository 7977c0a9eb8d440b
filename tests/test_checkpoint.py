"""Checkpoint folders: round trips, fp16 weights, and a clear CheckpointError for every kind of broken folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ddpm
from ddpm.options import SamplerOptions
from ddpm.checkpoint import (
    CONFIG_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointConfig,
    CheckpointError,
    load_config,
    load_model,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from ddpm.model import UNet, preset_config
from ddpm.schedule import ScheduleConfig


def random_model(num_classes: int | None = 3, seed: int = 0) -> UNet:
    model = UNet(preset_config("tiny", image_size=12, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def config_for(model: UNet, **kw) -> CheckpointConfig:
    names = tuple(f"class {i}" for i in range(model.config.num_classes)) if model.config.num_classes else None
    return CheckpointConfig(model=model.config, schedule=ScheduleConfig(name="cosine", timesteps=500), dataset="synthetic",
                            class_names=names, **kw)


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, UNet]:
    model = random_model()
    save_checkpoint(tmp_path / "ck", model, config_for(model, sampling={"sampler": "ddim", "steps": 20, "cfg": 2.0}))
    return tmp_path / "ck", model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 12, 12, generator=g), torch.tensor([0, 250, 499]), torch.tensor([0, 2, 3])


def test_round_trip_same_outputs(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left
    loaded, config = load_model(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x, t, y = _inputs()
    with torch.no_grad():  # the same weights in channels-last layout: equal up to float rounding
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)
    assert config.model == model.config
    assert config.schedule == ScheduleConfig(name="cosine", timesteps=500)
    assert config.class_names == ("class 0", "class 1", "class 2")
    assert config.sampling == SamplerOptions(sampler="ddim", steps=20, cfg=2.0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_config_json_describes_itself(saved):
    folder, model = saved
    d = json.loads((folder / CONFIG_NAME).read_text())
    assert d["format"] == "ddpm-studio" and d["format_version"] == 1 and d["library_version"] == ddpm.__version__
    assert d["data"] == {"dataset": "synthetic", "class_names": ["class 0", "class 1", "class 2"], "image_size": 12,
                         "channels": 1}
    assert d["model"]["base_channels"] == model.config.base_channels
    assert CheckpointConfig.from_dict(d) == load_config(folder)


def test_pipeline_loads_the_same_weights(saved):
    folder, model = saved
    pipe = ddpm.load(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(pipe.model.state_dict()[k], v), k
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)
    assert pipe.T == 500 and pipe.image_shape == (1, 12, 12)


def test_on_a_cpu_without_bf16_the_convolutions_run_channels_last_and_save_plain(saved, tmp_path, monkeypatch):
    import ddpm.device

    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: False)
    folder, model = saved
    loaded, config = load_model(folder)
    convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)  # really NHWC, not only 1x1 kernels
    x, t, y = _inputs()
    with torch.no_grad():  # activations follow the weights' layout
        assert loaded.stem(x).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)
    save_checkpoint(tmp_path / "again", loaded, config)  # safetensors wants contiguous tensors: still saves
    assert (tmp_path / "again" / WEIGHTS_NAME).read_bytes() == (folder / WEIGHTS_NAME).read_bytes()


def test_on_a_cpu_with_bf16_the_weights_stay_nchw(saved, monkeypatch):
    """bf16 autocast's convolutions ran slower in channels-last (0.95x on the app's grid), so such a CPU keeps NCHW."""
    import ddpm.device

    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: True)
    folder, model = saved
    loaded, _ = load_model(folder)
    convs = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous() for c in convs)
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x, _, _ = _inputs()
    with torch.no_grad():
        assert loaded.stem(x).is_contiguous()


def test_fp16_weights(tmp_path):
    model = random_model()
    save_checkpoint(tmp_path, model, config_for(model), dtype="fp16")
    with safe_open(str(tmp_path / WEIGHTS_NAME), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    fp32_size = sum(p.numel() * 4 for p in model.state_dict().values())
    assert (tmp_path / WEIGHTS_NAME).stat().st_size < 0.6 * fp32_size
    loaded, _ = load_model(tmp_path)
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[k], v.half().float())
    x, t, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=2e-2, rtol=2e-2)


def test_unknown_weight_dtype(tmp_path):
    model = random_model()
    with pytest.raises(ValueError, match="fp8.*fp32"):
        save_checkpoint(tmp_path, model, config_for(model), dtype="fp8")


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_config(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not found"):
        ddpm.load(tmp_path / "nope")


def test_missing_config(saved):
    folder, _ = saved
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        ddpm.load(folder)


def test_missing_weights(saved):
    folder, _ = saved
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        ddpm.load(folder)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_corrupt_weights(saved, content):
    folder, _ = saved
    (folder / WEIGHTS_NAME).write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ddpm.load(folder)


def test_truncated_weights(saved):
    folder, _ = saved
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ddpm.load(folder)


def test_corrupt_config_json(saved):
    folder, _ = saved
    (folder / CONFIG_NAME).write_text("{ this is not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ddpm.load(folder)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_format_version(saved, version):
    folder, _ = saved
    d = json.loads((folder / CONFIG_NAME).read_text())
    d["format_version"] = version
    (folder / CONFIG_NAME).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="format_version"):
        ddpm.load(folder)


def test_not_our_format(saved):
    folder, _ = saved
    (folder / CONFIG_NAME).write_text(json.dumps({"_class_name": "UNet2DModel"}))  # e.g. a diffusers folder
    with pytest.raises(CheckpointError, match="not a ddpm-studio checkpoint"):
        ddpm.load(folder)


@pytest.mark.parametrize("change", [{"base_channels": 16}, {"channel_mult": [1, 2, 2]}, {"num_classes": 5},
                                    {"num_res_blocks": 2}])
def test_weights_that_do_not_fit_the_config(saved, change):
    folder, _ = saved
    d = json.loads((folder / CONFIG_NAME).read_text())
    d["model"].update(change)
    if "num_classes" in change:
        d["data"]["class_names"] = None
    (folder / CONFIG_NAME).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        ddpm.load(folder)


def test_weights_with_nan_or_inf_are_refused(nan_checkpoint: Path):
    name = sorted(load_file(nan_checkpoint / "model.safetensors"))[1]  # the tensor nan_checkpoint broke
    message = f"tensor {name!r} has 3 NaN / inf values; the weights are broken"
    with pytest.raises(CheckpointError, match=re.escape(f"{nan_checkpoint / 'model.safetensors'}: {message}")):
        ddpm.load(nan_checkpoint)


def test_extra_and_missing_tensors(saved):
    folder, model = saved
    tensors = dict(model.state_dict())
    tensors["surprise.weight"] = torch.zeros(2)
    del tensors["stem.weight"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="missing: stem.weight.*unexpected: surprise.weight"):
        ddpm.load(folder)


@pytest.mark.parametrize("change", [{"image_size": 10**6}, {"exec": "import os"}, {"base_channels": "lots"}])
def test_hostile_model_config(saved, change):
    folder, _ = saved
    d = json.loads((folder / CONFIG_NAME).read_text())
    d["model"].update(change)
    (folder / CONFIG_NAME).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="invalid"):
        ddpm.load(folder)


def test_class_names_must_match_num_classes():
    model = random_model()
    with pytest.raises(CheckpointError, match="2 class names"):
        CheckpointConfig(model=model.config, schedule=ScheduleConfig(), class_names=("a", "b"))


def test_recommended_sampling_fills_in_the_defaults(saved):
    """config.json's "sampling" is a SamplerOptions: what it leaves out takes the dataclass's defaults; it survives a
    save/load round trip; an unknown key or a bad value is a CheckpointError naming it."""
    folder, model = saved
    config = config_for(model, sampling={"cfg": 2.0, "guidance_interval": [0.2, 0.8]})
    assert config.sampling == SamplerOptions(cfg=2.0, guidance_interval=(0.2, 0.8))
    assert SamplerOptions().cfg == 3.0 and SamplerOptions().sampler == "ddim"  # the documented fallbacks
    assert config_for(model).sampling == SamplerOptions()
    save_checkpoint(folder, model, config)
    assert ddpm.load(folder).recommended.guidance_interval == (0.2, 0.8)
    assert json.loads((folder / CONFIG_NAME).read_text())["sampling"]["guidance_interval"] == [0.2, 0.8]
    with pytest.raises(CheckpointError, match="unknown sampling setting 'comment'"):
        config_for(model, sampling={"cfg": 2.0, "comment": "not a setting"})
    with pytest.raises(CheckpointError, match="steps must be an integer in 1..500"):
        config_for(model, sampling={"steps": 501})


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("bad", [[0.7, 0.2], [0.1], [-0.1, 0.5], [0.1, 1.5], ["a", "b"], "0.1..0.5", [True, 1]])
def test_a_bad_recommendation_is_a_clear_checkpoint_error(tiny_checkpoint: Path, tmp_path: Path, with_sampling, bad):
    folder = with_sampling(tiny_checkpoint, tmp_path / "bad", {"guidance_interval": bad})
    with pytest.raises(CheckpointError, match=r"guidance_interval must be \(lo, hi\) with 0 <= lo <= hi <= 1"):
        load_config(folder)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 2.0], [1.0, "2", 3.0],
                                 [1.0, True, 2.0], [1.0, float("nan"), 2.0], 2.0, []])
def test_a_bad_per_class_recommendation_is_a_clear_checkpoint_error(tiny_checkpoint: Path, tmp_path: Path,
                                                                       with_sampling, bad):
    folder = with_sampling(tiny_checkpoint, tmp_path / "bad", {"class_cfg": bad})
    with pytest.raises(CheckpointError, match=r'"sampling" is invalid: class_cfg (needs one guidance scale per class: '
                                              r"3 classes|must be a sequence of finite guidance scales >= 0)"):
        load_config(folder)


def test_training_state_round_trip(tmp_path):
    model = random_model()
    state = {"model": model.state_dict(), "step": 7, "torch_rng": torch.get_rng_state(), "model_config": "{}"}
    save_training_state(tmp_path, state)
    loaded = load_training_state(tmp_path)
    assert loaded["step"] == 7
    assert all(torch.equal(loaded["model"][k], v) for k, v in model.state_dict().items())


class Payload:
    """A custom class: a weights_only load must refuse to build it."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code!",))


def test_training_state_refuses_pickled_objects(tmp_path, capsys):
    torch.save({"step": 1, "evil": Payload()}, tmp_path / STATE_NAME)
    with pytest.raises(CheckpointError, match="cannot be loaded as a training state"):
        load_training_state(tmp_path)
    assert "unpickled" not in capsys.readouterr().out


def test_missing_training_state(tmp_path):
    with pytest.raises(CheckpointError, match="training_state.pt"):
        load_training_state(tmp_path)


def test_unconditional_round_trip(tmp_path):
    model = random_model(num_classes=None)
    save_checkpoint(tmp_path, model, config_for(model))
    pipe = ddpm.load(tmp_path)
    assert not pipe.conditional and pipe.class_names is None
    x, t, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, t), model(x, t), atol=1e-5, rtol=1e-5)
