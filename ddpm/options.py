"""SamplerOptions: every setting of a sampling run besides the model, the labels and the seed. The one place they live.

A checkpoint's config.json "sampling" holds its recommendation as these fields; `Pipeline.sample()` with no settings
samples at it, and the CLIs (`add_arguments` / `from_args`), the app, evaluation, export and the model card read and
describe the same dataclass. A new option is a new field here (with its help text and flag), the code in samplers.py
that uses it, and a control in app.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m")
SAMPLER_NAMES: dict[str, str] = {"ddpm": "DDPM ancestral", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}
VARIANCES: tuple[str, ...] = ("posterior", "beta")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")  # auto: bf16 for a network batch >= 16 where supported
MAX_REDRAWS = 5
MAX_SPACING = 4.0  # the largest time-step spacing power
NONE = "none"  # what a "--full-guidance"-style flag stores: the field set to None


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text and its argparse settings (flag, type, nargs, choices, none_flag, ...)."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample: the sampler, its steps and guidance. Frozen; `replace` makes a changed copy."""

    sampler: str = _option("ddim", "ddpm (ancestral), ddim or dpm++2m (DPM-Solver++(2M), deterministic)",
                           choices=SAMPLERS)
    steps: int = _option(50, "denoising steps (network evaluations), 1..T; T with ddpm is the original chain", type=int)
    cfg: float = _option(3.0, "guidance scale w: 0 unconditional, 1 conditional, > 1 guided", type=float)
    eta: float = _option(0.0, "DDIM noise: 0 deterministic .. 1 DDPM-like", type=float)
    variance: str = _option("posterior", "DDPM sigma_t^2: posterior (beta tilde) or beta (only with all T steps)",
                            choices=VARIANCES)
    clip_x0: bool = _option(True, "do not clip x0_pred to [-1, 1] at each step", flag="--no-clip")
    guidance_interval: tuple[float, float] | None = _option(
        None, "apply CFG only for t/T in [LO, HI], w = 1 elsewhere", type=float, nargs=2, metavar=("LO", "HI"),
        none_flag=("--full-guidance", "apply CFG at every step, even where an interval is recommended"))
    precision: str = _option("fp32", "network precision: fp32, bf16 (autocast) or auto (bf16 for a network batch "
                             ">= 16 where supported)", choices=PRECISIONS)
    spacing: float = _option(1.0, f"time-step spacing power in 1..{MAX_SPACING:g}: 1 = even steps in t, 2 = "
                             "quadratic (more steps at low noise)", type=float)
    class_cfg: tuple[float, ...] | None = _option(
        None, "one guidance scale per class, used instead of cfg: class c's images use the c-th", type=float,
        nargs="+", metavar="W")
    redraws: int = _option(0, f"rounds (0..{MAX_REDRAWS}) of drawing again the images the model itself reads as "
                           "another class (ddpm.selfcheck), 0 = off", type=int)
    redraw_threshold: float = _option(0.0, "redraw when the own class's relative margin is <= this, in [-1, 1]",
                                      type=float)

    def __post_init__(self) -> None:
        for name in ("guidance_interval", "class_cfg"):  # JSON and argparse give lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def replace(self, **changes: Any) -> SamplerOptions:
        """A copy with these fields changed. Giving `cfg` without `class_cfg` drops per-class scales (one w asked
        for); the guidance interval stays unless `guidance_interval` is given (None = guide every step)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown sampling setting {', '.join(map(repr, unknown))}; "
                             f"settings are {', '.join(f.name for f in fields(self))}")
        if "cfg" in changes and "class_cfg" not in changes:
            changes["class_cfg"] = None
        return dataclasses.replace(self, **changes)

    def cfg_for(self, label: int | None) -> float:
        """The guidance scale images of class `label` get: class_cfg[label] if set, else cfg."""
        return float(self.class_cfg[label] if self.class_cfg is not None and label is not None else self.cfg)

    def validate(self, T: int, num_classes: int | None = None) -> None:
        """Raise ValueError naming what is wrong. num_classes: the model's (None = unconditional)."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not _is_int(self.steps) or not 1 <= self.steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {self.steps!r}")
        if not _is_number(self.cfg) or not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg (guidance scale) must be a finite number >= 0, got {self.cfg!r}")
        if self.class_cfg is not None:
            if not isinstance(self.class_cfg, tuple) or not self.class_cfg or not all(
                    _is_number(w) and math.isfinite(w) and w >= 0 for w in self.class_cfg):
                raise ValueError("class_cfg must be a sequence of finite guidance scales >= 0, one per class, "
                                 f"got {self.class_cfg!r}")
            if num_classes is None:
                raise ValueError("class_cfg needs a class-conditional model")
            if len(self.class_cfg) != num_classes:
                raise ValueError(f"class_cfg needs one guidance scale per class: {num_classes} classes, "
                                 f"got {len(self.class_cfg)} scales")
        if not _is_number(self.eta) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be a number in 0..1, got {self.eta!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"unknown variance {self.variance!r}; choose one of {', '.join(VARIANCES)}")
        if self.sampler == "ddpm" and self.variance == "beta" and self.steps != T:
            raise ValueError(f"variance='beta' is only allowed with all {T} steps; respaced DDPM ({self.steps} steps) "
                             "needs variance='posterior' (sigma^2 = beta is several times worse at few steps)")
        if not isinstance(self.clip_x0, (bool, np.bool_)):
            raise ValueError(f"clip_x0 must be true or false, got {self.clip_x0!r}")
        check_spacing(self.spacing)
        if not _is_int(self.redraws) or not 0 <= self.redraws <= MAX_REDRAWS:
            raise ValueError(f"redraws must be an integer in 0..{MAX_REDRAWS}, got {self.redraws!r} (0 = off)")
        if self.redraws and num_classes is None:
            raise ValueError("redraws need a class-conditional model: the check asks which class explains an image")
        if not _is_number(self.redraw_threshold) or not -1.0 <= self.redraw_threshold <= 1.0:
            raise ValueError(f"redraw_threshold must be a number in [-1, 1], got {self.redraw_threshold!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        gi = self.guidance_interval
        if gi is not None and not (isinstance(gi, tuple) and len(gi) == 2 and all(_is_number(v) for v in gi)
                                   and 0.0 <= gi[0] <= gi[1] <= 1.0):
            raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {gi!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerOptions:
        """From config.json's "sampling": missing keys take the defaults; an unknown key is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"sampling settings must be a mapping, got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sampling setting {', '.join(map(repr, unknown))}; settings are "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**d)

    def describe(self, *, conditional: bool = True, class_names: tuple[str, ...] | None = None) -> str:
        """One line for people: "DPM-Solver++(2M), 50 steps (spacing 1.25) · CFG 2 for t/T in 0.2..0.8 · fp32"."""
        sampler = f"DDIM (eta {self.eta:g})" if self.sampler == "ddim" and self.eta else SAMPLER_NAMES[self.sampler]
        if self.sampler == "ddpm" and self.variance == "beta":
            sampler += " (sigma^2 = beta)"
        parts = [f"{sampler}, {self.steps} steps" + (f" (spacing {self.spacing:g})" if self.spacing != 1.0 else "")]
        if conditional:
            if self.class_cfg is not None:
                names = class_names or tuple(str(i) for i in range(len(self.class_cfg)))
                w = "CFG per class (" + ", ".join(f"{n} {v:g}" for n, v in zip(names, self.class_cfg)) + ")"
            else:
                w = f"CFG {self.cfg:g}"
            if self.guidance_interval is not None:
                w += " for t/T in {:g}..{:g}".format(*self.guidance_interval)
            parts.append(w)
            if self.redraws:
                parts.append(f"up to {self.redraws} redraw round{'s' if self.redraws > 1 else ''}"
                             + (f" (margin <= {self.redraw_threshold:g})" if self.redraw_threshold else ""))
        if not self.clip_x0:
            parts.append("x0 not clipped")
        parts.append(self.precision)
        return " · ".join(parts)


def parse_setting(name: str, value: Any) -> Any:
    """A raw setting as a browser or an API client sends it, in its field's type where it plainly is one: 10.0 for
    an integer field is 10, "DDIM" is "ddim", a list is a tuple. Anything else is returned as it is, for `validate`
    to refuse with the allowed range. An unknown name is a ValueError."""
    f = next((f for f in fields(SamplerOptions) if f.name == name), None)
    if f is None:
        raise ValueError(f"unknown sampling setting {name!r}; settings are "
                         f"{', '.join(f.name for f in fields(SamplerOptions))}")
    kind = type(f.default)
    if kind is str and isinstance(value, str):
        return value.strip().lower()
    if kind is int and _is_number(value) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if kind is float and _is_number(value):
        return float(value)
    if f.default is None and isinstance(value, list):  # the optional tuples: guidance_interval, class_cfg
        return tuple(value)
    return value


def check_spacing(spacing: float) -> None:
    """Raise ValueError unless spacing is a number in [1, MAX_SPACING]."""
    if not _is_number(spacing) or not 1.0 <= float(spacing) <= MAX_SPACING:
        raise ValueError(f"spacing must be a number in 1..{MAX_SPACING:g}, got {spacing!r} (1 = even steps, "
                         "2 = quadratic)")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


# -- the command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                  default_note: str = "default: the checkpoint's recommendation") -> None:
    """One flag per field (--steps, --cfg, --no-clip, --guidance-interval LO HI / --full-guidance, ...). Every
    flag defaults to None (= not given), so `from_args` changes only what was given."""
    group = parser.add_argument_group("sampling settings (" + default_note + ")")
    for f in fields(SamplerOptions):
        if f.name in exclude:
            continue
        cli = dict(f.metadata["cli"])
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        none_flag = cli.pop("none_flag", None)
        target = group.add_mutually_exclusive_group() if none_flag else group
        if isinstance(f.default, bool):  # a switch that turns the default off
            target.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None,
                                help=f.metadata["help"])
        else:
            target.add_argument(flag, dest=f.name, default=None, help=f.metadata["help"], **cli)
        if none_flag:
            target.add_argument(none_flag[0], dest=f.name, action="store_const", const=NONE, help=none_flag[1])


def from_args(args: argparse.Namespace, base: SamplerOptions) -> SamplerOptions:
    """`base` with the settings given on the command line (flags added by `add_arguments`)."""
    given = {f.name: getattr(args, f.name) for f in fields(SamplerOptions) if getattr(args, f.name, None) is not None}
    if "cfg" in given and "class_cfg" in given:
        raise ValueError("give --cfg or --class-cfg, not both")
    return base.replace(**{k: None if v == NONE else v for k, v in given.items()})
