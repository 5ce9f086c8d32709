"""When a failed delivery is tried again, and when it is given up.

Exponential backoff with full jitter (a uniform draw between 0 and the exponential bound): receivers that
went down together are not hit again by every sender at the same instant when they come back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Backoff:
    """The bound after the n-th failure is `initial * 2**(n-1)`, capped at `cap`; past `give_up_after`
    since the delivery was queued (or redelivered) it is dead instead."""

    initial: float
    cap: float
    give_up_after: float

    def bound(self, failures: int) -> float:
        """The longest delay after `failures` failed attempts (1 or more)."""
        exponent = min(max(failures - 1, 0), 62)  # 2**62 s is past any cap; a bigger power only overflows
        return min(self.cap, self.initial * 2.0**exponent)

    def delay(self, failures: int, draw: Callable[[float, float], float] = random.uniform) -> float:
        """A delay drawn uniformly from [0, bound(failures)]."""
        return draw(0.0, self.bound(failures))

    def next_attempt(
        self,
        failures: int,
        now: datetime,
        retry_since: datetime,
        draw: Callable[[float, float], float] = random.uniform,
    ) -> datetime | None:
        """When to try again after `failures` failures; None once the delivery is to be given up."""
        if (now - retry_since).total_seconds() >= self.give_up_after:
            return None
        return now + timedelta(seconds=self.delay(failures, draw))
