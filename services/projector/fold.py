"""The projection rules as pure functions: which events are stored, with which seq, whether they count,
and the fold of a job's counted events into the `jobs` row.

Nothing here touches Postgres or Kafka, so every rule is unit-testable and the live projector and a
replay cannot disagree: `store.py` loads a job's stored rows, calls `admit` for each new event, and writes
`fold(...)` of the result.

Why the result does not depend on how the two topics interleave: `job.requested` always gets seq 0 and is
always applied; the seq and the applied flag of a `jobs.events` event depend only on the `jobs.events`
rows before it (its partition order), never on whether the request has been seen.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from schemas.events import (
    TERMINAL_TYPES,
    EventType,
    JobCancelled,
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
)
from schemas.jobs import JobStatus, Phase

REQUESTED_SEQ: Final = 0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One `job_events` row: the event, its per-job seq, and whether the fold counts it."""

    seq: int
    applied: bool
    event: JobEvent


@dataclass(frozen=True, slots=True)
class History:
    """What a job's stored rows say about admitting the next event (independent of their order)."""

    event_ids: frozenset[uuid.UUID] = frozenset()
    has_requested: bool = False
    events_count: int = 0
    attempt: int = 0
    terminal: bool = False
    deleted: bool = False


EMPTY_HISTORY: Final = History()


def asserted_attempt(event: JobEvent) -> int | None:
    """The attempt a dispatch or retry moves the job to; None for events that do not move it."""
    if isinstance(event, JobDispatched):
        return event.attempt
    if isinstance(event, JobRetrying):
        return event.next_attempt
    return None


class _Tally:
    """A `History` being built, in place: a job with n rows costs n steps, not n copies of its event ids."""

    __slots__ = ("attempt", "deleted", "event_ids", "events_count", "has_requested", "terminal")

    def __init__(self, history: History) -> None:
        self.event_ids = set(history.event_ids)
        self.has_requested = history.has_requested
        self.events_count = history.events_count
        self.attempt = history.attempt
        self.terminal = history.terminal
        self.deleted = history.deleted

    def add(self, stored: StoredEvent) -> None:
        """What `stored`, once written, adds to the history."""
        event = stored.event
        moved_to = asserted_attempt(event) if stored.applied else None
        is_requested = event.type is EventType.REQUESTED
        self.event_ids.add(event.event_id)
        self.has_requested = self.has_requested or is_requested
        self.events_count += 0 if is_requested else 1
        if moved_to is not None:
            self.attempt = max(self.attempt, moved_to)
        self.terminal = self.terminal or (stored.applied and event.type in TERMINAL_TYPES)
        self.deleted = self.deleted or event.type is EventType.DELETED

    def frozen(self) -> History:
        return History(
            frozenset(self.event_ids),
            self.has_requested,
            self.events_count,
            self.attempt,
            self.terminal,
            self.deleted,
        )


def record(history: History, stored: StoredEvent) -> History:
    """`history` after `stored` was written."""
    return history_of((stored,), history)


def history_of(rows: Iterable[StoredEvent], start: History = EMPTY_HISTORY) -> History:
    """Summarise a job's stored rows (after `start`)."""
    tally = _Tally(start)
    for row in rows:
        tally.add(row)
    return tally.frozen()


def is_applied(history: History | _Tally, event: JobEvent) -> bool:
    """Whether `event`, stored after `history`, counts for the job (fencing of stale attempts).

    A request always counts. Nothing else counts after a counted terminal event. A dispatch counts when it
    does not go back to an earlier attempt; a retry only when it moves past the current attempt, because
    re-entering the queue for an attempt that was already dispatched would undo that dispatch. Any other
    event counts unless it comes from an attempt older than the current one.
    """
    if event.type is EventType.REQUESTED:
        return True
    if history.terminal:
        return False
    if isinstance(event, JobDispatched):
        return event.attempt >= history.attempt
    if isinstance(event, JobRetrying):
        return event.next_attempt > history.attempt
    return event.attempt >= history.attempt


