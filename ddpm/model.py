"""A small class-conditional UNet that predicts the noise eps in x_t. It knows nothing of schedules.

Input x_t (B, C, H, W) in roughly [-3, 3], integer time steps t (B,), optional labels y (B,) in
0..num_classes (the index num_classes is the "null" label used for classifier-free guidance).
Output: eps_pred, the same shape as x_t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

# Bounds on a config, so that a hostile or mistyped config.json cannot build a huge network.
MAX_IMAGE_SIZE = 512
MAX_CHANNELS = 1024
MAX_LEVELS = 6
MAX_BLOCKS = 8
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the UNet; saved in config.json beside the weights."""

    in_channels: int = 1  # 1 = grayscale, 3 = RGB
    image_size: int = 28  # square images, H = W
    base_channels: int = 32  # channels at the first level
    channel_mult: tuple[int, ...] = (1, 2, 4)  # channels per level = base * mult; one down-sampling between levels
    num_res_blocks: int = 1  # residual blocks per level (the up path has one more, as in the DDPM UNet)
    attention_levels: tuple[int, ...] = (2,)  # level indices with self-attention (2 = the 7x7 level at 28px)
    dropout: float = 0.0  # inside residual blocks
    num_classes: int | None = 10  # None = unconditional
    norm_groups: int = 8  # GroupNorm groups
    attention_head_dim: int = 32  # channels per attention head

    def __post_init__(self) -> None:
        # tuples survive a JSON round trip as lists; normalise them
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        self.validate()

    def validate(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"model config: {name}={getattr(self, name)!r} is not allowed; expected {allowed}")

        if self.in_channels not in (1, 3, 4):
            raise bad("in_channels", "1, 3 or 4")
        if not isinstance(self.image_size, int) or not 4 <= self.image_size <= MAX_IMAGE_SIZE:
            raise bad("image_size", f"an integer in 4..{MAX_IMAGE_SIZE}")
        if not isinstance(self.base_channels, int) or not 4 <= self.base_channels <= MAX_CHANNELS:
            raise bad("base_channels", f"an integer in 4..{MAX_CHANNELS}")
        if not 1 <= len(self.channel_mult) <= MAX_LEVELS or any(
            m < 1 or m * self.base_channels > MAX_CHANNELS for m in self.channel_mult
        ):
            raise bad("channel_mult", f"1..{MAX_LEVELS} positive multipliers with base*mult <= {MAX_CHANNELS}")
        if any(c % self.norm_groups for c in (self.base_channels * m for m in self.channel_mult)):
            raise bad("norm_groups", "a divisor of every level's channel count")
        if not isinstance(self.num_res_blocks, int) or not 1 <= self.num_res_blocks <= MAX_BLOCKS:
            raise bad("num_res_blocks", f"an integer in 1..{MAX_BLOCKS}")
        if any(not 0 <= a < len(self.channel_mult) for a in self.attention_levels):
            raise bad("attention_levels", f"level indices in 0..{len(self.channel_mult) - 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a number in [0, 1)")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or not 1 <= self.num_classes <= MAX_CLASSES):
            raise bad("num_classes", f"null or an integer in 1..{MAX_CLASSES}")
        if not isinstance(self.attention_head_dim, int) or self.attention_head_dim < 1:
            raise bad("attention_head_dim", "a positive integer")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown field(s) {sorted(unknown)}; known fields are {sorted(known)}")
        return cls(**d)

    @property
    def null_label(self) -> int:
        """The label index meaning "no class" (classifier-free guidance)."""
        if self.num_classes is None:
            raise ValueError("an unconditional model has no labels")
        return self.num_classes


PRESETS: dict[str, dict] = {
    # < 100k parameters: unit tests
    "tiny": dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), norm_groups=4),
    # ~2.5M: the default for 28-32 px grayscale on a CPU
    "small": dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(2,)),
    # ~1M: faster, a little weaker
    "mini": dict(base_channels=24, channel_mult=(1, 2, 3), num_res_blocks=1, attention_levels=(2,)),
    # ~4.1M: small with two residual blocks per level, ~1.5x its training time per step on a CPU
    "medium": dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(2,)),
    # ~9M: GPUs and RGB
    "base": dict(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1),
}


def preset_config(name: str, *, in_channels: int = 1, image_size: int = 28, num_classes: int | None = 10) -> ModelConfig:
    """A ModelConfig from a named preset (a key of PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(in_channels=in_channels, image_size=image_size, num_classes=num_classes, **PRESETS[name])


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al.): (B,) -> (B, dim); first half cos, second half sin over frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the embedding applied as scale and shift after the second norm."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, out_ch, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, groups: int, head_dim: int) -> None:
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, head_dim)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, head_dim)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class UNet(nn.Module):
    """eps_theta(x_t, t, y): the DDPM UNet (Ho et al. 2020, appendix B), scaled down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # one extra row: the null label for classifier-free guidance
        self.label_emb = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes is not None else None
        self.pad_to = 2 ** (len(c.channel_mult) - 1)  # input sides are padded to a multiple of this

        self.stem = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [ch]
        cur = ch
        for level, mult in enumerate(c.channel_mult):
            out = ch * mult
            for _ in range(c.num_res_blocks):
                self.down.append(self._block(cur, out, emb_dim, level))
                cur = out
                skip_chs.append(cur)
            if level != len(c.channel_mult) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))  # downsample
                skip_chs.append(cur)

        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, c.norm_groups, c.dropout), Attention(cur, c.norm_groups, c.attention_head_dim),
             ResBlock(cur, cur, emb_dim, c.norm_groups, c.dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            out = ch * mult
            for _ in range(c.num_res_blocks + 1):
                self.up.append(self._block(cur + skip_chs.pop(), out, emb_dim, level))
                cur = out
            if level != 0:
                self.up.append(Upsample(cur))

        self.out = nn.Sequential(nn.GroupNorm(c.norm_groups, cur), nn.SiLU(), nn.Conv2d(cur, c.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _block(self, in_ch: int, out_ch: int, emb_dim: int, level: int) -> nn.Module:
        c = self.config
        res = ResBlock(in_ch, out_ch, emb_dim, c.norm_groups, c.dropout)
        if level in c.attention_levels:
            return ResAttn(res, Attention(out_ch, c.norm_groups, c.attention_head_dim))
        return res

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); t: (B,) int; y: (B,) int in 0..num_classes (num_classes = null) or None."""
        B, C, H, W = x.shape
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))  # (B, 4ch)
        if self.label_emb is not None:
            if y is None:
                y = torch.full((B,), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("this model is unconditional; pass y=None")

        # pad so every down-sampling halves the size exactly; cropped again at the end
        ph, pw = (-H) % self.pad_to, (-W) % self.pad_to
        h = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        h = self.stem(h)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, (ResBlock, ResAttn)) else layer(h)
            skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h)
        return h[:, :, :H, :W]


class ResAttn(nn.Module):
    """A residual block followed by self-attention."""

    def __init__(self, res: ResBlock, attn: Attention) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a built model."""
    return sum(p.numel() for p in model.parameters())


def parameter_count(config: ModelConfig) -> int:
    """Parameters and buffers of the UNet a config describes, counted on the meta device (no memory used)."""
    with torch.device("meta"):
        model = UNet(config)
    return sum(t.numel() for t in model.state_dict().values())
