"""The scheduler's state: lanes of waiting jobs, the slot table, and the decisions they lead to.

Pure and synchronous: the Kafka loop in `main.py` feeds it records and carries out its decisions, so every
rule here is unit-tested with a fake clock. The state is a fold of the topics, which is how a restarted
scheduler rebuilds it: it replays them from the beginning before it makes a single decision.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from schemas.catalog import CATALOG, Speed
from schemas.events import (
    TERMINAL_TYPES,
    ErrorCode,
    EventType,
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobPreempted,
    JobPreemptRequested,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    SlotState,
    TenantLimits,
    WorkerHeartbeat,
)
from schemas.jobs import Phase, Priority, ResolvedRequest

LANES = (Priority.INTERACTIVE, Priority.BATCH)
# Phases after which the GPU side of a job is done: the slot can take its next job.
FINISHING_PHASES = frozenset({Phase.ENCODING_VIDEO, Phase.UPLOADING})
# model, frames, height, width, speed tier: what a step costs depends on them
StepKey = tuple[str, int, int, int, str]


def _insert(keys: list[tuple[datetime, str]], key: tuple[datetime, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i == len(keys) or keys[i] != key:
        keys.insert(i, key)


def _remove(keys: list[tuple[datetime, str]], key: tuple[datetime, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        keys.pop(i)


def step_key(request: ResolvedRequest) -> StepKey:
    return (request.model, request.num_frames, request.height, request.width, request.speed.value)


def tier_ratio(model: str, speed: str) -> float | None:
    """The catalog's step time of `speed` over `exact` for `model` (None: not a tier of the model)."""
    spec = CATALOG.get(model)
    tier = spec.speed_tier(Speed(speed)) if spec is not None and speed in Speed.__members__.values() else None
    return tier.step_time_ratio if tier is not None else None


class Stage(StrEnum):
    WAITING = "waiting"
    ASSIGNED = "assigned"
    DONE = "done"


@dataclass
class JobEntry:
    job_id: uuid.UUID
    request: ResolvedRequest | None = None
    # Whose job, and the tenant's limits as they stood when it was accepted.
    tenant: str = "default"
    limits: TenantLimits = field(default_factory=TenantLimits)
    # Whether the current attempt's GPU time has been added to its tenant's day (see `_charge`).
    charged: bool = False
    created_at: datetime | None = None
    stage: Stage = Stage.WAITING
    attempt: int = 0
    # The oldest attempt whose events still count: the newest dispatched or announced by a retry. The
    # projector fences the same way, so both drop a stale attempt's late events alike.
    fence: int = 0
    # Only waiting jobs sort; an entry known from a dispatch record alone never waits.
    slot: int | None = None
    dispatch_offset: int | None = None
    dispatch: JobDispatched | None = None
    boot_at_dispatch: uuid.UUID | None = None
    cancel_requested: bool = False
    checkpoint_key: str | None = None
    # What the current attempt's worker last said: when it started, and its last denoising step.
    started_at: datetime | None = None
    step: int = 0
    step_at: datetime | None = None
    seconds_per_step: float | None = None
    # The step its newest checkpoint holds (where the next attempt resumes).
    resume_step: int = 0
    first_step: int = 0  # where the current attempt began
    # Preemption: the step the current attempt was asked to stop at, and how often the job was preempted.
    preempt_at: int | None = None
    preemptions: int = 0
    # A preempted job waits again from the moment its attempt stopped, behind the jobs already waiting.
    queued_at: datetime | None = None

    @property
    def sort_key(self) -> tuple[datetime, str]:
        since = self.queued_at or self.created_at
        assert since is not None
        return (since, str(self.job_id))

    @property
    def live_attempt(self) -> int:
        """The attempt an event about the job must carry to count (the one a decision should name)."""
        return max(self.attempt, self.fence)

    @property
    def failed_attempts(self) -> int:
        """Attempts that ended without an outcome, not counting the preempted ones."""
        return self.attempt - self.preemptions


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
    finishing: frozenset[tuple[uuid.UUID, int]] = frozenset()

    def holds(self, job_id: uuid.UUID, attempt: int) -> bool:
        return self.reported_job == (job_id, attempt) or (job_id, attempt) in self.finishing


@dataclass(frozen=True, slots=True)
class Dispatch:
    job_id: uuid.UUID
    slot: int
    attempt: int
    request: ResolvedRequest
    resume_checkpoint: str | None
    after: uuid.UUID | None = None  # look-ahead: the job the slot is still denoising


