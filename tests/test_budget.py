"""ddpm.budget: the cost of a request in image-steps, the cap a server sets with one variable, and the time limit."""

from __future__ import annotations

import pytest

from ddpm.budget import DEFAULT_MAX_COST, DEFAULT_TIME_LIMIT_S, Budget, BudgetError, request_cost


def test_cost_counts_images_steps_and_rounds():
    assert request_cost(16, 50) == 800
    assert request_cost(16, 50, redraws=2) == 2_400
    assert request_cost(4, 30, jumps=1) == 240
    assert request_cost(8, 50, passes=2) == 800


def test_the_cap_rejects_more_with_a_message_that_says_what_to_change():
    budget = Budget(max_cost=1_000)
    budget.check(1_000, "16 images x 50 steps")  # at the cap: fine
    with pytest.raises(BudgetError, match=r"16 images x 1000 steps = 16,000 image-steps; this server allows 1,000 "
                                          r"per request .* use fewer steps or images"):
        budget.check(16_000, "16 images x 1000 steps")
    Budget(max_cost=0).check(10**9, "huge")  # 0 = no cap


def test_one_variable_sets_it():
    assert Budget.from_env({}) == Budget(DEFAULT_MAX_COST, DEFAULT_TIME_LIMIT_S)
    assert Budget.from_env({"DDPM_MAX_COST": "20_000", "DDPM_TIME_LIMIT_S": "45"}) == Budget(20_000, 45.0)
    assert Budget.from_env({"DDPM_MAX_COST": "0"}).max_cost == 0
    with pytest.raises(ValueError, match="DDPM_MAX_COST='lots': expected a whole number"):
        Budget.from_env({"DDPM_MAX_COST": "lots"})
    with pytest.raises(ValueError, match="max_cost must be an integer >= 0"):
        Budget.from_env({"DDPM_MAX_COST": "-5"})
    with pytest.raises(ValueError, match="DDPM_TIME_LIMIT_S='soon'"):
        Budget.from_env({"DDPM_TIME_LIMIT_S": "soon"})
    assert "up to 8,000 image-steps" in Budget().describe() and "stopped after 120 s" in Budget().describe()
    assert Budget(0, 0).describe() == "Requests on this server: any size."


def test_the_time_limit_stops_a_running_request():
    now = [0.0]

    def clock() -> float:
        return now[0]

    def steps():
        for i in range(10):
            now[0] += 1.0  # each step takes a second
            yield i

    seen = []
    with pytest.raises(BudgetError, match="ran longer than this server's limit of 3.5 s"):
        for i in Budget(time_limit_s=3.5).limit(steps(), clock):
            seen.append(i)
    assert seen == [0, 1, 2, 3]
    now[0] = 0.0
    assert list(Budget(time_limit_s=0).limit(steps(), clock)) == list(range(10))
