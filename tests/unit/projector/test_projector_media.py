"""The read model and a job's media: previews are history, not state; a result keeps its stills."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from schemas import samples
from schemas.events import (
    EventType,
    JobDispatched,
    JobEvent,
    JobPreview,
    JobRequested,
    JobStarted,
    JobSucceeded,
)
from schemas.jobs import JobStatus, Phase
from services.projector.fold import EMPTY_HISTORY, admit_all, fold

JOB = uuid.UUID("0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40")
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def story(attempt_of_preview: int = 1) -> list[JobEvent]:
    request = samples.resolved_request()
    common = {"job_id": JOB, "tenant": "acme"}
    return [
        JobRequested(**common, producer="api", occurred_at=at(0), request=request, request_hash="h"),
        JobDispatched(**common, producer="scheduler", occurred_at=at(1), attempt=1, slot=0, request=request),
        JobStarted(**common, producer="worker-0", occurred_at=at(2), attempt=1, slot=0, worker_id="w"),
        JobPreview(
            **common,
            producer="worker-0",
            occurred_at=at(3),
            attempt=attempt_of_preview,
            step=4,
            total_steps=32,
            preview_key=f"jobs/{JOB}/attempt-1/preview-step-00004.jpg",
            width=212,
            height=120,
        ),
    ]


def test_a_preview_is_kept_in_the_history_and_changes_nothing_but_updated_at() -> None:
    rows, _ = admit_all(EMPTY_HISTORY, story())
    assert [row.event.type for row in rows][-1] is EventType.PREVIEW and rows[-1].applied
    without = fold(rows[:-1])
    view = fold(rows)
    assert view is not None and without is not None
    assert (view.status, view.phase, view.result) == (JobStatus.RUNNING, Phase.LOADING, None)
    assert view.updated_at == at(3) and view.last_seq == rows[-1].seq
    assert replace(view, updated_at=without.updated_at, last_seq=without.last_seq) == without


def test_a_preview_of_an_older_attempt_is_fenced_off() -> None:
    events = story(attempt_of_preview=1)
    redispatched = events[1].model_copy(
        update={"attempt": 2, "event_id": uuid.uuid4(), "occurred_at": at(2.5)}
    )
    rows, _ = admit_all(EMPTY_HISTORY, [*events[:3], redispatched, events[3]])
    assert rows[-1].event.type is EventType.PREVIEW and not rows[-1].applied


def test_a_result_keeps_its_thumbnail_and_spritesheet() -> None:
    events = story()
    result = samples.events()[EventType.SUCCEEDED]
    assert isinstance(result, JobSucceeded)
    done = result.model_copy(update={"job_id": JOB, "attempt": 1, "occurred_at": at(9)})
    rows, _ = admit_all(EMPTY_HISTORY, [*events, done])
    view = fold(rows)
    assert view is not None and view.status is JobStatus.SUCCEEDED and view.result is not None
    assert view.result["thumbnail_key"] == result.result.thumbnail_key
    assert view.result["spritesheet_key"] == result.result.spritesheet_key
    assert view.result["spritesheet"]["columns"] == 4