@dataclass(frozen=True, slots=True)
class Retry:
    job_id: uuid.UUID
    next_attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Ask the slot running this attempt to hand it back after its checkpoint at `at_step`."""

    job_id: uuid.UUID
    attempt: int
    at_step: int
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """End a job without running it again: cancelled, or failed (after its last attempt, or never to
    run: past the queue's time limit, or for a model no live slot serves)."""

    job_id: uuid.UUID
    attempt: int
    cancelled: bool
    reason: str
    code: ErrorCode = ErrorCode.ATTEMPTS_EXHAUSTED


Decision = Dispatch | Retry | Finish | Preempt


@dataclass
class SchedulerState:
    slots_total: int
    dead_after: timedelta
    lost_grace: timedelta
    max_attempts: int
    reserved_interactive: int = 0
    # Balancing the batch lane by preemption at checkpoints (see plan.balance): off when None.
    balance_gain: timedelta | None = None
    max_preemptions: int = 1
    # A slot may get its next job this long before its current one is expected to finish denoising.
    lookahead: timedelta = timedelta(0)
    # A waiting job fails once it waited this long, or once no live slot served its model for this long
    # while other slots were live (an outage of every slot is not judged); None: never.
    queue_ttl: timedelta | None = None
    unserviceable_after: timedelta | None = None
    jobs: dict[uuid.UUID, JobEntry] = field(default_factory=dict)
    done: set[uuid.UUID] = field(default_factory=set)
    slots: dict[int, Slot] = field(default_factory=dict)
    # Per slot: the job on its GPU, and the one dispatched to follow it (look-ahead).
    assignments: dict[int, uuid.UUID] = field(default_factory=dict)
    queued_next: dict[int, uuid.UUID] = field(default_factory=dict)
    # Jobs past denoising that are storing their video on their slot, which already runs another.
    finishing: dict[uuid.UUID, int] = field(default_factory=dict)
    # Measured seconds per step by model and size, from the workers' progress events.
    step_times: dict[StepKey, float] = field(default_factory=dict)
    # GPU time of a job beyond its steps (prompt encoding, VAE decode...) by model and size, measured
    # from its start to the end of its GPU side (its video being encoded, or its end).
    extra_seconds: dict[StepKey, float] = field(default_factory=dict)
    # Since when each held job's slot has read past its dispatch record without reporting it; per job,
    # so the job a restarted slot did take does not restart the grace of the one it lost.
    mismatch_since: dict[uuid.UUID, datetime] = field(default_factory=dict)
    # When a live slot last reported each model.
    model_seen: dict[str, datetime] = field(default_factory=dict)
    cancel_waiting: set[uuid.UUID] = field(default_factory=set)
    # GPU seconds each tenant's attempts used on a UTC day (the day their GPU work ended), for the
    # tenants' `gpu_seconds_per_day`; only the latest day is kept.
    gpu_used: dict[str, tuple[date, float]] = field(default_factory=dict)
    # The lanes again, split by tenant (derived from `lanes`, not snapshotted): fair share picks the
    # oldest job of the tenant that holds the fewest slots.
    by_tenant: dict[Priority, dict[str, list[tuple[datetime, str]]]] = field(
        default_factory=lambda: {lane: {} for lane in LANES}
    )
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
        key = job.sort_key
        _insert(self.lanes[job.request.priority], key)
        _insert(self.by_tenant[job.request.priority].setdefault(job.tenant, []), key)

    def _dequeue(self, job: JobEntry) -> None:
        if job.request is None or job.created_at is None:
            return
        _remove(self.lanes[job.request.priority], job.sort_key)
        tenants = self.by_tenant[job.request.priority]
        if (own := tenants.get(job.tenant)) is not None:
            _remove(own, job.sort_key)
            if not own:
                del tenants[job.tenant]

    def index_tenants(self) -> None:
        """Rebuild `by_tenant` from `lanes` (after a snapshot is loaded)."""
        self.by_tenant = {lane: {} for lane in LANES}
        for lane in LANES:
            for key in self.lanes[lane]:
                job = self.jobs[uuid.UUID(key[1])]
                self.by_tenant[lane].setdefault(job.tenant, []).append(key)

    def gpu_seconds_on(self, tenant: str, day: date) -> float:
        used = self.gpu_used.get(tenant)
        return used[1] if used is not None and used[0] == day else 0.0

    def _charge(self, job: JobEntry, until: datetime) -> None:
        """Add the current attempt's GPU time (its start to `until`) to its tenant's day, once."""
        if job.charged or job.started_at is None:
            return
        job.charged = True
        seconds = max((until - job.started_at).total_seconds(), 0.0)
        day = until.date()
        self.gpu_used[job.tenant] = (day, self.gpu_seconds_on(job.tenant, day) + seconds)

    def _release(self, job: JobEntry) -> None:
        """The job no longer occupies its slot's GPU, nor waits there; the follower moves up."""
        self.finishing.pop(job.job_id, None)
        if job.slot is None:
            return
        if self.queued_next.get(job.slot) == job.job_id:
            del self.queued_next[job.slot]
        self.mismatch_since.pop(job.job_id, None)
        if self.assignments.get(job.slot) == job.job_id:
            del self.assignments[job.slot]
            if (follower := self.queued_next.pop(job.slot, None)) is not None:
                self.assignments[job.slot] = follower

    def _to_finishing(self, job: JobEntry, at: datetime) -> None:
        """Denoising is done: the slot may run its next job while this one stores its video."""
        if job.stage is not Stage.ASSIGNED or job.slot is None or job.job_id in self.finishing:
            return
        self._measure_extra(job, at)
        self._charge(job, at)
        self._release(job)
        self.finishing[job.job_id] = job.slot

    def _measure_extra(self, job: JobEntry, gpu_done: datetime) -> None:
        # A short job may end before any progress event with its step time got out (they are
        # throttled): the step time measured for its kind stands in.
        per_step = self.step_time(job)
        if job.request is None or job.started_at is None or not per_step:
            return
        steps = job.request.num_inference_steps - job.first_step
        extra = (gpu_done - job.started_at).total_seconds() - steps * per_step
        self.extra_seconds[step_key(job.request)] = max(extra, 0.0)

    def held_jobs(self) -> list[uuid.UUID]:
        """Every job a slot holds: on its GPU, dispatched to follow, or storing its video."""
        return [*self.assignments.values(), *self.queued_next.values(), *self.finishing]

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
        job.tenant, job.limits = event.tenant, event.limits
        self._enqueue(job)

    def on_dispatch(self, record: JobDispatched, offset: int | None) -> None:
        """An assignment: its announcement on jobs.events (offset None) or its record on jobs.dispatch."""
        job = self.entry(record.job_id)
        if job is None or record.attempt < job.live_attempt:
            return
        if job.request is None:
            job.request = record.request
        self._dequeue(job)
        self.cancel_waiting.discard(job.job_id)
        if record.attempt > job.attempt or job.stage is not Stage.ASSIGNED:
            self._release(job)
            job.dispatch_offset = None
            job.started_at = job.step_at = None
            job.step = job.first_step = job.resume_step
            job.preempt_at = None
            slot = self.slots.get(record.slot)
            job.boot_at_dispatch = slot.boot_id if slot is not None else None
        job.stage, job.attempt, job.slot, job.dispatch = Stage.ASSIGNED, record.attempt, record.slot, record
        job.fence = max(job.fence, record.attempt)
        if offset is not None:
            job.dispatch_offset = offset
        if job.job_id in self.finishing:
            return
        current = self.assignments.get(record.slot)
        if current is None or current == job.job_id:
            self.assignments[record.slot] = job.job_id
            self.mismatch_since.pop(job.job_id, None)
        elif self.queued_next.get(record.slot) in (None, job.job_id):
            self.queued_next[record.slot] = job.job_id

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
        elif event.attempt < job.live_attempt:
            return  # a stale attempt's late event, fenced as the projector fences it
        elif event.type in TERMINAL_TYPES:
            if event.type is EventType.SUCCEEDED and job.job_id not in self.finishing:
                self._measure_extra(job, event.occurred_at)
            self._charge(job, event.occurred_at)
            self._finish(job)
        elif event.attempt == job.attempt:
            self._on_attempt_event(job, event)

    def _on_attempt_event(self, job: JobEntry, event: JobEvent) -> None:
        """What the current attempt's worker reports, and the scheduler's preempt requests for it."""
        if isinstance(event, JobCheckpointed):
            job.checkpoint_key, job.resume_step = event.checkpoint_key, event.step
        elif isinstance(event, JobPreemptRequested):
            job.preempt_at = event.at_step if job.preempt_at is None else min(job.preempt_at, event.at_step)
        elif isinstance(event, JobPreempted):
            self._requeue(job, event)
        elif isinstance(event, JobStarted):
            job.started_at, job.charged = event.occurred_at, False
            self._follower_started(job, event.occurred_at)
        elif isinstance(event, JobProgress):
            self._on_progress(job, event)

    def _follower_started(self, job: JobEntry, at: datetime) -> None:
        """A slot denoises one job at a time: when the job dispatched to follow starts, the one before
        it has made its frames, even if the progress event saying so is still on its way (it is sent
        at most every progress interval). The slot then has room for its next look-ahead job."""
        if job.slot is None or self.queued_next.get(job.slot) != job.job_id:
            return
        current = self.assignments.get(job.slot)
        ahead = self.jobs.get(current) if current not in (None, job.job_id) else None
        if ahead is not None and ahead.preempt_at is None:  # a preemption is settled by job.preempted
            self._to_finishing(ahead, at)

    def _on_progress(self, job: JobEntry, event: JobProgress) -> None:
        if event.step is not None and event.step >= job.step:
            job.step, job.step_at = event.step, event.occurred_at
        if event.seconds_per_step:
            job.seconds_per_step = event.seconds_per_step
            if job.request is not None:
                self.step_times[step_key(job.request)] = event.seconds_per_step
        if event.phase in FINISHING_PHASES:
            self._to_finishing(job, event.occurred_at)

    def step_time(self, job: JobEntry) -> float | None:
        """The job's own measured seconds per step, else the last measured for its kind."""
        if job.request is None:
            return None
        return job.seconds_per_step or self.kind_step_time(step_key(job.request))

    def kind_step_time(self, key: StepKey) -> float | None:
        """Seconds per step last measured for `key` (model, frames, size, speed tier). Until a tier is
        measured at that size, another tier's measurement scaled by the catalog's expected ratios
        stands in (`exact` first, as the most often measured)."""
        if (measured := self.step_times.get(key)) is not None:
            return measured
        model, frames, height, width, speed = key
        wanted = tier_ratio(model, speed)
        if wanted is None:
            return None
        for other in (Speed.EXACT, *Speed):
            seen = self.step_times.get((model, frames, height, width, other.value))
            ratio = tier_ratio(model, other.value)
            if seen is not None and ratio:
                return seen * wanted / ratio
        return None

    def kind_extra(self, key: StepKey) -> float | None:
        """GPU seconds a job of `key` spends besides its steps (prompt, decode): measured for the tier,
        else for another tier of the same model and size (the tiers speed up the steps only)."""
        if (measured := self.extra_seconds.get(key)) is not None:
            return measured
        model, frames, height, width, _ = key
        for other in Speed:
            if (seen := self.extra_seconds.get((model, frames, height, width, other.value))) is not None:
                return seen
        return None

    def generating_left(self, job: JobEntry, now: datetime) -> timedelta | None:
        """How long the job should still hold its slot's GPU: the steps left at the measured step time,
        then (unless it is preempted at a checkpoint) its measured GPU time beyond the steps."""
        if job.request is None or job.started_at is None:
            return None
        per_step = self.step_time(job)
        extra = 0.0 if job.preempt_at is not None else self.kind_extra(step_key(job.request))
        if per_step is None or extra is None:
            return None
        since = job.step_at or job.started_at
        last = job.request.num_inference_steps if job.preempt_at is None else job.preempt_at
        steps_left = (last - job.step) * per_step - (now - since).total_seconds()
        # Past the last step (negative), the time since it is spent from the extra.
        return timedelta(seconds=max(steps_left + extra, 0.0))

    def _requeue(self, job: JobEntry, event: JobPreempted) -> None:
        if job.stage is not Stage.ASSIGNED:
            return
        self._charge(job, event.occurred_at)
        self._release(job)
        job.stage, job.slot, job.preempt_at = Stage.WAITING, None, None
        job.checkpoint_key, job.resume_step = event.checkpoint_key, event.step
        job.preemptions += 1
        job.queued_at = event.occurred_at
        self._enqueue(job)
        if job.cancel_requested:
            self.cancel_waiting.add(job.job_id)

    def work_left(self, job: JobEntry) -> float | None:
        """Seconds of GPU time a waiting job still needs, from the measured times of its kind."""
        per_step = self.step_time(job)
        if job.request is None or per_step is None:
            return None
        steps = job.request.num_inference_steps - job.resume_step
        return steps * per_step + (self.kind_extra(step_key(job.request)) or 0.0)

    def _retry(self, job: JobEntry, next_attempt: int) -> None:
        if next_attempt <= job.live_attempt:
            return
        job.fence = next_attempt
        if job.stage is Stage.WAITING:
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
        finishing = frozenset((held.job_id, held.attempt) for held in beat.finishing)
        self.slots[beat.slot] = Slot(
            beat.slot,
            beat.occurred_at,
            beat.boot_id,
            beat.state,
            beat.model,
            reported,
            beat.dispatch_position,
            beat.seconds_per_step,
            finishing,
        )
        if beat.model is not None and beat.state is not SlotState.STOPPING:
            self.model_seen[beat.model] = max(
                beat.occurred_at, self.model_seen.get(beat.model, beat.occurred_at)
            )
        for job_id, attempt in finishing:
            job = self.jobs.get(job_id)
            if job is not None and job.attempt == attempt and job.slot == beat.slot:
                self._to_finishing(job, beat.occurred_at)
