"""The projection rules (services/projector/fold.py): seq, applied, and the fold into a jobs row."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalog import Quality
from schemas.envelope import encode_event
from schemas.events import (
    ErrorCode,
    JobCancelled,
    JobCancelRequested,
    JobCheckpointed,
    JobDispatched,
    JobError,
    JobEvent,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import JobStatus, Phase, Priority, ResolvedRequest
from services.projector.consumer import decode
from services.projector.fold import (
    EMPTY_HISTORY,
    History,
    JobView,
    StoredEvent,
    admit,
    admit_all,
    batch_changes,
    fold,
    history_of,
    is_applied,
)
from services.projector.replay import check_schema_name, compare_snapshots
from services.projector.settings import ProjectorSettings
from services.projector.store import Snapshot, unfit

JOB = uuid.UUID("0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40")
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request() -> ResolvedRequest:
    return ResolvedRequest(
        prompt="a fox in the snow",
        negative_prompt=None,
        model="tiny-mochi",
        width=96,
        height=64,
        num_frames=25,
        fps=30,
        quality=Quality.LOW,
        num_inference_steps=2,
        seed=7,
        guidance_scale=4.5,
        priority=Priority.BATCH,
    )


def requested(seconds: float = 0.0, key: str | None = "k-1") -> JobRequested:
    return JobRequested(
        job_id=JOB, occurred_at=at(seconds), producer="api", request=request(), tenant="acme",
        idempotency_key=key, request_hash="ab" * 32,
    )  # fmt: skip


def dispatched(attempt: int, seconds: float, slot: int = 1) -> JobDispatched:
    return JobDispatched(
        job_id=JOB,
        occurred_at=at(seconds),
        producer="scheduler",
        attempt=attempt,
        slot=slot,
        request=request(),
    )


def started(attempt: int, seconds: float, slot: int = 1) -> JobStarted:
    return JobStarted(
        job_id=JOB, occurred_at=at(seconds), producer="w", attempt=attempt, slot=slot, worker_id="w"
    )


def progress(attempt: int, seconds: float, step: int, total: int = 4) -> JobProgress:
    return JobProgress(
        job_id=JOB, occurred_at=at(seconds), producer="w", attempt=attempt, phase=Phase.DENOISING,
        progress=step / total, step=step, total_steps=total, seconds_per_step=0.5,
    )  # fmt: skip


def checkpointed(attempt: int, seconds: float, key: str = "ck/1") -> JobCheckpointed:
    return JobCheckpointed(
        job_id=JOB,
        occurred_at=at(seconds),
        producer="w",
        attempt=attempt,
        step=2,
        total_steps=4,
        checkpoint_key=key,
    )


def result() -> VideoResult:
    return VideoResult(
        video_key="v.mp4", poster_key=None, size_bytes=10, width=96, height=64, fps=30, frames=25,
        duration_seconds=25 / 30,
    )  # fmt: skip


def succeeded(attempt: int, seconds: float) -> JobSucceeded:
    return JobSucceeded(
        job_id=JOB,
        occurred_at=at(seconds),
        producer="w",
        attempt=attempt,
        result=result(),
        generation_seconds=1.0,
    )


def failed(attempt: int, seconds: float) -> JobFailed:
    error = JobError(code=ErrorCode.INTERNAL, message="boom")
    return JobFailed(job_id=JOB, occurred_at=at(seconds), producer="w", attempt=attempt, error=error)


def cancelled(attempt: int, seconds: float) -> JobCancelled:
    return JobCancelled(job_id=JOB, occurred_at=at(seconds), producer="w", attempt=attempt)


def retrying(attempt: int, seconds: float) -> JobRetrying:
    return JobRetrying(
        job_id=JOB, occurred_at=at(seconds), producer="scheduler", attempt=attempt, reason="slot lost",
        next_attempt=attempt + 1,
    )  # fmt: skip


def project(events: Sequence[JobEvent]) -> tuple[list[StoredEvent], JobView | None]:
    """What the store would hold after receiving `events` one by one."""
    rows, _ = admit_all(EMPTY_HISTORY, events)
    return rows, fold(rows)


def lifecycle() -> list[JobEvent]:
    return [
        requested(0),
        dispatched(1, 1),
        started(1, 2),
        progress(1, 3, 1),
        checkpointed(1, 3.5),
        progress(1, 4, 2),
        succeeded(1, 9),
    ]


# --- the fold -------------------------------------------------------------------------------------------


def test_requested_makes_a_queued_job() -> None:
    _, view = project([requested(0)])
    assert view is not None
    assert (view.status, view.phase, view.progress, view.attempt) == (JobStatus.QUEUED, Phase.QUEUED, 0.0, 0)
    assert (view.tenant, view.priority, view.model) == ("acme", "batch", "tiny-mochi")
    assert view.request == request().model_dump(mode="json")
    assert (view.idempotency_key, view.request_hash) == ("k-1", "ab" * 32)
    assert view.created_at == view.updated_at == at(0)
    assert view.last_seq == 0


def test_lifecycle() -> None:
    rows, view = project(lifecycle())
    assert [row.seq for row in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert all(row.applied for row in rows)
    assert view is not None
    assert view.status is JobStatus.SUCCEEDED
    assert (view.progress, view.step, view.total_steps, view.seconds_per_step) == (1.0, 2, 4, 0.5)
    assert (view.attempt, view.slot, view.checkpoint_key) == (1, 1, "ck/1")
    assert (view.dispatched_at, view.started_at, view.finished_at) == (at(1), at(2), at(9))
    assert view.result == result().model_dump(mode="json")
    assert view.error is None
    assert (view.updated_at, view.last_seq) == (at(9), 6)


def test_intermediate_states() -> None:
    events = lifecycle()
    _, after_dispatch = project(events[:2])
    assert after_dispatch is not None
    assert (after_dispatch.status, after_dispatch.attempt, after_dispatch.dispatched_at) == (
        JobStatus.QUEUED, 1, at(1),
    )  # fmt: skip
    _, after_start = project(events[:3])
    assert after_start is not None
    assert (after_start.status, after_start.phase, after_start.started_at) == (
        JobStatus.RUNNING,
        Phase.LOADING,
        at(2),
    )
    _, after_progress = project(events[:4])
    assert after_progress is not None
    assert (after_progress.phase, after_progress.progress, after_progress.step) == (Phase.DENOISING, 0.25, 1)


def test_failed_and_cancelled() -> None:
    _, view = project([requested(0), dispatched(1, 1), started(1, 2), failed(1, 5)])
    assert view is not None
    assert (view.status, view.finished_at) == (JobStatus.FAILED, at(5))
    assert view.error == {"code": "internal", "message": "boom", "retryable": False}
    _, view = project([requested(0), cancelled(0, 1)])
    assert view is not None
    assert (view.status, view.finished_at) == (JobStatus.CANCELLED, at(1))


def uploading(attempt: int, seconds: float) -> JobProgress:
    return JobProgress(
        job_id=JOB, occurred_at=at(seconds), producer="w", attempt=attempt, phase=Phase.UPLOADING,
        progress=0.99,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("end", "status"),
    [(succeeded, JobStatus.SUCCEEDED), (failed, JobStatus.FAILED), (cancelled, JobStatus.CANCELLED)],
)
def test_a_finished_job_is_past_every_phase_of_its_work(
    end: Callable[[int, float], JobEvent], status: JobStatus
) -> None:
    """The worker's last phase (`uploading`) is not where a finished job is: its phase ends with it."""
    _, view = project([requested(0), dispatched(1, 1), started(1, 2), uploading(1, 8), end(1, 9)])
    assert view is not None
    assert (view.status, view.phase) == (status, Phase(status.value))


