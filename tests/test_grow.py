"""ddpm.grow: a UNet grown to more residual blocks per level computes exactly what it did."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm.grow import grow
from ddpm.model import ModelConfig, UNet
from ddpm.training import train


def _last_logged_loss(run) -> float:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])["loss"]


def _trained_looking(config: ModelConfig, seed: int = 0) -> UNet:
    """A UNet with every weight random (a fresh one has its last layers at zero, which would hide wiring errors)."""
    torch.manual_seed(seed)
    model = UNet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


CONFIGS = [
    # (source network, blocks per level to grow to)
    (ModelConfig(image_size=12, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 norm_groups=4, attention_head_dim=8), 2),
    (ModelConfig(image_size=12, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(0, 2),
                 norm_groups=4, attention_head_dim=8, num_classes=None), 3),
    (ModelConfig(in_channels=3, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=2,
                 attention_levels=(), norm_groups=4), 3),
]


@pytest.mark.parametrize("config, blocks", CONFIGS)
def test_the_grown_network_computes_the_same_function(config, blocks):
    small = _trained_looking(config)
    big = grow(small, blocks).eval()
    assert big.config.num_res_blocks == blocks and len(big.down) > len(small.down) and len(big.up) > len(small.up)
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    y = None if config.num_classes is None else torch.tensor([0, 1, 2, 9, 10, 10])  # 10 = the null label
    with torch.no_grad():
        before, after = small(x, t, y), big(x, t, y)
    assert before.abs().mean() > 0.1  # a real output, not the zero of an untrained network
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_the_new_layers_learn_from_the_first_step():
    config, _ = CONFIGS[0]
    big = grow(_trained_looking(config), 2).train()
    x = torch.randn(4, 1, 12, 12)
    big(x, torch.tensor([1, 100, 500, 999]), torch.tensor([0, 1, 2, 3])).pow(2).mean().backward()
    new_down = big.down[1].conv2  # level 0's second block (no attention there) did not exist before
    assert new_down.weight.grad.abs().sum() > 0
    new_up = big.up[1]  # the first level's pass-through block
    assert new_up.res.conv2.weight.grad.abs().sum() > 0 and new_up.res.skip.weight.grad.abs().sum() > 0


def test_growing_to_as_many_or_fewer_blocks_is_refused():
    small = UNet(CONFIGS[0][0])
    with pytest.raises(ValueError, match="more residual blocks per level: the model has 1, asked for 1"):
        grow(small, 1)


def test_train_init_from_a_network_with_fewer_blocks_grows_it(tmp_path, synthetic_dataset, tiny_train_config_factory,
                                                              capsys):
    """--preset medium --init-from a small checkpoint: the run starts at the small model's loss, and its config
    records the growth; a network that differs otherwise is still refused."""
    small_run, grown = tmp_path / "small", tmp_path / "grown"
    kw = dict(batch_size=16, warmup_steps=2, log_every=1, checkpoint_every=1000)
    train(tiny_train_config_factory(small_run, steps=30, preset="small", **kw), dataset=synthetic_dataset,
          progress=False)
    losses = []
    train(tiny_train_config_factory(grown, steps=2, preset="medium", lr=1e-12, init_from=str(small_run), seed=5, **kw),
          dataset=synthetic_dataset, progress=False, on_step=lambda step, loss: losses.append(loss))
    assert f"starting from the weights of {small_run}, grown from 1 to 2 residual blocks per level" in \
        capsys.readouterr().err
    # resumed, the run says where it picks up, and where it once started from
    train(tiny_train_config_factory(grown, steps=3, preset="medium", lr=1e-12, init_from=str(small_run), seed=5, **kw),
          dataset=synthetic_dataset, progress=False, resume=True)
    err = capsys.readouterr().err
    assert f"resuming {grown} at step 2 of 3" in err and "starting from" not in err
    assert f"the run started from the weights of {small_run}, grown from 1 to 2" in err
    cfg = json.loads((grown / "config.json").read_text())
    assert cfg["model"]["num_res_blocks"] == 2
    assert cfg["training"]["init_from"]["grown_from"]["num_res_blocks"] == 1
    # the small run's last logged loss, on other batches: the same ballpark, far below an untrained network's 1.0
    assert losses[0] == pytest.approx(_last_logged_loss(small_run), rel=0.6) and losses[0] < 0.6
    with pytest.raises(ValueError, match="fewer residual blocks per level is grown"):
        train(tiny_train_config_factory(tmp_path / "x", steps=1, preset="mini", init_from=str(small_run), **kw),
              dataset=synthetic_dataset, progress=False)


def test_growing_leaves_the_source_and_the_global_rng_alone():
    config, _ = CONFIGS[0]
    small = _trained_looking(config).to(torch.bfloat16)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = grow(small, 2, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, before[k]) for k, v in small.state_dict().items())
    assert all(p.dtype == torch.float32 for p in a.parameters())
    b, c = grow(small, 2, seed=7), grow(small, 2, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
