"""The scheduler's state: lanes of waiting jobs, the slot table, and the decisions they lead to.

Pure and synchronous: the Kafka loop in `main.py` feeds it records and carries out its decisions, so every
rule here is unit-tested with a fake clock. The state is a fold of the topics, which is how a restarted
scheduler rebuilds it: it replays them from the beginning before it makes a single decision.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from schemas.events import (
    TERMINAL_TYPES,
    EventType,
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobRequested,
    JobRetrying,
    SlotState,
    WorkerHeartbeat,
)
from schemas.jobs import Priority, ResolvedRequest

LANES = (Priority.INTERACTIVE, Priority.BATCH)


class Stage(StrEnum):
    WAITING = "waiting"
    ASSIGNED = "assigned"
    DONE = "done"


@dataclass
class JobEntry:
    job_id: uuid.UUID
    request: ResolvedRequest | None = None
    created_at: datetime | None = None
    stage: Stage = Stage.WAITING
    attempt: int = 0
    # Only waiting jobs sort; an entry known from a dispatch record alone never waits.
    slot: int | None = None
    dispatch_offset: int | None = None
    dispatch: JobDispatched | None = None
    boot_at_dispatch: uuid.UUID | None = None
    cancel_requested: bool = False
    checkpoint_key: str | None = None

    @property
    def sort_key(self) -> tuple[datetime, str]:
        assert self.created_at is not None
        return (self.created_at, str(self.job_id))


@dataclass(frozen=True, slots=True)
class Slot:
    """What the last heartbeat of a slot said."""

    slot: int
    seen_at: datetime
    boot_id: uuid.UUID
    state: SlotState
    model: str | None
    reported_job: tuple[uuid.UUID, int] | None
    position: int | None
    seconds_per_step: float | None


@dataclass(frozen=True, slots=True)
class Dispatch:
    job_id: uuid.UUID
    slot: int
    attempt: int
    request: ResolvedRequest
    resume_checkpoint: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    job_id: uuid.UUID
    next_attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """End a job without running it again: cancelled, or failed after its last attempt."""

    job_id: uuid.UUID
    attempt: int
    cancelled: bool
    reason: str


Decision = Dispatch | Retry | Finish


@dataclass
class SchedulerState:
    slots_total: int
    dead_after: timedelta
    lost_grace: timedelta
    max_attempts: int
    reserved_interactive: int = 0
    jobs: dict[uuid.UUID, JobEntry] = field(default_factory=dict)
    done: set[uuid.UUID] = field(default_factory=set)
    slots: dict[int, Slot] = field(default_factory=dict)
    assignments: dict[int, uuid.UUID] = field(default_factory=dict)
    mismatch_since: dict[int, datetime] = field(default_factory=dict)
    cancel_waiting: set[uuid.UUID] = field(default_factory=set)
    epoch: datetime | None = None
    # When records last arrived, and when they started arriving again after a gap: a scheduler that
    # could not read Kafka must not take the silence it saw for dead slots.
    last_input: datetime | None = None
    input_resumed_at: datetime | None = None

    def on_input(self, now: datetime) -> None:
        if self.last_input is None or now - self.last_input > self.dead_after / 2:
            self.input_resumed_at = now
        self.last_input = now

    lanes: dict[Priority, list[tuple[datetime, str]]] = field(
        default_factory=lambda: {lane: [] for lane in LANES}
    )

    # ---- folding records in -------------------------------------------------------------------
    def entry(self, job_id: uuid.UUID) -> JobEntry | None:
        """The live entry of a job, created on first sight; None once the job has ended."""
        if job_id in self.done:
            return None
        return self.jobs.setdefault(job_id, JobEntry(job_id))

    def _enqueue(self, job: JobEntry) -> None:
        if job.request is None or job.created_at is None or job.stage is not Stage.WAITING:
            return
        lane, key = self.lanes[job.request.priority], job.sort_key
        i = bisect.bisect_left(lane, key)
        if i == len(lane) or lane[i] != key:
            lane.insert(i, key)

    def _dequeue(self, job: JobEntry) -> None:
        if job.request is None or job.created_at is None:
            return
        lane = self.lanes[job.request.priority]
        i = bisect.bisect_left(lane, job.sort_key)
        if i < len(lane) and lane[i] == job.sort_key:
            lane.pop(i)

    def _release(self, job: JobEntry) -> None:
        if job.slot is not None and self.assignments.get(job.slot) == job.job_id:
            del self.assignments[job.slot]
            self.mismatch_since.pop(job.slot, None)

    def _finish(self, job: JobEntry) -> None:
        self._dequeue(job)
        self._release(job)
        job.stage = Stage.DONE
        self.cancel_waiting.discard(job.job_id)
        del self.jobs[job.job_id]
        self.done.add(job.job_id)

    def on_requested(self, event: JobRequested) -> None:
        job = self.entry(event.job_id)
        if job is None or job.created_at is not None:
            return  # the first job.requested wins; a retried submit of the same job changes nothing
        job.request, job.created_at = event.request, event.occurred_at
        self._enqueue(job)

    def on_dispatch(self, record: JobDispatched, offset: int | None) -> None:
        """An assignment: its announcement on jobs.events (offset None) or its record on jobs.dispatch."""
        job = self.entry(record.job_id)
        if job is None or record.attempt < job.attempt:
            return
        if job.request is None:
            job.request = record.request
        self._dequeue(job)
        self.cancel_waiting.discard(job.job_id)
        if record.attempt > job.attempt or job.stage is not Stage.ASSIGNED:
            self._release(job)
            job.dispatch_offset = None
            slot = self.slots.get(record.slot)
            job.boot_at_dispatch = slot.boot_id if slot is not None else None
        job.stage, job.attempt, job.slot, job.dispatch = Stage.ASSIGNED, record.attempt, record.slot, record
        if offset is not None:
            job.dispatch_offset = offset
        self.assignments[record.slot] = job.job_id
        self.mismatch_since.pop(record.slot, None)

    def on_event(self, event: JobEvent) -> None:
        """Fold one record of jobs.requested, jobs.events or jobs.control."""
        if isinstance(event, JobRequested):
            self.on_requested(event)
            return
        job = self.entry(event.job_id)
        if job is None:
            return
        if isinstance(event, JobDispatched):
            self.on_dispatch(event, None)  # the announcement comes first; the record follows it
        elif isinstance(event, JobRetrying):
            self._retry(job, event.next_attempt)
        elif event.type is EventType.CANCEL_REQUESTED:
            job.cancel_requested = True
            if job.stage is Stage.WAITING:
                self.cancel_waiting.add(job.job_id)
        elif isinstance(event, JobCheckpointed) and event.attempt == job.attempt:
            job.checkpoint_key = event.checkpoint_key
        elif event.type in TERMINAL_TYPES and event.attempt >= job.attempt:
            self._finish(job)

    def _retry(self, job: JobEntry, next_attempt: int) -> None:
        if next_attempt <= job.attempt or job.stage is Stage.WAITING:
            return
        self._release(job)
        job.stage, job.slot = Stage.WAITING, None
        self._enqueue(job)
        if job.cancel_requested:
            self.cancel_waiting.add(job.job_id)

    def on_heartbeat(self, beat: WorkerHeartbeat) -> None:
        current = self.slots.get(beat.slot)
        if current is not None and beat.occurred_at < current.seen_at:
            return  # an older beat read late
        reported = (beat.job_id, beat.attempt or 0) if beat.job_id is not None else None
        self.slots[beat.slot] = Slot(
            beat.slot,
            beat.occurred_at,
            beat.boot_id,
            beat.state,
            beat.model,
            reported,
            beat.dispatch_position,
            beat.seconds_per_step,
        )
