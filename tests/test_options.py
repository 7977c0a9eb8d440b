"""SamplerOptions: the one dataclass of sampling settings, its JSON form, its flags and its checks."""

from __future__ import annotations

import argparse
import json

import pytest

from ddpm.options import SAMPLERS, SamplerOptions, add_arguments, from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_replace_changes_fields_and_giving_cfg_drops_per_class_scales():
    rec = SamplerOptions(sampler="dpm++2m", cfg=2.0, class_cfg=(1.5, 2.5), guidance_interval=(0.2, 0.8))
    assert rec.replace(steps=7).steps == 7 and rec.replace(steps=7).class_cfg == (1.5, 2.5)
    one = rec.replace(cfg=4.0)
    assert one.cfg == 4.0 and one.class_cfg is None and one.guidance_interval == (0.2, 0.8)
    assert rec.replace(cfg=4.0, class_cfg=(1, 2)).class_cfg == (1, 2)
    assert rec.replace(guidance_interval=None).guidance_interval is None
    assert rec.sampler == "dpm++2m" and rec.class_cfg == (1.5, 2.5)  # frozen: the original is unchanged
    with pytest.raises(ValueError, match="unknown sampling setting 'stepz'; settings are sampler, steps"):
        rec.replace(stepz=3)


def test_cfg_for_a_label():
    assert SamplerOptions(cfg=2.0).cfg_for(1) == 2.0
    assert SamplerOptions(cfg=2.0, class_cfg=(1.5, 2.5)).cfg_for(1) == 2.5
    assert SamplerOptions(cfg=2.0, class_cfg=(1.5, 2.5)).cfg_for(None) == 2.0


def test_json_round_trip_and_lists_become_tuples():
    opts = SamplerOptions(sampler="ddpm", steps=20, guidance_interval=(0.1, 0.9), class_cfg=(1.0, 2.0), redraws=1)
    d = json.loads(json.dumps(opts.to_dict()))
    assert d["guidance_interval"] == [0.1, 0.9] and d["class_cfg"] == [1.0, 2.0]
    assert SamplerOptions.from_dict(d) == opts
    assert SamplerOptions.from_dict({}) == SamplerOptions()
    with pytest.raises(ValueError, match="unknown sampling setting 'colour'"):
        SamplerOptions.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="must be a mapping"):
        SamplerOptions.from_dict(["ddim"])


@pytest.mark.parametrize("changes, message", [
    ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim, dpm\\+\\+2m"),
    ({"steps": 0}, "steps must be an integer in 1..100"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"cfg": -1.0}, "cfg \\(guidance scale\\) must be a finite number >= 0"),
    ({"cfg": float("nan")}, "finite number"),
    ({"eta": 1.5}, "eta must be a number in 0..1"),
    ({"variance": "big"}, "unknown variance 'big'"),
    ({"sampler": "ddpm", "variance": "beta", "steps": 10}, "only allowed with all 100 steps"),
    ({"spacing": 0.5}, "spacing must be a number in 1..4"),
    ({"guidance_interval": (0.8, 0.2)}, "0 <= lo <= hi <= 1"),
    ({"precision": "fp16"}, "unknown precision 'fp16'; choose one of auto, fp32, bf16"),
    ({"class_cfg": (1.0,)}, "one guidance scale per class: 3 classes, got 1"),
    ({"class_cfg": (1.0, -2.0, 1.0)}, "finite guidance scales >= 0"),
    ({"redraws": 6}, "redraws must be an integer in 0..5"),
    ({"redraw_threshold": 3.0}, "redraw_threshold must be a number in \\[-1, 1\\]"),
    ({"clip_x0": "yes"}, "clip_x0 must be true or false"),
])
def test_validate_names_the_bad_setting_and_what_is_allowed(changes, message):
    opts = SamplerOptions().replace(**changes)
    with pytest.raises(ValueError, match=message):
        opts.validate(100, num_classes=3)


def test_class_settings_need_a_conditional_model():
    for opts in (SamplerOptions(class_cfg=(1.0, 2.0)), SamplerOptions(redraws=1)):
        with pytest.raises(ValueError, match="class-conditional"):
            opts.validate(100, num_classes=None)
    SamplerOptions().validate(100, num_classes=None)  # plain settings are fine


