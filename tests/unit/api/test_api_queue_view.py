"""The api's copy of the scheduler's queue view: positions and ETAs by lookup, aged, never stale."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from schemas.events import utcnow
from schemas.jobs import Priority
from schemas.queue import QueueView
from services.api.queue_view import Eta, QueueViewFollower, parse_view, place_of
from services.common.settings import CommonSettings

A, B, RUNNING = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def follower(age_seconds: float, max_age: float = 30.0) -> QueueViewFollower:
    view = QueueView(
        generated_at=utcnow() - timedelta(seconds=age_seconds),
        lanes={Priority.INTERACTIVE: [(A, 10.0, 20.0), (B, None, 20.0)], Priority.BATCH: []},
        held=[(RUNNING, 0.0, 10.0)],
    )
    queue = QueueViewFollower(CommonSettings(), "unused", max_age_seconds=max_age)
    queue.take(view.model_dump_json().encode())
    return queue


def test_a_waiting_job_has_its_place_and_eta_less_the_view_s_age() -> None:
    position, eta = follower(age_seconds=4).lookup(A)
    assert position == 1
    assert eta is not None
    assert 5.5 < eta.wait_seconds < 6.1 and eta.run_seconds == 20.0


def test_an_unmeasured_job_has_a_place_but_no_eta() -> None:
    assert follower(age_seconds=0).lookup(B) == (2, None)


def test_a_held_job_has_an_eta_and_no_place() -> None:
    position, eta = follower(age_seconds=0).lookup(RUNNING)
    assert position is None and eta is not None and eta.wait_seconds == 0


def test_an_unknown_job_or_a_stale_view_gives_nothing() -> None:
    assert follower(age_seconds=0).lookup(uuid.uuid4()) == (None, None)
    assert follower(age_seconds=40, max_age=30).lookup(A) == (None, None)
    assert QueueViewFollower(CommonSettings(), "unused").lookup(A) == (None, None)


def test_time_past_the_wait_is_spent_from_the_run() -> None:
    assert place_of((1, 10.0, 20.0), age=15.0) == (1, Eta(wait_seconds=0.0, run_seconds=15.0))
    assert place_of((1, 10.0, 20.0), age=50.0) == (1, Eta(wait_seconds=0.0, run_seconds=0.0))


def test_a_view_of_another_schema_version_is_refused() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        parse_view(b'{"schema_version": 2, "generated_at": "2026-12-05T00:00:00Z", "lanes": {}}')
