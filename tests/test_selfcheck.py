"""The model's check of its own samples (ddpm.selfcheck) and sampling with redraws, on data whose exact denoiser is
known: every class is a mixture of point masses, so E[eps | x_t, c] has a closed form."""

from __future__ import annotations

import pytest
import torch

from ddpm.options import SamplerOptions
from ddpm.samplers import run_to_end, sample_steps
from ddpm.schedule import NoiseSchedule, ScheduleConfig
from ddpm.selfcheck import (
    CHECK_SEED_OFFSET,
    check_noise,
    check_seeds,
    check_timesteps,
    class_errors,
    redraw_seeds,
    redraw_steps,
    relative_margin,
)

SHAPE = (1, 2, 2)
MODES = torch.tensor([[0.8, 0.8, 0.8, 0.8], [-0.8, -0.8, -0.8, -0.8], [0.8, -0.8, 0.8, -0.8]])


class MixtureOracle(torch.nn.Module):
    """The exact eps-prediction for data where class c is a mixture of the point masses MODES with weights
    weights[c]; label len(weights) (the null label) is the mixture of all classes, equally likely."""

    def __init__(self, schedule: NoiseSchedule, weights: list[list[float]]):
        super().__init__()
        self.alpha_bar = schedule.alpha_bar.float()
        w = torch.tensor(weights, dtype=torch.float32)
        self.w = torch.cat([w, w.mean(0, keepdim=True)])  # (classes + 1, modes)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.float().flatten(1)  # (B, D)
        a = self.alpha_bar[t].view(-1, 1)
        d2 = ((x[:, None, :] - a.sqrt()[:, None] * MODES[None]) ** 2).sum(-1)  # (B, modes)
        logp = torch.log(self.w[y].clamp_min(1e-30)) - d2 / (2 * (1 - a))
        x0 = torch.softmax(logp, dim=1) @ MODES  # E[x0 | x_t, c]
        return ((x - a.sqrt() * x0) / (1 - a).sqrt()).view(-1, *SHAPE)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(name="cosine", timesteps=1000))


