"""What one request may cost on a shared server: a cap on network work, and a time limit while it runs.

The cost of a request is counted in image-steps, one image through one denoising step:

    cost = images x steps x (1 + redraw rounds) x (1 + resampling jumps) x passes

(passes = 2 when every step needs two guided predictions, as interpolation between two classes does). On the
2 CPU cores of a free Hugging Face Space the shipped 28x28 model runs about 270 image-steps a second with guidance
(the app's default 16 images x 50 steps take ~3 s), so the default cap, 8,000, is a request of about 30 s. A Space
sets its own with one environment variable, DDPM_MAX_COST (and DDPM_TIME_LIMIT_S for the time limit); 0 = no cap.
DDPM_QUEUE_SIZE sets how many requests may wait in the app's queue (gradio turns more away).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

COST_ENV = "DDPM_MAX_COST"
TIME_ENV = "DDPM_TIME_LIMIT_S"
QUEUE_ENV = "DDPM_QUEUE_SIZE"
DEFAULT_MAX_COST = 8_000  # image-steps: ~30 s on 2 CPU cores for the 28x28 models
DEFAULT_TIME_LIMIT_S = 120.0  # a running request is stopped after this long (queueing does not count)
IMAGE_STEPS_PER_S = 270  # the shipped 28x28 model with guidance on 2 CPU cores, for the messages
DEFAULT_QUEUE_SIZE = 16  # requests waiting at most; a run takes ~3 s, so the last one waits about a minute

S = TypeVar("S")


class BudgetError(ValueError):
    """A request over the server's budget (cost or time); the message says what the limit is and what to change."""


def request_cost(images: int, steps: int, *, redraws: int = 0, jumps: int = 0, passes: int = 1) -> int:
    """Image-steps of a request (see the module docstring)."""
    return int(images) * int(steps) * (1 + int(redraws)) * (1 + int(jumps)) * int(passes)


def request_words(images: int, steps: int, *, redraws: int = 0, jumps: int = 0, passes: int = 1) -> str:
    """How request_cost adds up, for a message: "4 images x 50 steps x (1 + 2 redraw rounds)"."""
    parts = [f"{images} image{'s' if images != 1 else ''}", f"{steps} step{'s' if steps != 1 else ''}"]
    if redraws:
        parts.append(f"(1 + {redraws} redraw round{'s' if redraws != 1 else ''})")
    if jumps:
        parts.append(f"(1 + {jumps} resampling round{'s' if jumps != 1 else ''})")
    if passes != 1:
        parts.append(f"{passes} guided passes")
    return " x ".join(parts)


def queue_size_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """How many requests may wait in the queue: DDPM_QUEUE_SIZE (default 16); None for 0 (no limit)."""
    env = os.environ if env is None else env
    raw = env.get(QUEUE_ENV, "").strip()
    try:
        size = int(raw) if raw else DEFAULT_QUEUE_SIZE
    except ValueError:
        size = -1
    if size < 0:
        raise ValueError(f"{QUEUE_ENV}={raw!r}: expected a whole number of requests >= 0 (0 = no limit)")
    return size or None


@dataclass(frozen=True)
class Budget:
    """max_cost: the largest request in image-steps (0 = any); time_limit_s: seconds a request may run (0 = any)."""

    max_cost: int = DEFAULT_MAX_COST
    time_limit_s: float = DEFAULT_TIME_LIMIT_S

    def __post_init__(self) -> None:
        if isinstance(self.max_cost, bool) or not isinstance(self.max_cost, int) or self.max_cost < 0:
            raise ValueError(f"max_cost must be an integer >= 0 (0 = no cap), got {self.max_cost!r}")
        if not isinstance(self.time_limit_s, (int, float)) or not math.isfinite(self.time_limit_s) \
                or self.time_limit_s < 0:
            raise ValueError(f"time_limit_s must be a number of seconds >= 0 (0 = no limit), got {self.time_limit_s!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Budget:
        """The budget DDPM_MAX_COST and DDPM_TIME_LIMIT_S set (defaults where unset); a bad value is a ValueError."""
        env = os.environ if env is None else env
        cost, limit = env.get(COST_ENV, "").strip(), env.get(TIME_ENV, "").strip()
        try:
            max_cost = int(cost.replace("_", "").replace(",", "")) if cost else DEFAULT_MAX_COST
        except ValueError:
            raise ValueError(f"{COST_ENV}={cost!r}: expected a whole number of image-steps (0 = no cap)") from None
        try:
            time_limit = float(limit) if limit else DEFAULT_TIME_LIMIT_S
        except ValueError:
            raise ValueError(f"{TIME_ENV}={limit!r}: expected a number of seconds (0 = no limit)") from None
        return cls(max_cost=max_cost, time_limit_s=time_limit)

    def describe(self, queue_size: int | None = None) -> str:
        """One line for the page: what a request may cost here (and how many may wait, given queue_size)."""
        cost = "any size" if not self.max_cost else f"up to {self.max_cost:,} image-steps (images x steps x rounds)"
        limit = "" if not self.time_limit_s else f", stopped after {self.time_limit_s:g} s"
        queue = f"; at most {queue_size} wait in the queue" if queue_size else ""
        return f"Requests on this server: {cost}{limit}{queue}."

    def check(self, cost: int, what: str) -> None:
        """Raise BudgetError if a request of `cost` image-steps (`what`: how it adds up) is over the cap."""
        if self.max_cost and cost > self.max_cost:
            seconds = max(1, round(self.max_cost / IMAGE_STEPS_PER_S))
            raise BudgetError(f"this request is {what} = {cost:,} image-steps; this server allows {self.max_cost:,} "
                              f"per request (about {seconds} s on 2 CPU cores): use fewer steps or images")

    def check_request(self, images: int, steps: int, *, redraws: int = 0, jumps: int = 0, passes: int = 1) -> int:
        """check() for a request of request_cost(...), its message saying how the cost adds up; returns the cost."""
        cost = request_cost(images, steps, redraws=redraws, jumps=jumps, passes=passes)
        self.check(cost, request_words(images, steps, redraws=redraws, jumps=jumps, passes=passes))
        return cost

    def limit(self, steps: Iterable[S], clock: Callable[[], float] = time.monotonic) -> Iterator[S]:
        """The same items, but a BudgetError once the request has run longer than time_limit_s."""
        start = clock()
        for item in steps:
            yield item
            if self.time_limit_s and clock() - start > self.time_limit_s:
                raise BudgetError(f"this request ran longer than this server's limit of {self.time_limit_s:g} s "
                                  "per request and was stopped: use fewer steps or images")


UNLIMITED = Budget(max_cost=0, time_limit_s=0)  # the library's default: any request, any time
