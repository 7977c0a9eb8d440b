"""The public API: load a checkpoint into a Pipeline, then sample to the end or step by step.

    pipe = ddpm.load("checkpoints/fashion-mnist")
    images = pipe.sample(labels=[7] * 4, cfg=3, steps=50, sampler="ddim", seed=0)   # (4, 1, 28, 28) in [-1, 1]
    for step in pipe.stream(labels=["Sneaker"], steps=50):                           # ddpm.samplers.Step
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointConfig, load_config, load_model
from .model import UNet
from .samplers import SamplerOptions, Step, check_seed, run_to_end, sample_steps
from .schedule import NoiseSchedule

Label = int | str


@dataclass
class Pipeline:
    """A loaded model with its schedule and config. Stateless between calls: safe to share between users."""

    model: UNet
    schedule: NoiseSchedule
    config: CheckpointConfig
    source: str = ""  # where it was loaded from (folder or hub id)
    device: torch.device = torch.device("cpu")

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.config.class_names

    @property
    def label_names(self) -> tuple[str, ...]:
        """The name of every class: the checkpoint's class names, else "0", "1", ...; () if unconditional."""
        n = self.config.model.num_classes or 0
        return self.class_names or tuple(str(i) for i in range(n))

    @property
    def conditional(self) -> bool:
        return self.config.model.num_classes is not None

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """The checkpoint's recommended guidance interval (config.json "sampling"): CFG only for t/T in [lo, hi]."""
        gi = self.config.sampling.get("guidance_interval")
        return (float(gi[0]), float(gi[1])) if gi is not None and self.conditional else None

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.config.model
        return (m.in_channels, m.image_size, m.image_size)

    def label_index(self, label: Label) -> int:
        """A class index from an index (int or digit string) or a class name (case-insensitive)."""
        if not self.conditional:
            raise ValueError("this model is unconditional: it takes no class label")
        n = self.config.model.num_classes
        names = self.label_names
        if isinstance(label, bool):
            raise ValueError(f"label must be a class index 0..{n - 1} or a class name, got {label!r}")
        if isinstance(label, str):
            s = label.strip()
            for i, name in enumerate(names):
                if s.lower() == name.lower():
                    return i
            if s.lstrip("-").isdigit():
                label = int(s)
            else:
                raise ValueError(f"unknown class {label!r}; classes are {', '.join(names)} (or an index 0..{n - 1})")
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < n:
            raise ValueError(f"label {label!r} is out of range; use a class index 0..{n - 1} or one of {', '.join(names)}")
        return label

    def _labels(self, labels: Sequence[Label] | None, n: int | None) -> tuple[torch.Tensor | None, int]:
        if not self.conditional:
            if labels is not None and len(labels):
                raise ValueError("this model is unconditional: pass no labels, only n")
            if n is None or n < 1:
                raise ValueError(f"n must be a positive number of images, got {n!r}")
            return None, n
        if labels is None or not len(labels):
            raise ValueError("this model is class-conditional: pass labels, e.g. labels=[0, 0, 1]")
        return torch.tensor([self.label_index(l) for l in labels], dtype=torch.long), len(labels)

    def stream(
        self,
        labels: Sequence[Label] | None = None,
        *,
        n: int | None = None,
        seed: int = 0,
        sampler: str = "ddim",
        steps: int = 50,
        cfg: float = 3.0,
        eta: float = 0.0,
        variance: str = "posterior",
        clip_x0: bool = True,
        guidance_interval: tuple[float, float] | None = None,
        precision: str = "fp32",
        spacing: float = 1.0,
        class_cfg: Sequence[float] | None = None,
        redraws: int = 0,
        redraw_threshold: float = 0.0,
    ) -> Iterator[Step]:
        """Yield a Step after every denoising step. Image i uses seed + i. Labels: indices or class names.

        sampler: "ddim" (eta: its noise), "dpm++2m" (DPM-Solver++(2M), deterministic) or "ddpm" (ancestral).
        spacing: where the `steps` time steps sit, t_i = (T-1) (1 - i/(steps-1))^spacing (1 = evenly in t).
        class_cfg: one guidance scale per class (index = class index), used instead of cfg: image i is guided
        with class_cfg[label_i].
        redraws: up to this many rounds of drawing again the images the model itself reads as another class
        (ddpm.selfcheck; relative margin <= redraw_threshold); their steps are yielded too, with Step.draw = round.
        """
        y, count = self._labels(labels, n)
        options = SamplerOptions(sampler=sampler, steps=steps, cfg=cfg, eta=eta, variance=variance, clip_x0=clip_x0,
                                 guidance_interval=guidance_interval, precision=precision, spacing=spacing,
                                 class_cfg=tuple(class_cfg) if isinstance(class_cfg, (list, tuple)) else class_cfg,
                                 redraws=redraws, redraw_threshold=redraw_threshold)
        options.validate(self.T, num_classes=self.config.model.num_classes)  # fail now, not at the first next()
        check_seed(seed, count)
        return sample_steps(self.model, self.schedule, n=count, labels=y, seed=seed, options=options,
                            null_label=self.config.model.num_classes, image_shape=self.image_shape, device=self.device)

    def sample(self, labels: Sequence[Label] | None = None, **kwargs) -> torch.Tensor:
        """The final images, (B, C, H, W) in [-1, 1]; same arguments as stream()."""
        return run_to_end(self.stream(labels, **kwargs))


def load(source: str | Path, *, device: str | torch.device = "cpu") -> Pipeline:
    """Load a checkpoint folder, or a Hugging Face Hub id "user/repo[@revision]", into a Pipeline."""
    from .hub import resolve_checkpoint

    folder = resolve_checkpoint(str(source))
    config = load_config(folder)
    model, config = load_model(folder, config, device=device)
    return Pipeline(model=model, schedule=NoiseSchedule(config.schedule), config=config, source=str(source),
                    device=torch.device(device))