def admit(history: History, event: JobEvent) -> tuple[StoredEvent | None, History]:
    """The row to store for `event` (None: store nothing) and the history after it.

    A known event id is a redelivery and is skipped. Only the first `job.requested` of a job is kept; a
    `jobs.events` event gets the next seq after the job's `jobs.events` rows so far. Nothing is stored
    after a tombstone (`job.deleted`), not even a request read after it in a replay; the tombstone itself
    always counts, so that the job's streams end on it.
    """
    stored = _row_for(history, event)
    return stored, (history if stored is None else record(history, stored))


def _row_for(history: History | _Tally, event: JobEvent) -> StoredEvent | None:
    """`admit`'s row, judged on a history or a tally."""
    if event.event_id in history.event_ids or history.deleted:
        return None
    if event.type is EventType.DELETED:
        return StoredEvent(history.events_count + 1, True, event)
    if event.type is EventType.REQUESTED:
        return None if history.has_requested else StoredEvent(REQUESTED_SEQ, True, event)
    return StoredEvent(history.events_count + 1, is_applied(history, event), event)


def admit_all(history: History, events: Iterable[JobEvent]) -> tuple[list[StoredEvent], History]:
    """Admit events of one job in order; returns the new rows and the final history."""
    rows: list[StoredEvent] = []
    tally = _Tally(history)
    for event in events:
        if (stored := _row_for(tally, event)) is not None:
            tally.add(stored)
            rows.append(stored)
    return rows, tally.frozen()


@dataclass(frozen=True, slots=True)
class JobView:
    """A `jobs` row; field names are the column names."""

    id: uuid.UUID
    tenant: str
    status: JobStatus
    phase: Phase
    progress: float
    step: int | None
    total_steps: int | None
    seconds_per_step: float | None
    priority: str
    model: str
    request: dict[str, Any]
    idempotency_key: str | None
    request_hash: str
    attempt: int
    slot: int | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    checkpoint_key: str | None
    created_at: datetime
    queued_at: datetime
    """Since when it waits in its lane: its acceptance, or its last preemption (the scheduler's order)."""
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    last_seq: int


def requested_view(event: JobRequested) -> JobView:
    """The row a job starts with: queued, nothing done yet."""
    return JobView(
        id=event.job_id,
        tenant=event.tenant,
        status=JobStatus.QUEUED,
        phase=Phase.QUEUED,
        progress=0.0,
        step=None,
        total_steps=None,
        seconds_per_step=None,
        priority=event.request.priority.value,
        model=event.request.model,
        request=event.request.model_dump(mode="json"),
        idempotency_key=event.idempotency_key,
        request_hash=event.request_hash,
        attempt=0,
        slot=None,
        result=None,
        error=None,
        checkpoint_key=None,
        created_at=event.occurred_at,
        queued_at=event.occurred_at,
        dispatched_at=None,
        started_at=None,
        finished_at=None,
        updated_at=event.occurred_at,
        last_seq=REQUESTED_SEQ,
    )


Changes = dict[str, Any]  # the columns one event sets, by name
JOB_COLUMNS: Final = tuple(f.name for f in fields(JobView))
_ROW: Final = attrgetter(*JOB_COLUMNS)  # a view's values, in column order


def columns_of(view: JobView) -> dict[str, Any]:
    """A view's values by column name. Not `asdict`: it deep-copies the request, result and error dicts,
    which are only read."""
    return dict(zip(JOB_COLUMNS, _ROW(view), strict=True))


def _requeued(event: JobEvent) -> Changes | None:
    """A lost attempt starts over from its checkpoint, keeping its place in the lane; a preempted one waits
    with its progress kept, behind the jobs already waiting (as the scheduler orders them)."""
    if isinstance(event, JobRetrying):
        return {
            "status": JobStatus.QUEUED,
            "phase": Phase.QUEUED,
            "dispatched_at": None,
            "step": None,
            "total_steps": None,
        }
    if isinstance(event, JobPreempted):
        return {
            "status": JobStatus.QUEUED,
            "phase": Phase.QUEUED,
            "queued_at": event.occurred_at,
            "dispatched_at": None,
            "step": event.step,
            "total_steps": event.total_steps,
            "checkpoint_key": event.checkpoint_key,
        }
    return None


