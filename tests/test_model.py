"""The UNet: shapes, odd and non-square sizes, the time embedding's closed form, presets and config bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm.model import PRESETS, ModelConfig, UNet, count_parameters, preset_config, timestep_embedding


def randomize(model: UNet, seed: int = 0, std: float = 0.2) -> UNet:
    """Random weights everywhere: the zero-initialised output layer would otherwise make every output 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def three_level(num_classes: int | None = 3, **kw) -> ModelConfig:
    """A small 3-level config: sides are padded to a multiple of 4 internally; attention at levels 1 and 2."""
    base = dict(base_channels=8, channel_mult=(1, 2, 2), norm_groups=4, attention_levels=(1, 2), attention_head_dim=8,
                num_classes=num_classes)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_shape_equals_input_shape(size, channels, num_classes):
    for preset in ("tiny", "mini"):
        model = randomize(UNet(preset_config(preset, in_channels=channels, image_size=size, num_classes=num_classes)))
        x = torch.randn(2, channels, size, size)
        y = torch.tensor([3, num_classes]) if num_classes else None  # a real label and the null label
        out = model(x, torch.tensor([0, 999]), y)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
        assert out.abs().mean() > 1e-3  # not the zero map


@pytest.mark.parametrize("hw", [(30, 30), (27, 27), (13, 13), (28, 30), (30, 28), (13, 27)])
def test_odd_and_non_square_sizes(hw):
    model = randomize(UNet(three_level()))
    x = torch.randn(2, 1, *hw)
    out = model(x, torch.tensor([1, 500]), torch.tensor([0, 2]))
    assert out.shape == x.shape


def test_internal_padding_is_bottom_right_zero_padding():
    """Pixel (i, j) of the output belongs to pixel (i, j) of the input: padding is added after the image and cropped off."""
    model = randomize(UNet(three_level()))
    x = torch.randn(2, 1, 30, 27)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 3])
    padded = F.pad(x, (0, 1, 0, 2))  # (2, 1, 32, 28): multiples of 4, so no internal padding
    torch.testing.assert_close(model(x, t, y), model(padded, t, y)[:, :, :30, :27], atol=1e-5, rtol=1e-5)


def test_transposed_input_gives_transposed_output():
    """With every kernel symmetric, the network is equivariant to swapping H and W; any H/W mix-up
    (padding, reshapes in attention, cropping) breaks that on non-square inputs."""
    model = randomize(UNet(three_level()))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.transpose(-1, -2)) / 2)
    t, y = torch.tensor([5, 900]), torch.tensor([0, 2])
    for h, w in ((28, 20), (13, 27), (32, 32)):
        x = torch.randn(2, 1, h, w)
        out = model(x, t, y)
        out_t = model(x.transpose(-1, -2).contiguous(), t, y)
        assert out_t.shape == (2, 1, w, h)
        torch.testing.assert_close(out_t, out.transpose(-1, -2), atol=1e-5, rtol=1e-4)


def test_batch_items_are_independent():
    model = randomize(UNet(three_level()))
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 400, 999]), torch.tensor([0, 1, 3])
    batched = model(x, t, y)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], model(x[i : i + 1], t[i : i + 1], y[i : i + 1]), atol=1e-5, rtol=1e-4)


def test_labels_and_null_label():
    model = randomize(UNet(three_level(num_classes=3)))
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([100])
    outs = [model(x, t, torch.tensor([c])) for c in range(4)]  # 3 = the null label
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(outs[a], outs[b]), "the label must change the prediction"
    torch.testing.assert_close(model(x, t, None), outs[3])  # no labels = the null label
    unconditional = randomize(UNet(three_level(num_classes=None)))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, torch.tensor([0]))


def test_time_step_changes_the_prediction():
    model = randomize(UNet(three_level()))
    x = torch.randn(1, 1, 28, 28)
    assert not torch.allclose(model(x, torch.tensor([10]), None), model(x, torch.tensor([900]), None))


@pytest.mark.parametrize("dim", [8, 32, 33])
def test_sinusoidal_embedding_closed_form(dim):
    """Row b is [cos(t_b w_0), ..., cos(t_b w_{h-1}), sin(t_b w_0), ..., sin(t_b w_{h-1})], w_i = 10000^(-i/h)."""
    ts = [0, 1, 7, 250, 999]
    emb = timestep_embedding(torch.tensor(ts), dim)
    assert emb.shape == (len(ts), dim)
    half = dim // 2
    for b, t in enumerate(ts):  # every row from its own t: no mixing of rows
        for i in range(half):
            w = 10000.0 ** (-i / half)
            assert float(emb[b, i]) == pytest.approx(math.cos(t * w), abs=1e-4)
            assert float(emb[b, half + i]) == pytest.approx(math.sin(t * w), abs=1e-4)
        if dim % 2:
            assert float(emb[b, -1]) == 0.0
    # t = 0: cos = 1 everywhere, sin = 0 everywhere
    assert torch.equal(emb[0, :half], torch.ones(half)) and torch.equal(emb[0, half : 2 * half], torch.zeros(half))


def test_presets_sizes():
    counts = {name: count_parameters(UNet(preset_config(name))) for name in PRESETS}
    assert counts["tiny"] < 100_000
    assert 1_000_000 <= counts["small"] <= 3_000_000
    assert 3_500_000 <= counts["medium"] <= 5_000_000  # small's network with two residual blocks per level
    assert 6_000_000 <= counts["base"] <= 10_000_000
    assert counts["tiny"] < counts["mini"] < counts["small"] < counts["medium"] < counts["base"]
    assert preset_config("medium").num_res_blocks == 2 * preset_config("small").num_res_blocks
    rgb = count_parameters(UNet(preset_config("small", in_channels=3, image_size=32)))
    assert 1_000_000 <= rgb <= 3_000_000


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        preset_config("huge")


@pytest.mark.parametrize("kwargs", [
    dict(image_size=100_000),
    dict(image_size=2),
    dict(base_channels=1_000_000),
    dict(channel_mult=(1,) * 50),
    dict(channel_mult=(1, 2, 4096)),
    dict(num_res_blocks=10_000),
    dict(num_classes=10**9),
    dict(num_classes=0),
    dict(in_channels=7),
    dict(attention_levels=(5,)),
    dict(dropout=1.5),
    dict(base_channels=30, norm_groups=8),
])
def test_hostile_configs_are_refused(kwargs):
    with pytest.raises(ValueError, match="model config"):
        ModelConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_fields():
    cfg = preset_config("small", in_channels=3, image_size=32, num_classes=None)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    as_lists = {**cfg.to_dict(), "channel_mult": list(cfg.channel_mult)}  # what JSON gives back
    assert ModelConfig.from_dict(as_lists) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**cfg.to_dict(), "exec": "rm -rf /"})
