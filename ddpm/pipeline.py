"""The public API: load a checkpoint into a Pipeline, then sample to the end or step by step.

    pipe = ddpm.load("checkpoints/fashion-mnist")
    images = pipe.sample(labels=[7] * 4, seed=0)               # the checkpoint's recommended settings; (4, 1, 28, 28)
    images = pipe.sample(labels=[7] * 4, cfg=3, steps=25)      # ... with some of them changed
    for step in pipe.stream(labels=["Sneaker"], options=pipe.recommended.replace(sampler="ddim")):  # ddpm.Step
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointConfig, load_config, load_model
from .edit import Edit, edit_steps, interpolate_steps
from .hub import resolve_checkpoint
from .images import ImageLike, load_image, load_mask
from .model import UNet
from .options import SamplerOptions
from .samplers import Step, check_seed, resolve_precision, run_to_end, sample_steps
from .schedule import NoiseSchedule
from .selfcheck import redraw_steps

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
    def recommended(self) -> SamplerOptions:
        """The checkpoint's recommended sampling settings (config.json "sampling"): what sample() uses by default."""
        return self.config.sampling

    def options(self, options: SamplerOptions | None = None, **changes) -> SamplerOptions:
        """Checked settings: `options` (default: the recommendation) with `changes` (SamplerOptions.replace)."""
        opts = (options if options is not None else self.recommended)
        if not isinstance(opts, SamplerOptions):
            raise ValueError(f"options must be a ddpm.SamplerOptions, got {type(opts).__name__}")
        opts = opts.replace(**changes) if changes else opts
        opts.validate(self.T, num_classes=self.config.model.num_classes)
        return opts

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

    def edit(self, init: ImageLike | torch.Tensor, *, strength: float = 1.0,
             mask: ImageLike | torch.Tensor | None = None, jumps: int = 0) -> Edit:
        """An input image (and mask) brought to this model, for stream(edit=...); Edit.notes says what was done.

        init: an image file, PIL image or uint8 array of any size and colour mode, or a tensor (C, H, W) or
        (B, C, H, W) in [-1, 1] of the model's shape. mask: the part to generate (painted / white / opaque), an
        image of the input's or the model's size, or a bool tensor (H, W) / (B, 1, H, W) of the model's.
        strength: t0 = strength (T-1) (image-to-image); jumps: RePaint resampling rounds (with a mask).
        """
        c, h, w = self.image_shape
        if isinstance(init, torch.Tensor):
            x, notes, size = (init.unsqueeze(0) if init.dim() == 3 else init).float(), [], (w, h)
        else:
            x, notes, size = load_image(init, self.image_shape)
        if isinstance(mask, torch.Tensor):
            m = mask.view(1, 1, *mask.shape) if mask.dim() == 2 else mask
        else:
            m = None if mask is None else load_mask(mask, self.image_shape, image_size=size)
        if m is not None and not bool(m.any()):
            notes.append("the mask is empty: nothing to fill in, the input is kept")
        edit = Edit(init=x, strength=strength, mask=m, jumps=jumps, notes=tuple(notes))
        edit.validate(self.image_shape, x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1)
        return edit

    def stream(self, labels: Sequence[Label] | None = None, *, n: int | None = None, seed: int = 0,
               options: SamplerOptions | None = None, init: ImageLike | torch.Tensor | None = None,
               strength: float = 1.0, mask: ImageLike | torch.Tensor | None = None, jumps: int = 0,
               edit: Edit | None = None, **changes) -> Iterator[Step]:
        """Yield a Step after every denoising step. Image i uses seed + i. Labels: indices or class names.

        options: the settings (default: the checkpoint's recommendation, `recommended`); keyword `changes` override
        single fields (sampler="ddim", steps=25, cfg=3, ...; see ddpm.SamplerOptions). Giving cfg drops the
        recommended per-class scales; guidance_interval=None guides every step. With redraws > 0 the images the
        model itself reads as another class are drawn again (ddpm.selfcheck), their steps yielded with Step.draw.

        Starting from an image (ddpm.edit): init with strength (image-to-image, SDEdit) and/or mask (inpainting,
        RePaint, with `jumps` resampling rounds), see edit(); or a ready `edit`. Edits do not redraw.
        """
        y, count = self._labels(labels, n)
        opts = self.options(options, **changes)  # fail now, not at the first next()
        check_seed(seed, count)
        if init is not None and edit is not None:
            raise ValueError("give either init (with strength, mask, jumps) or a prepared edit, not both")
        if init is not None:
            edit = self.edit(init, strength=strength, mask=mask, jumps=jumps)
        elif mask is not None or strength != 1.0 or jumps:
            raise ValueError("strength, mask and jumps need an input image: pass init=")
        opts = resolve_precision(opts, count, conditional=y is not None, device=self.device)  # "auto": once
        if edit is not None:  # edit_steps checks the edit at once (it is not a generator)
            seeds = [seed + i for i in range(count)]
            return edit_steps(self.model, self.schedule, seeds, y.to(self.device) if y is not None else None,
                              opts, self.config.model.num_classes, self.image_shape, self.device, edit)
        steps = sample_steps(self.model, self.schedule, n=count, labels=y, seed=seed, options=opts,
                             null_label=self.config.model.num_classes, image_shape=self.image_shape,
                             device=self.device)
        if not opts.redraws or y is None:
            return steps
        return redraw_steps(self.model, self.schedule, steps, seeds=[seed + i for i in range(count)], labels=y,
                            options=opts, num_classes=self.config.model.num_classes, image_shape=self.image_shape,
                            device=self.device)

    def sample(self, labels: Sequence[Label] | None = None, **kwargs) -> torch.Tensor:
        """The final images, (B, C, H, W) in [-1, 1]; same arguments as stream()."""
        return run_to_end(self.stream(labels, **kwargs))

    def interpolate(self, seed_a: int, seed_b: int, *, k: int = 8, labels: Label | Sequence[Label] | None = None,
                    options: SamplerOptions | None = None, **changes) -> Iterator[Step]:
        """Stream k images along the slerp path from seed_a's starting noise to seed_b's (ddpm.edit), one batch.

        labels: one class for the whole path, or two (class of A, class of B) to blend their guidance along it;
        None for an unconditional model. Needs a deterministic sampler (dpm++2m, or ddim with eta 0); image 0 is
        seed_a's image and image k-1 seed_b's, as pipe.sample gives them with these settings.
        """
        opts = self.options(options, **changes)
        pair = None
        if self.conditional:
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels (one class, or two: A's and B's)")
            many = isinstance(labels, Sequence) and not isinstance(labels, str)
            if many and len(labels) not in (1, 2):
                raise ValueError(f"labels: one class or two (A's and B's), got {len(labels)}")
            la, lb = (labels[0], labels[-1]) if many else (labels, labels)
            pair = (torch.tensor([self.label_index(la)]), torch.tensor([self.label_index(lb)]))
        elif labels is not None:
            raise ValueError("this model is unconditional: pass no labels")
        opts = resolve_precision(opts, k if isinstance(k, int) else 1, conditional=pair is not None, device=self.device)
        return interpolate_steps(self.model, self.schedule, seed_a, seed_b, k, pair, opts,
                                 self.config.model.num_classes, self.image_shape, self.device)


def load(source: str | Path, *, device: str | torch.device = "cpu") -> Pipeline:
    """Load a checkpoint folder, or a Hugging Face Hub id "user/repo[@revision]", into a Pipeline."""
    folder = resolve_checkpoint(str(source))
    config = load_config(folder)
    model, config = load_model(folder, config, device=device)
    return Pipeline(model=model, schedule=NoiseSchedule(config.schedule), config=config, source=str(source),
                    device=torch.device(device))