def _running(started_at: datetime | None, event: JobEvent) -> Changes:
    """Events that move a job between queued and running, or report on its work."""
    if isinstance(event, JobProgress):  # the most frequent by far
        return {
            "phase": event.phase,
            "progress": event.progress,
            "step": event.step,
            "total_steps": event.total_steps,
            "seconds_per_step": event.seconds_per_step,
        }
    if (requeued := _requeued(event)) is not None:
        return requeued
    if isinstance(event, JobDispatched):
        return {"attempt": event.attempt, "slot": event.slot, "dispatched_at": event.occurred_at}
    if isinstance(event, JobStarted):
        return {
            "status": JobStatus.RUNNING,
            "started_at": started_at if started_at is not None else event.occurred_at,
            "slot": event.slot,
            "phase": Phase.LOADING,
        }
    if isinstance(event, JobCheckpointed):
        return {"checkpoint_key": event.checkpoint_key}
    return {}


def _terminal(event: JobEvent) -> Changes:
    """The three ends of a job; the phase ends with it (it would stay at the worker's last, `uploading`)."""
    if isinstance(event, JobSucceeded):
        return {
            "status": JobStatus.SUCCEEDED,
            "phase": Phase.SUCCEEDED,
            "progress": 1.0,
            "result": event.result.model_dump(mode="json"),
            "finished_at": event.occurred_at,
        }
    if isinstance(event, JobFailed):
        return {
            "status": JobStatus.FAILED,
            "phase": Phase.FAILED,
            "error": event.error.model_dump(mode="json"),
            "finished_at": event.occurred_at,
        }
    if isinstance(event, JobCancelled):
        return {"status": JobStatus.CANCELLED, "phase": Phase.CANCELLED, "finished_at": event.occurred_at}
    return {}


def _apply(columns: dict[str, Any], seq: int, event: JobEvent) -> None:
    """A job's columns after one counted event, changed in place. A terminal job never changes again, not
    even its updated_at."""
    if columns["status"].is_terminal():
        return
    # job.cancel_requested changes no column but still counts as activity: updated_at and last_seq move.
    if event.type in TERMINAL_TYPES:
        columns.update(_terminal(event))
    else:
        columns.update(_running(columns["started_at"], event))
    columns["updated_at"] = max(columns["updated_at"], event.occurred_at)
    columns["last_seq"] = max(columns["last_seq"], seq)


def fold(rows: Iterable[StoredEvent]) -> JobView | None:
    """The `jobs` row of one job from its stored rows; None while its `job.requested` is not among them,
    and None once it is deleted (a tombstone among them).

    The columns are folded in one dict and the row is built once: building a frozen row per event was
    the fold's largest cost."""
    counted = sorted((row for row in rows if row.applied), key=lambda row: row.seq)
    if any(row.event.type is EventType.DELETED for row in counted):
        return None
    if not counted or not isinstance(counted[0].event, JobRequested):
        return None
    columns = columns_of(requested_view(counted[0].event))
    for row in counted[1:]:
        _apply(columns, row.seq, row.event)
    return JobView(**columns)


@dataclass(frozen=True, slots=True)
class JobChange:
    """What one batch does to one job: the rows to insert and its recomputed row (None: not requested yet)."""

    job_id: uuid.UUID
    rows: tuple[StoredEvent, ...]
    view: JobView | None

    @property
    def requested(self) -> bool:
        """Whether this change stores the job's request, i.e. creates its `jobs` row."""
        return any(row.event.type is EventType.REQUESTED for row in self.rows)

    @property
    def deleted(self) -> bool:
        """Whether this change stores the job's tombstone: its `jobs` row and its other events go."""
        return any(row.event.type is EventType.DELETED for row in self.rows)


def batch_changes(
    existing: Mapping[uuid.UUID, Sequence[StoredEvent]], events: Iterable[JobEvent]
) -> list[JobChange]:
    """The changes a batch of events makes, given the stored rows of the jobs it touches.

    `events` keeps each partition's order; each job is folded once, from its old and new rows together.
    Jobs whose events were all duplicates are left out.
    """
    by_job: defaultdict[uuid.UUID, list[JobEvent]] = defaultdict(list)
    for event in events:
        by_job[event.job_id].append(event)
    changes = []
    for job_id, job_events in by_job.items():
        old = existing.get(job_id, ())
        rows, _ = admit_all(history_of(old), job_events)
        if rows:
            changes.append(JobChange(job_id, tuple(rows), fold([*old, *rows])))
    return changes
