"""ddpm.budget: the cost of a request in image-steps, the cap a server sets with one variable, and the time limit."""

from __future__ import annotations

import pytest

from ddpm.budget import (
    DEFAULT_MAX_COST,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TIME_LIMIT_S,
    UNLIMITED,
    Budget,
    BudgetError,
    queue_size_from_env,
    request_cost,
    request_words,
)


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
    assert Budget(max_cost=2_700).check_request(9, 300) == 2_700  # at the cap: its cost
    with pytest.raises(BudgetError, match=r"9 images x 301 steps = 2,709 image-steps; this server allows 2,700 per "
                                          r"request \(about 10 s on 2 CPU cores\)"):
        Budget(max_cost=2_700).check_request(9, 301)
    UNLIMITED.check_request(64, 1000, redraws=5, jumps=10, passes=2)


def test_the_message_says_how_the_cost_adds_up():
    assert request_words(1, 1) == "1 image x 1 step"
    assert request_words(4, 50, redraws=2) == "4 images x 50 steps x (1 + 2 redraw rounds)"
    assert request_words(4, 25, jumps=1) == "4 images x 25 steps x (1 + 1 resampling round)"
    assert request_words(8, 30, passes=2) == "8 images x 30 steps x 2 guided passes"


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
    assert Budget(0, 0).describe(queue_size=5) == "Requests on this server: any size; at most 5 wait in the queue."


def test_the_queue_size_is_one_variable_too():
    assert queue_size_from_env({}) == DEFAULT_QUEUE_SIZE == 16
    assert queue_size_from_env({"DDPM_QUEUE_SIZE": " 3 "}) == 3
    assert queue_size_from_env({"DDPM_QUEUE_SIZE": "0"}) is None  # no limit
    for bad in ("-1", "many", "2.5"):
        with pytest.raises(ValueError, match=rf"DDPM_QUEUE_SIZE='{bad}': expected a whole number of requests >= 0"):
            queue_size_from_env({"DDPM_QUEUE_SIZE": bad})


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
