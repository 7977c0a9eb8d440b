"""research/guidance/class_guidance.py: mixing per-class rows and the greedy path, on synthetic rows with known
answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location(
    "class_guidance", Path(__file__).with_name("class_guidance.py"))
cg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cg)


def test_mix_takes_each_class_from_its_own_row():
    n, k = 3, 4
    rows = {w: (np.full(n * k, w), np.arange(n * k)[:, None] + 100 * w) for w in (1.0, 2.0)}
    pred, feats = cg.mix(lambda w, c: (rows[w][0][c * n:(c + 1) * n], rows[w][1][c * n:(c + 1) * n]),
                         [2.0, 1.0, 1.0, 2.0])
    assert pred.tolist() == [2.0] * 3 + [1.0] * 6 + [2.0] * 3
    # class c keeps its own images (positions c*n..c*n+n-1) whichever row they come from
    assert feats[:, 0].tolist() == [200, 201, 202, 103, 104, 105, 106, 107, 108, 209, 210, 211]


def test_greedy_path_takes_the_cheapest_accuracy_first():
    # additive score: raising class c one step gains gain[c] accuracy at cost[c] FD; class 2 is free and gains
    gain, cost = [0.01, 0.02, 0.005], [0.5, 0.1, -0.1]
    ws = [1.0, 2.0, 3.0]

    def score(scales):
        steps = [ws.index(w) for w in scales]
        return 0.9 + sum(g * s for g, s in zip(gain, steps)), 1.0 + sum(c * s for c, s in zip(cost, steps))

    path = cg.greedy_path(score, 3, ws)
    assert len(path) == 1 + 3 * 2  # every class raised from the lowest w to the highest, one step at a time
    assert path[0][0] == [1.0, 1.0, 1.0] and path[-1][0] == [3.0, 3.0, 3.0]
    moved = [next(c for c in range(3) if a[c] != b[c]) for (a, _, _), (b, _, _) in zip(path, path[1:])]
    # class 2 gains accuracy AND lowers the FD: both its steps first; then class 1 (0.2 per unit FD) before class 0
    assert moved == [2, 2, 1, 1, 0, 0]
    for scales, acc, fd in path:
        assert (acc, fd) == score(scales)


def test_greedy_path_without_accuracy_gain_takes_the_least_fd():
    def score(scales):  # accuracy never moves; class 0 costs more FD than class 1
        return 0.9, 1.0 + 0.3 * (scales[0] - 1) + 0.1 * (scales[1] - 1)

    path = cg.greedy_path(score, 2, [2.0, 1.0])  # ws in any order
    assert [p[0] for p in path] == [[1.0, 1.0], [1.0, 2.0], [2.0, 2.0]]


def test_neighbours_move_one_class_one_step():
    ws = [2.0, 1.5, 2.5]  # any order
    got = cg.neighbours([1.5, 2.0, 2.5], ws, [0, 1, 2])
    assert got == [(0, [2.0, 2.0, 2.5]), (1, [1.5, 1.5, 2.5]), (1, [1.5, 2.5, 2.5]), (2, [1.5, 2.0, 2.0])]
    assert cg.neighbours([1.5, 2.0, 2.5], ws, [1]) == [(1, [1.5, 1.5, 2.5]), (1, [1.5, 2.5, 2.5])]


def test_parse_vector_names_what_is_wrong():
    assert cg.parse_vector([1.5, 2.0], 2, [1.5, 2.0], "--score") == [1.5, 2.0]
    assert cg.parse_vector(None, 2, [1.5, 2.0], "--score") is None
    for bad in ([1.5], [1.5, 1.75]):
        with pytest.raises(ValueError, match=r"--score needs 2 scales, each one of --w \(1.5, 2\)"):
            cg.parse_vector(bad, 2, [1.5, 2.0], "--score")


@pytest.mark.parametrize("script", ["class_guidance", "guidance_variants"])
def test_an_unsupported_bf16_is_refused_before_any_sampling(script, monkeypatch, capsys):
    """Both experiments sample with --precision auto (bf16 only where the CPU has it); asking for bf16 on a CPU
    without it stops at once with the reason, before a checkpoint is even loaded."""
    import ddpm.device

    s = importlib.util.spec_from_file_location(script, Path(__file__).with_name(f"{script}.py"))
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    monkeypatch.setattr(ddpm.device, "bf16_supported", lambda device: False)
    args = ["--tune", "0", "--check", "1"] if script == "class_guidance" else ["cfg:2"]
    with pytest.raises(SystemExit):
        module.main([*args, "--precision", "bf16", "--checkpoint", "/nonexistent"])
    assert "bf16 autocast is not supported" in capsys.readouterr().err
