"""KnownEvents: the projector's memory of decoded events, by row, bounded and most recently used last."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from schemas.events import JobCancelRequested
from services.projector.store import KnownEvents, RowKey

JOB = uuid.UUID("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")


def row(seq: int) -> tuple[RowKey, JobCancelRequested]:
    event = JobCancelRequested(
        job_id=JOB, occurred_at=datetime(2026, 1, 1, tzinfo=UTC), producer="t", attempt=1
    )
    return (event.event_id, JOB, seq), event


def test_keeps_at_most_its_limit_dropping_the_least_recently_used() -> None:
    known = KnownEvents(limit=3)
    rows = [row(seq) for seq in range(4)]
    for key, event in rows[:3]:
        known.add(key, event)
    assert known.get(rows[0][0]) is rows[0][1]  # used: now the most recent
    known.add(*rows[3])
    assert len(known) == 3
    assert known.get(rows[1][0]) is None  # the least recently used went
    assert [known.get(key) for key, _ in (rows[0], rows[2], rows[3])] == [rows[0][1], rows[2][1], rows[3][1]]


def test_a_row_is_known_by_its_event_id_job_and_seq_together() -> None:
    known = KnownEvents()
    key, event = row(5)
    known.add(key, event)
    event_id, job_id, seq = key
    assert known.get((event_id, job_id, seq)) is event
    assert known.get((event_id, job_id, seq + 1)) is None  # the same id at another seq is another row
    assert known.get((event_id, uuid.uuid4(), seq)) is None  # or of another job