def test_class_errors_match_the_closed_form_for_point_masses(schedule):
    # one point mass per class: for x0 = mode y, class y's denoiser is exact (error 0) and class c's error is
    # alpha_bar / (1 - alpha_bar) * mean((mode_y - mode_c)^2), averaged over the check's time steps
    oracle = MixtureOracle(schedule, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    x0 = MODES.view(-1, *SHAPE)
    ts = [300, 600, 900]
    errors = class_errors(oracle, schedule, x0, num_classes=3, seeds=[0, 1, 2], timesteps=ts)
    a = schedule.alpha_bar[ts].double()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for y in range(3):
        for c in range(3):
            expected[y, c] = (a / (1 - a)).mean() * ((MODES[y] - MODES[c]).double() ** 2).mean()
    assert errors.double() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(errors.argmin(1), torch.arange(3))
    # an image's check does not depend on its batch
    alone = class_errors(oracle, schedule, x0[1:2], num_classes=3, seeds=[1], timesteps=ts)
    batched = class_errors(oracle, schedule, x0, num_classes=3, seeds=[0, 1, 2], timesteps=ts, batch_size=1)
    assert torch.allclose(alone, errors[1:2], atol=1e-6) and torch.allclose(batched, errors, atol=1e-6)


def test_relative_margin_and_seeds():
    errors = torch.tensor([[1.0, 2.0, 1.5], [2.0, 1.0, 4.0]])
    m = relative_margin(errors, torch.tensor([0, 0]))
    assert m.tolist() == pytest.approx([0.5, -0.5])  # (1.5 - 1) / 1 and (1 - 2) / 2
    with pytest.raises(ValueError, match="errors must be"):
        relative_margin(errors, torch.tensor([0]))
    assert check_timesteps(1000) == [300, 400, 500, 599, 699, 749, 799, 849, 899]
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        check_timesteps(1000, (0.0, 0.5))
    assert redraw_seeds([5, 6], 0) == [5, 6] and redraw_seeds([5], 2) == [5 + 2 * (2**40 + 1)]
    assert redraw_seeds([2**63 - 1], 1) == [(2**63 - 1 + 2**40 + 1) % 2**63]
    assert check_seeds([0]) == [CHECK_SEED_OFFSET]
    # the check noise of an image is its own generator's, not its x_T
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(check_noise([0], 1, SHAPE)[0, 0], x_T)
    assert not torch.equal(check_noise(check_seeds([0]), 1, SHAPE)[0, 0], x_T)


def _run(oracle, schedule, n, redraws, seed=0):
    """sample_steps wrapped by redraw_steps, as Pipeline.stream does."""
    options = SamplerOptions(sampler="ddim", steps=25, cfg=1.0, redraws=redraws)
    labels = torch.zeros(n, dtype=torch.long)
    first = sample_steps(oracle, schedule, n=n, labels=labels, seed=seed, options=options, null_label=3,
                         image_shape=SHAPE)
    return list(redraw_steps(oracle, schedule, first, seeds=[seed + i for i in range(n)], labels=labels,
                             options=options, num_classes=3, image_shape=SHAPE, device=torch.device("cpu")))


def nearest_mode(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.flatten(1), MODES).argmin(1)


def test_redraws_replace_the_samples_the_model_reads_as_another_class(schedule):
    # class 0 puts 30% of its mass on class 1's mode: those samples are read as class 1 and drawn again
    oracle = MixtureOracle(schedule, [[0.7, 0.3, 0.0], [0, 1, 0], [0, 0, 1]])
    n = 60
    plain = _run(oracle, schedule, n, redraws=0)
    first = nearest_mode(plain[-1].x_t)
    assert len(plain) == 25 and {s.draw for s in plain} == {0}
    assert 8 <= int((first == 1).sum()) <= 30  # about 30% land on the other class's mode
    steps = _run(oracle, schedule, n, redraws=3)
    final = steps[-1].x_t
    kept = nearest_mode(final)
    assert int((kept == 1).sum()) <= 2 < int((first == 1).sum())  # 0.3^4 of them left on average
    # the first draw is the same; images read as class 0 are never redrawn
    assert [torch.equal(a.x_t, b.x_t) for a, b in zip(plain, steps[:25])] == [True] * 25
    ok = first == 0
    assert torch.equal(final[ok], plain[-1].x_t[ok])
    # redraw rounds re-run the steps (draw 1, 2, ...) with the other images held at their final values
    draws = [s.draw for s in steps]
    assert draws[:25] == [0] * 25 and draws[25:50] == [1] * 25 and max(draws) <= 3
    mid = steps[30]
    assert torch.equal(mid.x_t[ok], plain[-1].x_t[ok]) and not torch.equal(mid.x_t[~ok], plain[-1].x_t[~ok])
    assert torch.equal(run_to_end(iter(steps)), final)
    # the same image comes out alone or in the batch, with or without its neighbours' redraws
    alone = _run(oracle, schedule, 1, redraws=3, seed=7)[-1].x_t
    assert torch.allclose(alone[0], final[7], atol=1e-5)


def test_redraws_are_validated(schedule):
    oracle = MixtureOracle(schedule, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    for bad, message in [(-1, "redraws must be an integer in 0..5"), (6, "redraws must be an integer"),
                         (True, "redraws must be an integer")]:
        with pytest.raises(ValueError, match=message):
            _run(oracle, schedule, 2, redraws=bad)
    with pytest.raises(ValueError, match="redraws need a class-conditional model"):
        SamplerOptions(redraws=1).validate(1000, num_classes=None)
    with pytest.raises(ValueError, match="redraw_threshold must be a number in \\[-1, 1\\]"):
        SamplerOptions(redraws=1, redraw_threshold=2.0).validate(1000, num_classes=3)