def test_a_duplicate_event_changes_nothing() -> None:
    events = lifecycle()
    rows, view = project(events)
    for duplicate in events:
        again_rows, again_view = project([*events, duplicate])
        assert again_rows == rows
        assert again_view == view
    rows_mid, view_mid = project([*events[:4], events[2], events[3], *events[4:]])
    assert (rows_mid, view_mid) == (rows, view)


def test_stale_attempt_events_are_ignored() -> None:
    events: list[JobEvent] = [
        requested(0),
        dispatched(1, 1),
        started(1, 2),
        retrying(1, 3),
        dispatched(2, 4, slot=5),
        started(2, 5, slot=5),
        progress(1, 6, 3),  # the first worker did not notice it was replaced
        succeeded(1, 7),
        progress(2, 8, 1),
    ]
    rows, view = project(events)
    assert [row.applied for row in rows] == [True, True, True, True, True, True, False, False, True]
    assert view is not None
    assert (view.status, view.attempt, view.slot, view.step) == (JobStatus.RUNNING, 2, 5, 1)
    assert view.started_at == at(2)  # the first start counts
    assert view.updated_at == at(8)
    assert view.last_seq == 8


def test_retrying_puts_the_job_back_in_the_queue() -> None:
    _, view = project([requested(0), dispatched(1, 1), started(1, 2), progress(1, 3, 2), retrying(1, 4)])
    assert view is not None
    assert (view.status, view.phase, view.dispatched_at, view.step, view.total_steps) == (
        JobStatus.QUEUED, Phase.QUEUED, None, None, None,
    )  # fmt: skip
    assert view.attempt == 1  # the next dispatch sets the new attempt
    assert view.queued_at == at(0)  # a lost attempt keeps the job's place in its lane


