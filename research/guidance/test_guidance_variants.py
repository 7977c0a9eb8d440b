"""research/guidance/guidance_variants.py: each experimental guidance scheme against its closed form on a random
network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ddpm.model import UNet, preset_config
from ddpm.guidance import guided_eps_fn
from ddpm.schedule import NoiseSchedule, ScheduleConfig

T = 1000
spec = importlib.util.spec_from_file_location("guidance_variants", Path(__file__).with_name("guidance_variants.py"))
gv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gv)


def random_unet(seed: int) -> UNet:
    model = UNet(preset_config("tiny", image_size=8, num_classes=3))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=T))
    model, guide = random_unet(0), random_unet(1)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.full((4,), 500)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        c, u = model(x, t, labels), model(x, t, torch.full((4,), 3))
        g, gu = guide(x, t, labels), guide(x, t, torch.full((4,), 3))
    return dict(schedule=schedule, model=model, guide=guide, x=x, t=t, labels=labels, c=c, u=u, g=g, gu=gu)


def eps_of(s, variant: str) -> torch.Tensor:
    factory = gv.make_eps_fn_factory(gv.parse_variant(variant), s["schedule"], s["guide"])
    return factory(s["model"], s["labels"], cfg=2.0, null_label=3, T=T)(s["x"], s["t"])


def test_parse_variant_defaults_and_errors():
    assert gv.parse_variant("apg:2") == {"name": "apg", "w": 2.0, "param": 0.0, "interval": (0.0, 1.0)}
    assert gv.parse_variant("auto:2:1.5:0.2:0.8") == {"name": "auto", "w": 2.0, "param": 1.5, "interval": (0.2, 0.8)}
    assert gv.parse_variant("rescale:2")["param"] == 0.7
    for bad in ("foo:2", "cfg", "cfg:2:0:0.5", "cfg:2:0:0.8:0.2", "cfg:x"):
        with pytest.raises(ValueError):
            gv.parse_variant(bad)


def test_cfg_variant_is_the_librarys_cfg(setup):
    s = setup
    for w in (1.5, 3.0):
        lib = guided_eps_fn(s["model"], s["labels"], cfg=w, null_label=3, T=T)(s["x"], s["t"])
        torch.testing.assert_close(eps_of(s, f"cfg:{w}"), lib, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lib, s["u"] + w * (s["c"] - s["u"]), atol=1e-5, rtol=1e-4)


def test_variants_run_the_network_in_the_precision_the_sampler_asks_for(setup):
    """The factory gets the options' precision from the sampler (it once ran every variant in bf16 whatever that said,
    which a CPU without bf16 emulates ~10x slower)."""
    s = setup
    factory = gv.make_eps_fn_factory(gv.parse_variant("cfg:2"), s["schedule"], s["guide"])
    exact = s["u"] + 2.0 * (s["c"] - s["u"])
    fp32 = factory(s["model"], s["labels"], cfg=2.0, null_label=3, T=T, precision="fp32")(s["x"], s["t"])
    bf16 = factory(s["model"], s["labels"], cfg=2.0, null_label=3, T=T, precision="bf16")(s["x"], s["t"])
    torch.testing.assert_close(fp32, exact, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(bf16, exact, atol=1e-4, rtol=1e-4)  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(bf16, exact, atol=0.1 * exact.abs().max().item(), rtol=0.05)


def test_outside_the_interval_every_variant_is_plain_conditional(setup):
    s = setup
    for variant in ("cfg:3:0:0.2:0.4", "apg:3:0:0.2:0.4", "rescale:3:0.7:0.2:0.4", "lowpass:3:1:0.2:0.4"):
        torch.testing.assert_close(eps_of(s, variant), s["c"], atol=1e-5, rtol=1e-4)  # t/T = 0.5


def test_apg_splits_the_guidance_along_the_conditional_x0(setup):
    s = setup
    torch.testing.assert_close(eps_of(s, "apg:2.5:1"), s["c"] + 1.5 * (s["c"] - s["u"]), atol=1e-5, rtol=1e-4)
    update = (eps_of(s, "apg:2.5:0") - s["c"]).flatten(1)  # (w - 1) D_perp
    x0_c = s["schedule"].x0_from_eps(s["x"], s["t"], s["c"]).clamp(-1, 1).flatten(1)
    cos = (update * x0_c).sum(1) / (update.norm(dim=1) * x0_c.norm(dim=1))
    assert cos.abs().max() < 1e-5  # nothing left along x0_cond
    assert update.norm(dim=1).min() > 0


def test_rescale_matches_the_conditional_std(setup):
    s = setup
    sch = s["schedule"]
    cfg = s["c"] + 2.0 * (s["c"] - s["u"])
    torch.testing.assert_close(eps_of(s, "rescale:3:0"), cfg, atol=1e-4, rtol=1e-4)
    x0 = sch.x0_from_eps(s["x"], s["t"], eps_of(s, "rescale:3:1"))
    x0_c = sch.x0_from_eps(s["x"], s["t"], s["c"])
    torch.testing.assert_close(x0.flatten(1).std(1), x0_c.flatten(1).std(1), atol=1e-4, rtol=1e-4)


def test_autoguidance_closed_forms(setup):
    s = setup
    torch.testing.assert_close(eps_of(s, "auto:2"), s["g"] + 2 * (s["c"] - s["g"]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps_of(s, "auto:1"), s["c"], atol=1e-5, rtol=1e-4)  # w = 1: the model alone
    torch.testing.assert_close(eps_of(s, "auto:2:3:0:1"),
                               s["g"] + 2 * (s["c"] - s["g"]) + 2 * (s["c"] - s["u"]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps_of(s, "autou:1.5"), s["gu"] + 1.5 * (s["c"] - s["gu"]), atol=1e-5, rtol=1e-4)


def test_gaussian_blur_closed_forms():
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    out = gv.gaussian_blur(impulse, 1.5)
    assert abs(out.sum().item() - 1.0) < 1e-5  # mass kept (the impulse is far from the border)
    x = torch.arange(-3, 4, dtype=torch.float32)
    row = torch.exp(-0.5 * (x / 1.5) ** 2)
    row = row / torch.exp(-0.5 * (torch.arange(-5, 6, dtype=torch.float32) / 1.5) ** 2).sum()  # radius 3 sigma -> 5
    torch.testing.assert_close(out[0, 0, 10, 7:14], row * row[3], atol=1e-6, rtol=1e-5)  # separable product
    const = torch.full((2, 3, 9, 9), 0.7)
    torch.testing.assert_close(gv.gaussian_blur(const, 2.0), const)  # reflect padding keeps a constant
    assert gv.gaussian_blur(impulse, 0.0) is impulse


def test_lowpass_guidance_blurs_only_the_guidance_term(setup):
    s = setup
    d = s["c"] - s["u"]
    torch.testing.assert_close(eps_of(s, "lowpass:3:0"), s["c"] + 2.0 * d, atol=1e-5, rtol=1e-4)  # sigma 0: CFG
    torch.testing.assert_close(eps_of(s, "lowpass:3:1"), s["c"] + 2.0 * gv.gaussian_blur(d, 1.0), atol=1e-5, rtol=1e-4)
    assert gv.parse_variant("lowpass:2")["param"] == 1.5
    update = eps_of(s, "lowpass:3:1") - s["c"]
    # the blurred update has less pixel-to-pixel variation than the plain one
    tv = lambda z: (z[..., 1:, :] - z[..., :-1, :]).abs().mean() + (z[..., :, 1:] - z[..., :, :-1]).abs().mean()
    assert tv(update) < 0.8 * tv(2.0 * d)
