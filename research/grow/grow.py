"""Grow a trained UNet to more residual blocks per level without changing what it computes.

A network with n blocks per level becomes one with m > n (the `small` preset -> `medium`: 1 -> 2) whose output is
the same for every input, so training the larger network starts where the smaller one finished instead of from
noise (function-preserving growth, as in Net2Net, Chen et al. 2016). It works because every block of this UNet is
residual with its last layer zero-initialised (ResBlock.conv2, Attention.proj):

- down path: blocks 0..n-1 of each level are the trained ones; blocks n..m-1 are new, with in = out channels, and
  start as the identity. Their outputs are pushed as skips, so the up path sees the last trained block's output
  m - n more times.
- up path (m + 1 blocks per level, n + 1 before): block 0 is the trained block 0 (its skip is the last down block,
  whose value is unchanged); blocks 1..m-n are new and consume those repeated skips: a new block's input is
  cat(h, skip) and its 1x1 shortcut starts as [I | 0] (pass h, ignore the skip), its residual branch as zero;
  the remaining n blocks are the trained blocks 1..n, fed the same skips as before.
- stem, embeddings, middle and output layers are copied.

The new layers' other weights keep their random initialisation, so gradients reach them from the first step.

Research code, not part of the `ddpm` package (see README.md here). To train a grown network, write it as a
checkpoint folder and start a run from it (train.py --init-from loads only the same network):

    python research/grow/grow.py checkpoints/fashion-mnist runs/grown-init --blocks 2
    python train.py --init-from runs/grown-init --preset medium --steps 4000 --seed 1 --out runs/grown
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `import ddpm`

from ddpm.checkpoint import load_model, save_checkpoint  # noqa: E402
from ddpm.model import ResAttn, ResBlock, UNet, count_parameters  # noqa: E402


def _level_blocks(layers: nn.ModuleList, per_level: int, levels: int) -> list[list[int]]:
    """Indices into `layers` of each level's blocks (down: top level first; up: bottom level first)."""
    out, i = [], 0
    for level in range(levels):
        out.append(list(range(i, i + per_level)))
        i += per_level + (1 if level != levels - 1 else 0)  # the down- or up-sampling layer between levels
    assert i == len(layers), "unexpected UNet layout"
    return out


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _pass_through(block: nn.Module) -> None:
    """A new up block: output = h for input cat(h, skip) (residual branch zero, shortcut [I | 0])."""
    res = block.res if isinstance(block, ResAttn) else block
    assert isinstance(res, ResBlock) and isinstance(res.skip, nn.Conv2d)
    out_ch, in_ch = res.skip.weight.shape[:2]
    with torch.no_grad():
        w = torch.zeros(out_ch, in_ch, 1, 1)
        w[:, :out_ch, 0, 0] = torch.eye(out_ch)
        res.skip.weight.copy_(w)
        res.skip.bias.zero_()
        res.conv2.weight.zero_()
        res.conv2.bias.zero_()
        if isinstance(block, ResAttn):
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()


def grow(model: UNet, num_res_blocks: int, *, seed: int = 0) -> UNet:
    """A UNet like `model` with `num_res_blocks` blocks per level (more than it has) computing the same function.

    Raises ValueError if num_res_blocks is not larger. The returned model is in train mode, fp32, on the CPU; the new
    layers' random weights come from `seed` (the global RNG is left as it was); `model` is not changed.
    """
    c = model.config
    n, m = c.num_res_blocks, num_res_blocks
    if m <= n:
        raise ValueError(f"can only grow to more residual blocks per level: the model has {n}, asked for {m}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        big = UNet(replace(c, num_res_blocks=m))
    for name in ("time_mlp", "label_emb", "stem", "mid", "out"):
        if getattr(model, name) is not None:
            _copy(getattr(big, name), getattr(model, name))
    levels = len(c.channel_mult)
    down = zip(_level_blocks(model.down, n, levels), _level_blocks(big.down, m, levels))
    up = zip(_level_blocks(model.up, n + 1, levels), _level_blocks(big.up, m + 1, levels))
    for level, (src, dst) in enumerate(down):
        for s, d in zip(src, dst[:n]):  # trained blocks first; the new ones (identity at start) after them
            _copy(big.down[d], model.down[s])
        if level != levels - 1:  # the down-sampling conv after the level's blocks
            _copy(big.down[dst[-1] + 1], model.down[src[-1] + 1])
    for level, (src, dst) in enumerate(up):
        _copy(big.up[dst[0]], model.up[src[0]])  # trained block 0, m - n pass-through blocks, trained blocks 1..n
        for d in dst[1:m - n + 1]:
            _pass_through(big.up[d])
        for s, d in zip(src[1:], dst[m - n + 1:]):
            _copy(big.up[d], model.up[s])
        if level != levels - 1:  # the up-sampling layer after the level's blocks
            _copy(big.up[dst[-1] + 1], model.up[src[-1] + 1])
    return big


def grow_checkpoint(src: str | Path, dst: str | Path, num_res_blocks: int, *, seed: int = 0) -> Path:
    """Write checkpoint folder `src` grown to num_res_blocks blocks per level as checkpoint folder `dst`.

    config.json keeps the source's training record (so a run started from dst counts the source's steps) and adds
    "grown_from": the source's blocks per level and parameter count.
    """
    small, config = load_model(src)
    big = grow(small, num_res_blocks, seed=seed)
    training = {**config.training, "grown_from": {"source": str(src), "num_res_blocks": small.config.num_res_blocks,
                                                  "parameters": count_parameters(small)}}
    return save_checkpoint(dst, big, replace(config, model=big.config, training=training))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Grow a checkpoint's UNet to more residual blocks per level.")
    p.add_argument("src", help="checkpoint folder to grow")
    p.add_argument("dst", help="where to write the grown checkpoint folder")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks per level of the grown network (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new layers' random weights (default 0)")
    args = p.parse_args(argv)
    try:
        out = grow_checkpoint(args.src, args.dst, args.blocks, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: train it with python train.py --init-from {out} and the matching --preset", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
