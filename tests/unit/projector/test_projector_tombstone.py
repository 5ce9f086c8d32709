"""A job's tombstone (`job.deleted`) in the projection rules: the row goes, nothing after it counts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from schemas.catalog import Quality
from schemas.events import (
    DeletionReason,
    EventType,
    JobDeleted,
    JobDispatched,
    JobEvent,
    JobRequested,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import Priority, ResolvedRequest
from services.projector.fold import EMPTY_HISTORY, JobChange, admit, admit_all, fold, history_of

JOB = uuid.UUID("3c1f2b9a-6a7e-4f1d-9d0e-5b8a7c6d4e21")
T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _request() -> ResolvedRequest:
    return ResolvedRequest(
        prompt="a kite over the dunes", negative_prompt=None, model="tiny-mochi", width=96, height=64,
        num_frames=25, fps=30, quality=Quality.LOW, num_inference_steps=2, seed=1, guidance_scale=4.5,
        priority=Priority.INTERACTIVE,
    )  # fmt: skip


def _story() -> list[JobEvent]:
    """Requested, dispatched, started, succeeded: a finished job."""
    result = VideoResult(
        video_key=f"jobs/{JOB}/attempt-1/video.mp4", poster_key=None, size_bytes=9, width=96, height=64,
        fps=30, frames=25, duration_seconds=25 / 30,
    )  # fmt: skip
    return [
        JobRequested(
            job_id=JOB, occurred_at=_at(0), producer="api", request=_request(), request_hash="0" * 64
        ),
        JobDispatched(job_id=JOB, occurred_at=_at(1), producer="s", attempt=1, slot=0, request=_request()),
        JobStarted(job_id=JOB, occurred_at=_at(2), producer="w", attempt=1, slot=0, worker_id="w"),
        JobSucceeded(
            job_id=JOB, occurred_at=_at(3), producer="w", attempt=1, result=result, generation_seconds=1
        ),
    ]  # fmt: skip


def _tombstone(seconds: float = 10, attempt: int = 1) -> JobDeleted:
    return JobDeleted(
        job_id=JOB, occurred_at=_at(seconds), producer="api", attempt=attempt, objects_deleted=3
    )


def test_the_tombstone_round_trips_with_its_reason() -> None:
    event = _tombstone()
    assert event.type is EventType.DELETED and event.reason is DeletionReason.CLIENT
    expired = JobDeleted(job_id=JOB, producer="projector", reason=DeletionReason.RETENTION)
    assert JobDeleted.model_validate_json(expired.model_dump_json()) == expired


def test_a_deleted_job_has_no_row_and_keeps_only_its_counted_tombstone() -> None:
    rows, history = admit_all(EMPTY_HISTORY, [*_story(), _tombstone()])
    assert fold(rows[:-1]) is not None  # the finished job, before its deletion
    tombstone = rows[-1]
    # After the terminal event nothing else counts, but the tombstone does: the job's streams end on it.
    assert tombstone.event.type is EventType.DELETED and tombstone.applied and tombstone.seq == 4
    assert fold(rows) is None and history.deleted
    assert JobChange(JOB, tuple(rows), None).deleted
    assert not JobChange(JOB, tuple(rows[:-1]), fold(rows[:-1])).deleted


def test_nothing_of_the_job_is_stored_after_its_tombstone() -> None:
    story = _story()
    # What the store keeps of a deleted job: its tombstone alone.
    kept, _ = admit_all(EMPTY_HISTORY, [*story[:2], _tombstone(5)])
    history = history_of([kept[-1]])
    late = [*story[2:], _tombstone(12)]  # the slot's last events, a second delete
    assert admit_all(history, late) == ([], history)
    # Even a request read after the tombstone (a replay reads the two topics in any interleaving).
    assert admit(history, story[0]) == (None, history)


def test_every_interleaving_of_the_two_topics_ends_with_no_row_and_one_tombstone() -> None:
    request, *events = [*_story(), _tombstone()]
    outcomes = set()
    for where in range(len(events) + 1):  # jobs.requested read at any point of jobs.events
        order = [*events[:where], request, *events[where:]]
        rows, _ = admit_all(EMPTY_HISTORY, order)
        assert fold(rows) is None
        tombstones = [(row.seq, row.applied) for row in rows if row.event.type is EventType.DELETED]
        outcomes.add(tuple(tombstones))
    assert outcomes == {((4, True),)}


def test_a_tombstone_of_a_running_job_still_counts() -> None:
    story = _story()
    for cut in range(1, 4):
        rows, _ = admit_all(EMPTY_HISTORY, [*story[:cut], _tombstone(attempt=0)])
        assert rows[-1].applied and fold(rows) is None