def test_every_field_has_a_flag_and_only_given_flags_change_the_base():
    base = SamplerOptions(sampler="dpm++2m", steps=50, cfg=2.0, class_cfg=(1.5, 2.5), guidance_interval=(0.2, 0.8))
    assert from_args(parser().parse_args([]), base) == base
    args = parser().parse_args(["--steps", "20", "--sampler", "ddim", "--eta", "0.5", "--no-clip", "--spacing", "2",
                                "--precision", "auto", "--redraws", "1", "--redraw-threshold", "0.1",
                                "--variance", "beta"])
    opts = from_args(args, base)
    assert (opts.steps, opts.sampler, opts.eta, opts.clip_x0, opts.spacing, opts.precision, opts.redraws,
            opts.redraw_threshold, opts.variance) == (20, "ddim", 0.5, False, 2.0, "auto", 1, 0.1, "beta")
    assert opts.class_cfg == (1.5, 2.5) and opts.guidance_interval == (0.2, 0.8)
    assert from_args(parser().parse_args(["--cfg", "4"]), base).class_cfg is None
    assert from_args(parser().parse_args(["--class-cfg", "1", "3"]), base).class_cfg == (1.0, 3.0)
    assert from_args(parser().parse_args(["--guidance-interval", "0.1", "0.5"]), base).guidance_interval == (0.1, 0.5)
    assert from_args(parser().parse_args(["--full-guidance"]), base).guidance_interval is None
    with pytest.raises(ValueError, match="give --cfg or --class-cfg, not both"):
        from_args(parser().parse_args(["--cfg", "4", "--class-cfg", "1", "2"]), base)
    with pytest.raises(SystemExit):  # argparse: the two are exclusive
        parser().parse_args(["--full-guidance", "--guidance-interval", "0.1", "0.5"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--sampler", "euler"])
    flags = {a.dest for a in parser()._actions}
    assert {f for f in SamplerOptions.__dataclass_fields__} <= flags


def test_add_arguments_can_leave_fields_out():
    p = argparse.ArgumentParser()
    add_arguments(p, exclude=("steps", "cfg"))
    p.add_argument("--steps", type=int, nargs="+")  # a caller's own sweep flag
    assert p.parse_args(["--steps", "1", "2"]).steps == [1, 2]


def test_describe_for_people():
    opts = SamplerOptions(sampler="dpm++2m", steps=50, spacing=1.25, cfg=2.0, guidance_interval=(0.2, 0.8))
    assert opts.describe() == "DPM-Solver++(2M), 50 steps (spacing 1.25) · CFG 2 for t/T in 0.2..0.8 · fp32"
    per_class = opts.replace(cfg=2.0, class_cfg=(1.5, 2.5)).describe(class_names=("Shirt", "Bag"))
    assert "CFG per class (Shirt 1.5, Bag 2.5) for t/T in 0.2..0.8" in per_class
    assert SamplerOptions(eta=0.5).describe().startswith("DDIM (eta 0.5), 50 steps · CFG 3")
    assert "CFG" not in SamplerOptions().describe(conditional=False)
    assert "up to 2 redraw rounds" in SamplerOptions(redraws=2).describe()
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm++2m"}


def test_parse_setting_brings_browser_values_to_the_field_type():
    from ddpm.options import parse_setting

    assert parse_setting("steps", 10.0) == 10 and isinstance(parse_setting("steps", 10.0), int)
    assert parse_setting("sampler", " DDIM ") == "ddim" and parse_setting("precision", "Auto") == "auto"
    assert parse_setting("cfg", 2) == 2.0 and isinstance(parse_setting("cfg", 2), float)
    assert parse_setting("guidance_interval", [0.2, 0.8]) == (0.2, 0.8)
    for name, raw in (("steps", 2.5), ("redraws", "two"), ("clip_x0", "yes"), ("cfg", None)):
        assert parse_setting(name, raw) == raw  # left for validate, which names the allowed range
    with pytest.raises(ValueError, match="steps must be an integer in 1..100, got 2.5"):
        SamplerOptions().replace(steps=parse_setting("steps", 2.5)).validate(100)
    with pytest.raises(ValueError, match="unknown sampling setting 'colour'"):
        parse_setting("colour", "red")
