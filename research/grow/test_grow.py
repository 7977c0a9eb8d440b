"""research/grow: a UNet grown to more residual blocks per level computes exactly what it did.

    python -m pytest research/grow
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for `import ddpm`
sys.path.insert(0, str(HERE))  # for `import grow`

from ddpm.checkpoint import CheckpointConfig, load_model, save_checkpoint  # noqa: E402
from ddpm.data import ImageDataset  # noqa: E402
from ddpm.model import ModelConfig, UNet, preset_config  # noqa: E402
from ddpm.schedule import NoiseSchedule, ScheduleConfig  # noqa: E402
from ddpm.train_config import TrainConfig  # noqa: E402
from ddpm.train_step import BatchSampler, diffusion_loss, make_global_batch  # noqa: E402
from ddpm.training import train  # noqa: E402
from grow import grow, grow_checkpoint  # noqa: E402


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


def _dataset(n: int = 32, size: int = 12) -> ImageDataset:
    """Three classes of noise images (uint8, (n, 1, size, size)); the content does not matter here."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return ImageDataset("synthetic", images, torch.arange(n) % 3, ("a", "b", "c"))


def test_a_grown_checkpoint_starts_a_medium_run_at_the_small_models_loss(tmp_path):
    """The way it was used: a `small` checkpoint grown to `medium` and trained with train.py --init-from."""
    data = _dataset()
    small_cfg = preset_config("small", in_channels=1, image_size=12, num_classes=3)
    schedule = NoiseSchedule(ScheduleConfig(name="cosine", timesteps=1000))
    small_dir, grown_dir = tmp_path / "small", tmp_path / "grown"
    save_checkpoint(small_dir, _trained_looking(small_cfg),
                    CheckpointConfig(model=small_cfg, schedule=schedule.config, dataset="synthetic",
                                     class_names=data.class_names, training={"steps": 7, "images_seen": 70}))
    grow_checkpoint(small_dir, grown_dir, 2)
    grown_cfg = json.loads((grown_dir / "config.json").read_text())
    assert ModelConfig(**grown_cfg["model"]) == preset_config("medium", in_channels=1, image_size=12, num_classes=3)
    assert grown_cfg["training"]["grown_from"]["num_res_blocks"] == 1 and grown_cfg["training"]["steps"] == 7

    cfg = TrainConfig(dataset="synthetic", out=str(tmp_path / "run"), preset="medium", steps=1, batch_size=8,
                      lr=1e-12, warmup_steps=1, precision="fp32", device="cpu", sample_every=0, log_every=1,
                      init_from=str(grown_dir), threads=1)
    losses = []
    train(cfg, dataset=data, progress=False, on_step=lambda step, loss: losses.append(loss))
    small, _ = load_model(small_dir)
    batch = make_global_batch(data, BatchSampler(len(data), cfg.seed), 0, cfg.batch_size, T=cfg.timesteps,
                              seed=cfg.seed, label_dropout=cfg.label_dropout, null_label=3)
    with torch.no_grad():
        small_loss, _ = diffusion_loss(small, schedule, batch, precision="fp32")
    assert losses[0] == pytest.approx(float(small_loss), rel=1e-4)
    record = json.loads((tmp_path / "run" / "config.json").read_text())["training"]["init_from"]
    assert record["source"] == str(grown_dir) and record["steps"] == 7  # the small run's, carried by the grown folder