def test_a_preempted_job_waits_again_with_its_progress_and_checkpoint() -> None:
    preempted = JobPreempted(
        job_id=JOB, occurred_at=at(5), producer="w", attempt=1, step=2, total_steps=4,
        checkpoint_key="ck/2", reason="balance",
    )  # fmt: skip
    events = [requested(0), dispatched(1, 1), started(1, 2), progress(1, 3, 2), preempted]
    _, view = project(events)
    assert view is not None
    assert (view.status, view.phase, view.dispatched_at, view.step, view.total_steps) == (
        JobStatus.QUEUED, Phase.QUEUED, None, 2, 4,
    )  # fmt: skip
    assert view.checkpoint_key == "ck/2" and view.attempt == 1
    assert view.queued_at == at(5)  # behind the jobs already waiting, as the scheduler orders it
    _, view = project([*events, dispatched(2, 6), started(2, 7)])
    assert view is not None and (view.status, view.attempt) == (JobStatus.RUNNING, 2)
    # A preemption of an attempt that was already superseded changes nothing.
    _, view = project([*events[:-1], retrying(1, 4), dispatched(2, 4.5), preempted])
    assert view is not None and (view.status, view.attempt) == (JobStatus.QUEUED, 2)
    assert view.dispatched_at == at(4.5) and view.queued_at == at(0)


def test_dispatch_and_retry_never_go_backwards() -> None:
    events: list[JobEvent] = [
        requested(0),
        dispatched(1, 1),
        retrying(1, 2),
        dispatched(2, 3),
        dispatched(1, 4),
    ]
    rows, view = project([*events, retrying(1, 5)])
    assert [row.applied for row in rows] == [True, True, True, True, False, False]
    assert view is not None
    assert (view.attempt, view.dispatched_at) == (2, at(3))


def test_nothing_changes_after_a_terminal() -> None:
    base = lifecycle()
    rows, view = project(base)
    later: list[JobEvent] = [
        progress(1, 10, 3), failed(1, 11), cancelled(1, 12), retrying(1, 13), dispatched(2, 14),
        started(2, 15), succeeded(2, 16),
    ]  # fmt: skip
    after_rows, after_view = project([*base, *later])
    assert after_view == view
    assert [row.applied for row in after_rows[len(rows) :]] == [False] * len(later)
    assert [row.seq for row in after_rows[len(rows) :]] == list(range(7, 7 + len(later)))


def test_events_before_requested_wait_for_it() -> None:
    events = lifecycle()
    early_rows, early_view = project(events[1:])
    assert early_view is None
    assert [row.seq for row in early_rows] == [1, 2, 3, 4, 5, 6]
    rows, view = project([*events[1:], events[0]])
    assert view == project(events)[1]
    assert sorted(rows, key=lambda row: row.seq) == project(events)[0]


def test_a_second_request_is_not_stored() -> None:
    first = requested(0, key="first")
    rows, view = project([first, dispatched(1, 1), requested(5, key="second")])
    assert [row.event.event_id for row in rows] == [first.event_id, rows[1].event.event_id]
    assert view is not None
    assert (view.idempotency_key, view.created_at) == ("first", at(0))


def test_cancel_requested_counts_as_activity_only() -> None:
    cancel = JobCancelRequested(job_id=JOB, occurred_at=at(3), producer="api", attempt=1)
    _, before = project([requested(0), dispatched(1, 1), started(1, 2)])
    _, after = project([requested(0), dispatched(1, 1), started(1, 2), cancel])
    assert before is not None
    assert after is not None
    assert after.status is JobStatus.RUNNING
    assert after == replace(before, updated_at=at(3), last_seq=3)


