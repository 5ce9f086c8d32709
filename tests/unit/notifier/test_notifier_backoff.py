"""The retry schedule: exponential bound, full jitter, cap, and giving up by age."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from services.notifier.backoff import Backoff

SCHEDULE = Backoff(initial=30, cap=3600, give_up_after=86_400)
T0 = datetime(2026, 12, 6, tzinfo=UTC)


def test_the_bound_doubles_from_initial_up_to_the_cap() -> None:
    bounds = [SCHEDULE.bound(n) for n in range(1, 10)]
    assert bounds == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert SCHEDULE.bound(10_000) == 3600  # no overflow however many failures


def test_each_delay_is_a_full_jitter_draw_below_its_bound() -> None:
    rng = random.Random(7)
    for failures in range(1, 12):
        delays = [SCHEDULE.delay(failures, rng.uniform) for _ in range(200)]
        assert all(0 <= d <= SCHEDULE.bound(failures) for d in delays)
        # Full jitter spreads over the whole range, not around the bound.
        assert min(delays) < SCHEDULE.bound(failures) * 0.1
        assert max(delays) > SCHEDULE.bound(failures) * 0.9


def test_the_next_attempt_is_now_plus_the_drawn_delay() -> None:
    now = T0 + timedelta(minutes=5)
    assert SCHEDULE.next_attempt(3, now, T0, lambda lo, hi: hi) == now + timedelta(seconds=120)
    assert SCHEDULE.next_attempt(3, now, T0, lambda lo, hi: lo) == now


def test_a_delivery_is_given_up_once_it_is_as_old_as_the_limit() -> None:
    assert SCHEDULE.next_attempt(40, T0 + timedelta(hours=23, minutes=59), T0) is not None
    assert SCHEDULE.next_attempt(41, T0 + timedelta(hours=24), T0) is None


def test_retries_at_the_defaults_span_hours_before_giving_up() -> None:
    """With the largest draws the schedule reaches the hour cap after 8 failures, so a day holds ~30
    attempts; the jitter only makes them more."""
    at, failures = T0, 0
    while (nxt := SCHEDULE.next_attempt(failures + 1, at, T0, lambda lo, hi: hi)) is not None:
        at, failures = nxt, failures + 1
    assert 25 <= failures <= 35
    assert at - T0 >= timedelta(hours=23)
