"""Guidance schemes beyond the library's CFG, scored by the built-in evaluation: the issue-4 experiments.

    python research/guidance/guidance_variants.py cfg:1.5 apg:2 rescale:2:0.7           # 100 samples per class each
    git show 932af14:checkpoints/fashion-mnist/config.json > /tmp/guide/config.json   # (and model.safetensors)
    python research/guidance/guidance_variants.py --guide /tmp/guide auto:2 auto:2:2:0.2:0.8

A variant is NAME:W[:PARAM[:LO:HI]]; guidance applies only for t/T in [LO, HI] (default 0..1), the plain conditional
prediction eps(x, c) elsewhere. With eps_c = eps(x, c), eps_u = eps(x, null), D = eps_c - eps_u:

    cfg:W             eps_c + (W - 1) D                               Ho & Salimans 2022 (the library's CFG)
    apg:W[:ETA]       eps_c + (W - 1) (D_perp + ETA D_par), D split into its parts along and across the conditional
                      x0 prediction, per image (adaptive projected guidance, Sadat et al. 2024; no momentum, no
                      norm cap); ETA = 0 drops the part that brightens/saturates
    rescale:W[:PHI]   CFG, then the guided x0's per-image std matched to the conditional x0's, mixed PHI : 1 - PHI
                      with the unrescaled one (Lin et al. 2024, sec. 3.4)
    lowpass:W[:SIGMA] CFG with D blurred by a Gaussian of SIGMA pixels (default 1.5): guidance moves the class's
                      shape, not the fine detail that carries the within-class variety (an experiment of this project)
    auto:W[:WCFG[:LO:HI]]
                      autoguidance (Karras et al. 2024) by a weaker model G (--guide, e.g. an earlier checkpoint of the
                      same run): eps_G(x, c) + W (eps_c - eps_G(x, c)) at every step, plus (WCFG - 1) D in [LO, HI]
    autou:W           CFG whose unconditional branch comes from G: eps_G(x, null) + W (eps_c - eps_G(x, null))

Every variant samples with DDIM 50 (--steps, --spacing), in bf16 where the CPU supports it (--precision), image i
with noise seed SEED * N + i as `python -m ddpm.evaluate --seed SEED` does, so a cfg row reproduces the evaluation
table's row. Prints one line per variant; --json appends the rows to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ddpm import guidance, samplers  # noqa: E402
from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.checkpoint import load_config, load_model  # noqa: E402
from ddpm.classifier import load_classifier  # noqa: E402
from ddpm.device import PRECISION_CHOICES, resolve_precision  # noqa: E402
from ddpm.evaluate import build_reference, default_classifier, evaluate_setting  # noqa: E402
from ddpm.options import SamplerOptions  # noqa: E402
from ddpm.pipeline import load  # noqa: E402

VARIANTS = ("cfg", "apg", "rescale", "lowpass", "auto", "autou")


def parse_variant(spec: str) -> dict:
    """NAME:W[:PARAM[:LO:HI]] -> dict(name, w, param, interval); raises ValueError naming what is wrong."""
    parts = spec.split(":")
    name = parts[0]
    if name not in VARIANTS or len(parts) not in (2, 3, 5):
        raise ValueError(f"bad variant {spec!r}: use NAME:W[:PARAM[:LO:HI]] with NAME one of {', '.join(VARIANTS)}")
    nums = [float(p) for p in parts[1:]]
    default_param = {"apg": 0.0, "rescale": 0.7, "lowpass": 1.5, "auto": 1.0}.get(name, 0.0)
    lo, hi = (nums[2], nums[3]) if len(nums) == 4 else (0.0, 1.0)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"bad interval in {spec!r}: need 0 <= LO <= HI <= 1")
    return {"name": name, "w": nums[0], "param": nums[1] if len(nums) > 1 else default_param, "interval": (lo, hi)}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x (B, C, H, W) blurred per channel by a separable Gaussian of std sigma pixels (radius 3 sigma, reflect)."""
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def make_eps_fn_factory(v: dict, schedule, guide: torch.nn.Module | None):
    """A drop-in for samplers.guided_eps_fn implementing variant v (the options' own cfg is ignored; its precision,
    which the sampler passes on, is honoured)."""
    name, w, param, (lo, hi) = v["name"], v["w"], v["param"], v["interval"]

    def factory(model, labels, *, cfg, null_label, T, guidance_interval=None, precision="fp32"):
        def net(m, x, t, y):
            with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return m(x, t, y).float()

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inside = guidance.guided_at(int(t[0]), T, (lo, hi))
            null = torch.full_like(labels, null_label)
            if name == "auto":
                if inside and param != 1.0:
                    c, u = net(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
                    g = net(guide, x, t, labels)
                    return g + w * (c - g) + (param - 1.0) * (c - u)
                c, g = net(model, x, t, labels), net(guide, x, t, labels)
                return g + w * (c - g)
            if not inside:
                return net(model, x, t, labels)
            if name == "autou":
                c, g = net(model, x, t, labels), net(guide, x, t, null)
                return g + w * (c - g)
            c, u = net(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            d = c - u
            if name == "cfg":
                return c + (w - 1.0) * d
            if name == "lowpass":
                return c + (w - 1.0) * gaussian_blur(d, param)
            if name == "apg":
                v_dir = schedule.x0_from_eps(x, t, c).clamp(-1, 1).flatten(1)
                v_dir = v_dir / v_dir.norm(dim=1, keepdim=True).clamp_min(1e-8)
                d_flat = d.flatten(1)
                d_par = (d_flat * v_dir).sum(1, keepdim=True) * v_dir
                return c + (w - 1.0) * (d_flat - d_par + param * d_par).view_as(d)
            # rescale
            x0_g = schedule.x0_from_eps(x, t, c + (w - 1.0) * d)
            x0_c = schedule.x0_from_eps(x, t, c)
            std_g = x0_g.flatten(1).std(1).view(-1, 1, 1, 1).clamp_min(1e-8)
            std_c = x0_c.flatten(1).std(1).view(-1, 1, 1, 1)
            x0 = param * x0_g * (std_c / std_g) + (1.0 - param) * x0_g
            return schedule.eps_from_x0(x, t, x0)

        return eps_fn

    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME:W[:PARAM[:LO:HI]], see the module docstring")
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "fashion-mnist"))
    parser.add_argument("--guide", default=None, help="the weaker model for auto/autou (a checkpoint folder)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=1.0,
                        help="time-step spacing power (the default model's: 1.25)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (image i uses seed * N + i)")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto = bf16 where the CPU supports it, else fp32 (emulated bf16 is ~10x slower)")
    parser.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(s) for s in args.variants]
        precision = resolve_precision(args.precision, torch.device("cpu"))
    except ValueError as e:
        parser.error(str(e))
    if any(v["name"] in ("auto", "autou") for v in variants) and not args.guide:
        parser.error("auto and autou need --guide DIR (a weaker checkpoint of the same classes)")
    tune_allocator()

    pipe = load(args.checkpoint)
    guide = None
    if args.guide:
        guide, _ = load_model(args.guide, load_config(args.guide))
        guide.eval()
    classifier, _ = load_classifier(str(ROOT / default_classifier(pipe.config.dataset)))
    m = pipe.config.model
    ref = build_reference(classifier, pipe.config.dataset, n_per_class=args.n_per_class, image_size=m.image_size,
                          channels=m.in_channels, seed=args.seed)
    print(f"N = {ref.n}, FD floor {ref.fd_train_floor:.4f}", flush=True)
    original = samplers.guided_eps_fn
    try:
        for spec, v in zip(args.variants, variants):
            samplers.guided_eps_fn = make_eps_fn_factory(v, pipe.schedule, guide)
            # cfg = 2 only makes the sampler call the (replaced) guided path with both branches available
            setting = SamplerOptions(steps=args.steps, cfg=2.0, precision=precision, spacing=args.spacing)
            row = evaluate_setting(pipe, classifier, ref, setting, n_per_class=args.n_per_class, seed=args.seed,
                                   batch_size=args.batch_size)
            print(f"{spec:24s} accuracy {row['accuracy']:6.1%}  FD {row['fd']:.3f} ({row['fd_over_floor']:.2f}x floor) "
                  f"NN/test {row['nn_over_test']:.2f}  {row['seconds']:.0f} s", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"variant": spec, "guide": args.guide, "steps": args.steps,
                                        "spacing": args.spacing, "precision": precision, "seed": args.seed, "n": ref.n,
                                        "fd_floor": ref.fd_train_floor,
                                        **{k: row[k] for k in ("accuracy", "fd", "fd_over_floor", "nn_over_test",
                                                               "per_class_accuracy", "seconds")}}) + "\n")
    finally:
        samplers.guided_eps_fn = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