def test_updated_at_is_the_latest_counted_time() -> None:
    # Clocks of different producers disagree; an event that claims an earlier time does not move it back.
    _, view = project([requested(0), dispatched(1, 10), started(1, 5)])
    assert view is not None
    assert view.updated_at == at(10)


# --- seq and applied as pure functions ------------------------------------------------------------------


def test_is_applied_rules() -> None:
    current = History(attempt=2)
    assert is_applied(current, requested())
    assert not is_applied(current, progress(1, 1, 1))
    assert is_applied(current, progress(2, 1, 1))
    assert is_applied(current, progress(3, 1, 1))
    assert is_applied(current, dispatched(2, 1))
    assert not is_applied(current, dispatched(1, 1))
    assert is_applied(current, retrying(2, 1))  # moves on to attempt 3
    assert not is_applied(current, retrying(1, 1))  # would re-queue attempt 2, which was dispatched
    ended = History(attempt=2, terminal=True)
    assert is_applied(ended, requested())
    assert not is_applied(ended, dispatched(3, 1))
    assert not is_applied(ended, progress(2, 1, 1))


def test_history_counts_only_what_matters() -> None:
    rows, _ = project([dispatched(1, 1), requested(0), retrying(1, 2), succeeded(0, 3), failed(2, 4)])
    history = history_of(rows)
    assert history.has_requested
    assert history.events_count == 4
    assert history.attempt == 2  # the retry moved it; the stale success did not end the job
    assert history.terminal  # the attempt-2 failure did
    assert history.event_ids == {row.event.event_id for row in rows}
    assert history_of(reversed(rows)) == history


def test_admit_gives_seq_from_the_jobs_events_rows_only() -> None:
    history = EMPTY_HISTORY
    first, history = admit(history, dispatched(1, 1))
    assert first is not None
    assert first.seq == 1
    req, history = admit(history, requested())
    assert req is not None
    assert (req.seq, req.applied) == (0, True)
    second, history = admit(history, started(1, 2))
    assert second is not None
    assert second.seq == 2
    again, same = admit(history, second.event)
    assert again is None
    assert same == history


def test_plan_folds_each_job_once_from_old_and_new_rows() -> None:
    other = uuid.uuid4()
    events = lifecycle()
    old, _ = admit_all(EMPTY_HISTORY, events[:3])
    stray = JobStarted(job_id=other, occurred_at=at(1), producer="w", attempt=0, slot=0, worker_id="w")
    new = [progress(1, 3, 1), progress(1, 4, 2)]
    changes = batch_changes({JOB: old}, [new[0], stray, events[1], new[1]])
    by_job = {change.job_id: change for change in changes}
    assert [row.seq for row in by_job[JOB].rows] == [3, 4]  # the redelivered dispatch is left out
    assert by_job[JOB].view == project([*events[:3], *new])[1]
    assert not by_job[JOB].requested
    assert by_job[other].view is None
    assert batch_changes({JOB: old}, events[:3]) == []


# --- order independence ---------------------------------------------------------------------------------

_BUILDERS: tuple[Callable[..., JobEvent], ...] = (
    dispatched,
    started,
    progress,
    checkpointed,
    succeeded,
    failed,
    cancelled,
    retrying,
)


@st.composite
def _job_events(draw: st.DrawFn) -> list[JobEvent]:
    """A jobs.events sequence: arbitrary lifecycle events of attempts 0..3, with redeliveries."""
    events: list[JobEvent] = []
    for _ in range(draw(st.integers(0, 14))):
        if events and draw(st.integers(0, 5)) == 0:
            events.append(draw(st.sampled_from(events)))
            continue
        builder = draw(st.sampled_from(_BUILDERS))
        attempt = draw(st.integers(0, 3))
        seconds = float(draw(st.integers(1, 40)))
        event = builder(attempt, seconds, 1) if builder is progress else builder(attempt, seconds)
        events.append(event)
    return events


def _in_batches(events: list[JobEvent], cuts: list[int]) -> tuple[list[StoredEvent], JobView | None]:
    """Feed `events` to `batch_changes` in batches, as the store does, keeping every row stored so far."""
    stored: list[StoredEvent] = []
    view: JobView | None = None
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    for start, end in itertools.pairwise(bounds):
        for change in batch_changes({JOB: stored}, events[start:end]):
            stored.extend(change.rows)
            view = change.view
    return stored, view


