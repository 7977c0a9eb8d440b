"""The tutorial's reference network, `MyTinyUNet`, re-written as a baseline for bench_library.py.

Source: the DDPM-on-MNIST tutorial in ../shared/seeds/000_3305e6f5cc96485b.txt ("UNet" section). Same
layers, channel counts and parameter count; the one change is a bug fix, on by default:

* `MyConv` moves channels last for LayerNorm with permute(0, 2, 3, 1) and "back" with
  permute(0, 3, 2, 1), which returns (B, C, W, H): every conv block transposes the image. Square
  inputs hide it (shapes still fit). `fix_permute=True` uses permute(0, 3, 1, 2); pass False for the
  original. The cost is identical either way.

Kept as in the tutorial, on purpose: the unconditional model (no labels), the fixed sinusoidal table
(whose sin/cos masks index rows, not columns, so it is not the usual embedding), ConvTranspose
up-sampling, and the input size: the tutorial resizes MNIST to 32x32. At 28x28 it does not run
(7 -> 3 after the third down-sampling, then 3 -> 6 does not match the 7x7 skip), so it is measured at 32x32.
"""

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_embedding(n: int, d: int) -> torch.Tensor:
    """The tutorial's table, (n, d), reproduced as written."""
    embedding = torch.tensor([[i / 10_000 ** (2 * j / d) for j in range(d)] for i in range(n)])
    sin_mask = torch.arange(0, n, 2)
    embedding[sin_mask] = torch.sin(embedding[sin_mask])
    embedding[1 - sin_mask] = torch.cos(embedding[sin_mask])
    return embedding


class MyConv(nn.Module):
    """Conv -> LayerNorm over channels -> SiLU."""

    def __init__(self, in_c: int, out_c: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 activation: nn.Module | None = None, normalize: bool = True, fix_permute: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, out_c, kernel_size, stride, padding)
        self.ln = nn.LayerNorm([out_c]) if normalize else None
        self.activation = nn.SiLU() if activation is None else activation
        self.back = (0, 3, 1, 2) if fix_permute else (0, 3, 2, 1)  # the tutorial's (0, 3, 2, 1) swaps H and W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.ln is not None:
            out = out.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
            out = self.ln(out)
            out = out.permute(*self.back)
        if self.activation is not None:
            out = self.activation(out)
        return out


def MyTinyBlock(in_c: int, out_c: int, fix_permute: bool = True) -> nn.Sequential:  # noqa: N802 (the tutorial's name)
    return nn.Sequential(MyConv(in_c, out_c, fix_permute=fix_permute), MyConv(out_c, out_c, fix_permute=fix_permute),
                         MyConv(out_c, out_c, fix_permute=fix_permute))


def MyTinyUp(in_c: int, fix_permute: bool = True) -> nn.Sequential:  # noqa: N802
    return nn.Sequential(MyConv(in_c, in_c // 2, fix_permute=fix_permute),
                         MyConv(in_c // 2, in_c // 4, fix_permute=fix_permute),
                         MyConv(in_c // 4, in_c // 4, fix_permute=fix_permute))


def _embed_fc(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))


class MyTinyUNet(nn.Module):
    """Three down-samplings, three up-samplings, time embedding added before every block. eps_theta(x_t, t)."""

    def __init__(self, in_c: int = 1, out_c: int = 1, size: int = 32, n_steps: int = 1000, time_emb_dim: int = 100,
                 fix_permute: bool = True) -> None:
        super().__init__()
        fp = fix_permute
        self.time_embed = nn.Embedding(n_steps, time_emb_dim)
        self.time_embed.weight.data = sinusoidal_embedding(n_steps, time_emb_dim)
        self.time_embed.requires_grad_(False)

        self.te1 = _embed_fc(time_emb_dim, 1)
        self.b1 = MyTinyBlock(in_c, 10, fp)
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)
        self.te2 = _embed_fc(time_emb_dim, 10)
        self.b2 = MyTinyBlock(10, 20, fp)
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)
        self.te3 = _embed_fc(time_emb_dim, 20)
        self.b3 = MyTinyBlock(20, 40, fp)
        self.down3 = nn.Conv2d(40, 40, 4, 2, 1)

        self.te_mid = _embed_fc(time_emb_dim, 40)
        self.b_mid = nn.Sequential(MyConv(40, 20, fix_permute=fp), MyConv(20, 20, fix_permute=fp),
                                   MyConv(20, 40, fix_permute=fp))

        self.up1 = nn.ConvTranspose2d(40, 40, 4, 2, 1)
        self.te4 = _embed_fc(time_emb_dim, 80)
        self.b4 = MyTinyUp(80, fp)
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5 = _embed_fc(time_emb_dim, 40)
        self.b5 = MyTinyUp(40, fp)
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out = _embed_fc(time_emb_dim, 20)
        self.b_out = MyTinyBlock(20, 10, fp)
        self.conv_out = nn.Conv2d(10, out_c, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, 32, 32), t (B,) int. `y` exists only so the project's samplers and loss can call it; must be None."""
        if y is not None:
            raise ValueError("MyTinyUNet is unconditional; pass y=None")
        t = self.time_embed(t)
        n = len(x)
        out1 = self.b1(x + self.te1(t).reshape(n, -1, 1, 1))  # (B, 10, H, W)
        out2 = self.b2(self.down1(out1) + self.te2(t).reshape(n, -1, 1, 1))  # (B, 20, H/2, W/2)
        out3 = self.b3(self.down2(out2) + self.te3(t).reshape(n, -1, 1, 1))  # (B, 40, H/4, W/4)
        out_mid = self.b_mid(self.down3(out3) + self.te_mid(t).reshape(n, -1, 1, 1))  # (B, 40, H/8, W/8)
        out4 = torch.cat((out3, self.up1(out_mid)), dim=1)  # (B, 80, H/4, W/4)
        out4 = self.b4(out4 + self.te4(t).reshape(n, -1, 1, 1))  # (B, 20, H/4, W/4)
        out5 = torch.cat((out2, self.up2(out4)), dim=1)  # (B, 40, H/2, W/2)
        out5 = self.b5(out5 + self.te5(t).reshape(n, -1, 1, 1))  # (B, 10, H/2, W/2)
        out = torch.cat((out1, self.up3(out5)), dim=1)  # (B, 20, H, W)
        out = self.b_out(out + self.te_out(t).reshape(n, -1, 1, 1))  # (B, 10, H, W)
        return self.conv_out(out)  # (B, out_c, H, W)
