"""Sum up `python -m ddpm.evaluate --json` reports of the same settings at several evaluation seeds.

    for s in 0 1 2; do python -m ddpm.evaluate --checkpoint checkpoints/fashion-mnist --cfg 1.5 2 \
        --seed $s --json bench/out/seed$s.json; done
    python research/seed_pooling/seed_pooling.py bench/out/seed0.json bench/out/seed1.json bench/out/seed2.json \
        --json bench/out/pooled.json

At N = 1000 one seed's FD / floor moves by half or more between draws (the floor is a draw too), so a setting is
judged by how it does on every seed, and by its mean FD over the mean of every real-data floor drawn. Prints the
table; --json writes {"reports": [...], "summary": [...]} (what `ddpm.evaluate --seed A B C` once wrote).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ddpm, run from anywhere

from ddpm.evaluate import cfg_text, row_options, sampler_text  # noqa: E402


def seed_summary(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of reports of the same settings at several evaluation seeds, side by side: for every setting, the
    accuracy and FD / floor at each seed, their means, the lowest accuracy and the highest FD / floor.

    Where the reports carry their FDs and floors, each row also has `fd_mean_over_floor_mean`: the samples' mean FD
    over the mean of every real-data floor the reports drew (each seed's own and the shared FLOOR_DRAWS sets). That
    is the expected FD against the expected floor at this N, with a far steadier denominator than one seed's floor
    (the mean of per-seed ratios also carries each floor's noise, and E[1 / floor] > 1 / E[floor]).
    `accuracy_se` is the standard error of the mean accuracy over the seeds (sample sd / sqrt(seeds)).
    """
    if not reports:
        raise ValueError("no reports to summarise")
    seeds = [rep["seed"] for rep in reports]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seed {', '.join(map(str, twice))} comes twice ({seeds}); give reports of distinct seeds")
    keys = [[row_options(r) for r in rep["results"]] for rep in reports]  # older rows read missing keys as defaults
    if any(k != keys[0] for k in keys):
        raise ValueError("the reports evaluate different settings; summarise reports of the same settings only")
    floors = _pooled_floors(reports)
    floor_mean = float(np.mean(floors)) if floors else None
    rows = []
    for i, key in enumerate(keys[0]):
        acc = [rep["results"][i]["accuracy"] for rep in reports]
        ratio = [rep["results"][i]["fd_over_floor"] for rep in reports]
        fd = [rep["results"][i].get("fd") for rep in reports]
        fd_mean = float(np.mean(fd)) if None not in fd else None
        rows.append({**key.to_dict(), "seeds": seeds, "accuracy": acc,
                     "fd_over_floor": ratio, "accuracy_mean": float(np.mean(acc)),
                     "accuracy_se": float(np.std(acc, ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else None,
                     "fd_over_floor_mean": float(np.mean(ratio)), "accuracy_min": min(acc),
                     "fd_over_floor_max": max(ratio), "fd_mean": fd_mean,
                     "floor_mean": floor_mean, "floors_pooled": len(floors),
                     "fd_mean_over_floor_mean": fd_mean / floor_mean if fd_mean is not None and floor_mean else None})
    return rows


def _pooled_floors(reports: Sequence[dict[str, Any]]) -> list[float]:
    """Every real-data floor the reports drew: each seed's own, and each distinct set of shared draws once (every
    seed's report lists the same FLOOR_DRAWS sets). Empty if a report lacks its floor."""
    refs = [rep.get("reference") or {} for rep in reports]
    if any("fd_train_floor" not in r for r in refs):
        return []
    shared = {tuple(r.get("fd_floor_draws") or ()) for r in refs}
    return [r["fd_train_floor"] for r in refs] + [f for draws in sorted(shared) for f in draws]


def seed_table(summary: Sequence[dict[str, Any]]) -> str:
    """seed_summary as a markdown table: accuracy / FD over the floor at each seed, then the means."""
    seeds = summary[0]["seeds"]
    lines = ["| sampler | steps | spacing | eta | CFG | guidance interval | "
             + " | ".join(f"seed {s}" for s in seeds) + " | mean | worst | mean FD / mean floor |",
             "|---|---:|---:|---:|---:|---|" + "---|" * (len(seeds) + 2) + "---:|"]
    for r in summary:
        gi = "-" if not r["guidance_interval"] else "{:g}..{:g}".format(*r["guidance_interval"])
        cells = [f"{a:.1%} / {f:.2f}x" for a, f in zip(r["accuracy"], r["fd_over_floor"])]
        lines.append(f"| {sampler_text(r)} | {r['steps']} | {r['spacing']:g} | {r['eta']:g} | {cfg_text(r)} | {gi} | "
                     + " | ".join(cells) + f" | {r['accuracy_mean']:.1%} / {r['fd_over_floor_mean']:.2f}x | "
                     f"{r['accuracy_min']:.1%} / {r['fd_over_floor_max']:.2f}x | {_pooled_text(r)} |")
    lines += ["", "Each cell: class accuracy / FD over that seed's own real-data floor. Worst: the lowest accuracy "
              "and the highest FD / floor over the seeds (not always the same seed). Mean FD / mean floor: the "
              "samples' mean FD over the mean of all the floors drawn (each seed's and the shared draws; their "
              "number in brackets); ± is the standard error of the mean accuracy."]
    return "\n".join(lines)


def _pooled_text(row: dict[str, Any]) -> str:
    """The 'mean FD / mean floor' cell: e.g. '0.446 / 0.225 = 1.98x (18 floors), 97.0% ± 0.2'."""
    if row.get("fd_mean_over_floor_mean") is None:
        return "-"
    se = f" ± {row['accuracy_se'] * 100:.1f}" if row.get("accuracy_se") is not None else ""
    return (f"{row['fd_mean']:.3f} / {row['floor_mean']:.3f} = {row['fd_mean_over_floor_mean']:.2f}x "
            f"({row['floors_pooled']} floors), {row['accuracy_mean']:.1%}{se}")


def read_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The reports in these files: one report each, or the {"reports": [...]} of an older multi-seed run."""
    reports = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        reports += d["reports"] if "reports" in d else [d]
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="`python -m ddpm.evaluate --json` reports, one seed each")
    parser.add_argument("--json", default=None, help='also write {"reports": [...], "summary": [...]} here')
    args = parser.parse_args(argv)
    try:
        reports = read_reports(args.reports)
        summary = seed_summary(reports)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(seed_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"reports": reports, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