@settings(max_examples=300, deadline=None)
@given(events=_job_events(), position=st.integers(0, 20), cuts=st.lists(st.integers(0, 20), max_size=4))
def test_the_result_does_not_depend_on_when_the_request_arrives(
    events: list[JobEvent], position: int, cuts: list[int]
) -> None:
    request_event = requested(0)
    expected_rows, expected_view = project([request_event, *events])
    at_index = min(position, len(events))
    mixed = [*events[:at_index], request_event, *events[at_index:]]
    rows, view = _in_batches(mixed, cuts)
    assert view == expected_view
    assert sorted(rows, key=lambda row: row.seq) == sorted(expected_rows, key=lambda row: row.seq)


@settings(max_examples=200, deadline=None)
@given(events=_job_events())
def test_a_terminal_job_never_changes(events: list[JobEvent]) -> None:
    full = [requested(0), *events]
    rows, _ = admit_all(EMPTY_HISTORY, full)
    ended: JobView | None = None
    for end in range(1, len(rows) + 1):
        view = fold(rows[:end])
        assert view is not None
        if ended is not None:
            assert view == ended
        elif view.status.is_terminal():
            ended = view


# --- records and the replay comparison ------------------------------------------------------------------

SETTINGS = ProjectorSettings(requested_topic="req", events_topic="evt")


def record(topic: str, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, 0, 0, 0, str(JOB).encode(), value, None, 0, len(value), ())


def test_decode_sorts_out_records_for_the_dlq() -> None:
    request_bytes = encode_event(requested()).value
    progress_bytes = encode_event(progress(1, 1, 1)).value
    assert isinstance(decode(record("req", request_bytes), SETTINGS), JobRequested)
    assert isinstance(decode(record("evt", progress_bytes), SETTINGS), JobProgress)
    assert "not JSON" in str(decode(record("evt", b"\xff"), SETTINGS))
    assert "schema mismatch" in str(decode(record("evt", b'{"type": "job.progress"}'), SETTINGS))
    assert "does not belong on req" in str(decode(record("req", progress_bytes), SETTINGS))
    assert "does not belong on evt" in str(decode(record("evt", request_bytes), SETTINGS))


def test_schema_names_that_a_replay_may_drop() -> None:
    assert check_schema_name("rebuild_2026") == "rebuild_2026"
    for bad in ("public", "pg_temp", "information_schema", "Rebuild", "a-b", "x; drop", ""):
        with pytest.raises(ValueError, match="not a schema"):
            check_schema_name(bad)


def _snapshot(events: Sequence[JobEvent]) -> Snapshot:
    rows, view = project(events)
    jobs = {} if view is None else {view.id: {"status": view.status.value, "last_seq": view.last_seq}}
    by_id = {row.event.event_id: {"job_id": JOB, "seq": row.seq, "applied": row.applied} for row in rows}
    return Snapshot(jobs=jobs, events=by_id)


def test_compare_equal_and_moved_on() -> None:
    events = lifecycle()
    assert compare_snapshots(_snapshot(events), _snapshot(events)).differences == []
    moved = compare_snapshots(live=_snapshot(events), replayed=_snapshot(events[:4]))
    assert (moved.differences, moved.jobs_moved_on, moved.jobs_compared, moved.events_compared) == (
        [],
        1,
        0,
        4,
    )


def test_compare_reports_differences() -> None:
    events = lifecycle()
    live, replayed = _snapshot(events), _snapshot(events)
    live.jobs[JOB]["status"] = "running"
    first = next(iter(live.events))
    live.events[first]["applied"] = False
    report = compare_snapshots(live, replayed)
    assert f"job {JOB} status: live='running' replay='succeeded'" in report.differences
    assert f"event {first} (job {JOB}) applied: live=False replay=True" in report.differences
    missing = compare_snapshots(_snapshot(events[:3]), replayed)
    assert any(line.endswith("missing in live") for line in missing.differences)


def test_events_that_do_not_fit_the_columns_go_to_the_dlq() -> None:
    long_tenant = encode_event(requested().model_copy(update={"tenant": "t" * 129})).value
    assert "tenant is longer than the 128" in str(decode(record("req", long_tenant), SETTINGS))
    huge_attempt = encode_event(progress(2**31, 1, 1)).value
    assert "attempt 2147483648 is larger" in str(decode(record("evt", huge_attempt), SETTINGS))
    assert unfit(requested()) is None
