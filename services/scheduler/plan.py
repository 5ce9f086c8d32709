"""Turning the scheduler's state into decisions: recover lost jobs, finish cancelled ones, fill idle slots."""

from __future__ import annotations

import heapq
import math
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.events import ErrorCode, SlotState
from schemas.jobs import Priority
from services.scheduler.state import (
    LANES,
    Decision,
    Dispatch,
    Finish,
    JobEntry,
    Preempt,
    Retry,
    SchedulerState,
    Slot,
)


def is_alive(state: SchedulerState, slot: Slot, now: datetime) -> bool:
    return now - slot.seen_at <= state.dead_after and slot.state is not SlotState.STOPPING


def _silent(state: SchedulerState, seen_at: datetime, now: datetime) -> bool:
    """Silent for longer than `dead_after`, counted only while the scheduler itself could read Kafka."""
    if state.last_input is not None and now - state.last_input > state.dead_after / 2:
        return False  # we are the ones not hearing anything: judge nobody
    since = max(seen_at, state.input_resumed_at) if state.input_resumed_at else seen_at
    return now - since > state.dead_after


def _lost_reason(state: SchedulerState, job: JobEntry, now: datetime) -> str | None:
    """Why the slot that holds `job` will never finish it, or None while it still may."""
    assert job.slot is not None
    slot = state.slots.get(job.slot)
    if slot is None:
        never = _silent(state, state.epoch or now, now)
        return f"slot {job.slot} never reported" if never else None
    if _silent(state, slot.seen_at, now):
        return f"slot {job.slot} silent for more than {state.dead_after.total_seconds():g} s"
    consumed = (
        slot.position is not None and job.dispatch_offset is not None and slot.position > job.dispatch_offset
    )
    if not consumed or slot.holds(job.job_id, job.attempt):
        state.mismatch_since.pop(job.job_id, None)
        return None
    if slot.state is SlotState.STOPPING:
        return f"slot {job.slot} stopped during the job"
    return _dropped(state, job, now)


def _dropped(state: SchedulerState, job: JobEntry, now: datetime) -> str | None:
    """The slot has read past the job's record and does not report it. A slot reports a job from the
    commit of its record until its terminal event is acknowledged, so either that terminal event is
    on its way to us (it is on another topic: the grace lets it arrive) or the record was never
    taken: a new process that lost it, or one whose consumer started past it."""
    assert job.slot is not None
    since = state.mismatch_since.setdefault(job.job_id, now)
    if now - since < state.lost_grace:
        return None
    slot = state.slots[job.slot]
    if job.boot_at_dispatch is not None and slot.boot_id == job.boot_at_dispatch:
        return f"slot {job.slot} read past the job's dispatch record without taking it"
    return f"slot {job.slot} restarted and dropped the job"


def _recover(state: SchedulerState, job: JobEntry, reason: str) -> Decision:
    if job.cancel_requested:
        return Finish(job.job_id, job.attempt, cancelled=True, reason="requested by client")
    if job.failed_attempts >= state.max_attempts:
        return Finish(
            job.job_id,
            job.attempt,
            cancelled=False,
            reason=f"gave up after {job.failed_attempts} attempts: {reason}",
        )
    return Retry(job.job_id, job.attempt + 1, reason)


def recoveries(state: SchedulerState, now: datetime) -> list[Decision]:
    """Jobs whose slot died or dropped them: retried as a new attempt, or ended."""
    out: list[Decision] = []
    for job_id in state.held_jobs():
        job = state.jobs.get(job_id)
        if job is not None and (reason := _lost_reason(state, job, now)) is not None:
            out.append(_recover(state, job, reason))
    return out


def held_by_tenant(state: SchedulerState) -> Counter[str]:
    """Slots each tenant's jobs hold: on a GPU, or dispatched to follow the job on one."""
    held: Counter[str] = Counter()
    for job_id in (*state.assignments.values(), *state.queued_next.values()):
        if (job := state.jobs.get(job_id)) is not None:
            held[job.tenant] += 1
    return held


def may_start(state: SchedulerState, job: JobEntry, held: Counter[str], now: datetime) -> bool:
    """Whether the job's tenant is within its limits: slots held, and GPU seconds used today (UTC)."""
    limits = job.limits
    if limits.max_running_jobs is not None and held[job.tenant] >= limits.max_running_jobs:
        return False
    budget = limits.gpu_seconds_per_day
    return budget is None or state.gpu_seconds_on(job.tenant, now.date()) < budget


def _oldest_runnable(
    state: SchedulerState, keys: list[tuple[datetime, str]], slot: Slot, taken: set[uuid.UUID]
) -> JobEntry | None:
    for _, job_id in keys:
        job = state.jobs[uuid.UUID(job_id)]
        if job.job_id in taken or job.cancel_requested or job.request is None:
            continue
        if slot.model is None or job.request.model == slot.model:
            return job
    return None


def _pick(
    state: SchedulerState,
    slot: Slot,
    batch_allowed: bool,
    taken: set[uuid.UUID],
    *,
    held: Counter[str],
    now: datetime,
) -> JobEntry | None:
    """Fair share within the highest lane that has work for this slot: of each tenant's oldest job
    the slot's model can run, the one whose tenant holds the fewest slots (then the oldest), skipping
    tenants at their limits. One tenant's thousand jobs do not hold back another tenant's one."""
    for lane in LANES:
        if lane is Priority.BATCH and not batch_allowed:
            continue
        best: JobEntry | None = None
        for keys in state.by_tenant[lane].values():
            job = _oldest_runnable(state, keys, slot, taken)
            if job is None or not may_start(state, job, held, now):
                continue
            if best is None or (held[job.tenant], job.sort_key) < (held[best.tenant], best.sort_key):
                best = job
        if best is not None:
            return best
    return None


def _is_batch(job: JobEntry | None) -> bool:
    return job is not None and job.request is not None and job.request.priority is Priority.BATCH


def _newest(state: SchedulerState, slot: int) -> JobEntry | None:
    """The job a slot will run last of those it holds: its follower if one waits, else its running one."""
    job_id = state.queued_next.get(slot, state.assignments.get(slot))
    return state.jobs.get(job_id) if job_id is not None else None


def _batch_running(state: SchedulerState) -> int:
    """Slots given to the batch lane: a follower replaces the job before it on the slot, so a slot
    counts once, by its newest job."""
    return sum(_is_batch(_newest(state, slot)) for slot in {*state.assignments, *state.queued_next})


def _takes_a_job(state: SchedulerState, slot: Slot, now: datetime) -> bool:
    """Free, or (look-ahead) about to be: its job should finish denoising within `state.lookahead`, so
    the next one waits in the slot's partition instead of after a dispatch round trip."""
    if slot.slot not in state.assignments:
        return True
    if slot.slot in state.queued_next or state.lookahead <= timedelta(0):
        return False
    current = state.jobs.get(state.assignments[slot.slot])
    left = state.generating_left(current, now) if current is not None else None
    return left is not None and left <= state.lookahead


def dispatches(state: SchedulerState, now: datetime) -> list[Decision]:
    """Finish cancelled waiting jobs, then give each idle live slot the job it should run next."""
    out: list[Decision] = [
        Finish(job_id, state.jobs[job_id].live_attempt, cancelled=True, reason="requested by client")
        for job_id in sorted(state.cancel_waiting, key=str)
        if job_id in state.jobs
    ]
    alive = sorted(
        (s for s in state.slots.values() if s.slot < state.slots_total and is_alive(state, s, now)),
        key=lambda s: s.slot,
    )
    batch_running = _batch_running(state)
    held = held_by_tenant(state)
    taken: set[uuid.UUID] = set()
    for slot in alive:
        if not _takes_a_job(state, slot, now):
            continue
        replaces_batch = _is_batch(_newest(state, slot.slot))
        batch_allowed = batch_running - replaces_batch + 1 <= len(alive) - state.reserved_interactive
        job = _pick(state, slot, batch_allowed, taken, held=held, now=now)
        if job is None or job.request is None:
            continue
        taken.add(job.job_id)
        held[job.tenant] += 1
        batch_running += _is_batch(job) - replaces_batch
        resume = job.checkpoint_key if job.attempt > 0 else None
        after = state.assignments.get(slot.slot)
        out.append(Dispatch(job.job_id, slot.slot, job.attempt + 1, job.request, resume, after))
    return out


# ---- balancing the batch lane by preemption at checkpoints -------------------------------------------
#
# Jobs cannot be split across GPUs, so a queue of equal long jobs ends in a last round that leaves
# slots idle: 60 jobs on 8 slots run 7 full rounds and then 4 jobs alone. With preemption the work can
# be balanced (McNaughton's wrap-around rule): some running jobs are preempted at a checkpoint so that the
# last waiting jobs start earlier, and their remainders fill the slots that would have idled. The rule
# below finds that online, one preemption at a time: it simulates the list schedule of the batch work
# (running remainders, then waiting jobs in queue order on the slot free first) against the balanced
# finish T = now + max(longest job, total work / slots), and asks the running job whose preemption cuts
# the work predicted to end after T the most to stop at the step that lets the longest waiting job
# still end by T. It acts only while no interactive job waits, and at most `max_preemptions` times
# per job.


@dataclass(frozen=True, slots=True)
class _Running:
    job: JobEntry
    index: int  # of its slot in the picture
    left: float  # seconds of denoising to its end
    after: float  # seconds of work dispatched to follow it on the same slot
    per_step: float
    step_now: float


def _job_in(state: SchedulerState, held: dict[int, uuid.UUID], slot: int) -> JobEntry | None:
    job_id = held.get(slot)
    return state.jobs.get(job_id) if job_id is not None else None


def _batch_picture(
    state: SchedulerState, alive: list[Slot], now: datetime
) -> tuple[list[float], list[tuple[float, float]], list[_Running]] | None:
    """When each slot is free (seconds from now), the batch work waiting (available at, seconds) in
    queue order, and the batch jobs that may still be preempted. None when a step time of a
    job involved has not been measured yet: no guess is made."""
    free: list[float] = []
    remainders: list[tuple[float, float]] = []
    movable: list[_Running] = []
    for index, slot in enumerate(alive):
        running = _job_in(state, state.assignments, slot.slot)
        follower = _job_in(state, state.queued_next, slot.slot)
        at, candidate = 0.0, None
        if running is not None and running.request is not None:
            per_step = state.step_time(running)
            remaining = state.generating_left(running, now)
            work = remaining.total_seconds() if remaining is not None else state.work_left(running)
            if per_step is None or work is None:
                return None
            steps = running.request.num_inference_steps
            if running.preempt_at is not None:  # preempted after `work`; the rest waits again
                remainders.append((work, max(steps - running.preempt_at, 0) * per_step))
            elif running.request.priority is Priority.BATCH and running.preemptions < state.max_preemptions:
                candidate = (running, work, per_step, steps - work / per_step)
            at = work
        if follower is not None:
            work = state.work_left(follower)
            if work is None:
                return None
            at += work
        free.append(at)
        if candidate is not None:
            job, seconds, per_step, step_now = candidate
            movable.append(_Running(job, index, seconds, at - seconds, per_step, step_now))
    waiting: list[tuple[float, float]] = []
    for _, job_id in state.lanes[Priority.BATCH]:
        job = state.jobs[uuid.UUID(job_id)]
        if job.cancel_requested or job.request is None:
            continue
        work = state.work_left(job)
        if work is None:
            return None
        waiting.append((0.0, work))
    return free, waiting + sorted(remainders), movable


def _ends(free: list[float], queue: list[tuple[float, float]]) -> list[float]:
    """List schedule: each job in order starts on the slot free first, not before it is available."""
    slots = list(free)
    heapq.heapify(slots)
    ends: list[float] = []
    for available, work in queue:
        end = max(heapq.heappop(slots), available) + work
        heapq.heappush(slots, end)
        ends.append(end)
    return ends


def _late(free: list[float], queue: list[tuple[float, float]], finish: float) -> float:
    return sum(max(0.0, end - finish) for end in [*free, *_ends(free, queue)])


def balance(state: SchedulerState, now: datetime) -> list[Decision]:
    """At most one preemption that makes the batch lane's work end closer to the balanced finish."""
    if state.balance_gain is None or state.lanes[Priority.INTERACTIVE] or not state.lanes[Priority.BATCH]:
        return []
    alive = [s for s in state.slots.values() if s.slot < state.slots_total and is_alive(state, s, now)]
    if len(alive) < 2 or state.reserved_interactive:
        return []
    picture = _batch_picture(state, alive, now)
    if picture is None:
        return []
    free, queue, movable = picture
    works = [work for _, work in queue]
    finish = max(*works, *free, (sum(free) + sum(works)) / len(alive))
    late = _late(free, queue, finish)
    gain = state.balance_gain.total_seconds()
    best: tuple[float, Preempt] | None = None
    for running in movable:
        # Preempt so that the longest waiting job, started then, still ends by the balanced finish;
        # at one of the two steps around that moment (the worker takes a checkpoint there).
        ideal = running.step_now + max(finish - max(works), 0.0) / running.per_step
        total = running.job.request.num_inference_steps if running.job.request else 0
        for at_step in {math.floor(ideal), math.ceil(ideal)}:
            if not running.step_now < at_step < total:
                continue
            at = (at_step - running.step_now) * running.per_step
            i = running.index
            moved = [*free[:i], at + running.after, *free[i + 1 :]]
            cut = late - _late(moved, [*queue, (at, running.left - at)], finish)
            if cut > gain and (best is None or cut > best[0]):
                reason = f"balance the batch lane: {cut:.0f} s less slot time past the balanced finish"
                best = (cut, Preempt(running.job.job_id, running.job.attempt, at_step, reason))
    return [best[1]] if best is not None else []


def plan(state: SchedulerState, now: datetime, *, sweep: bool = True) -> list[Decision]:
    """Recover and expire, then dispatch; only a round with none of these balances (it must see the
    dispatches made). A round that expires jobs dispatches nothing, so no job is both.

    Expiring and balancing read every waiting job; a round without `sweep` skips both, so that rounds
    woken by each arrival of a burst cost what their dispatches cost, not the length of the queue."""
    recovered = recoveries(state, now)
    expired = expiries(state, now) if sweep else []
    if expired:
        return recovered + expired
    decided = recovered + dispatches(state, now)
    return decided or (balance(state, now) if sweep else [])


def expiries(state: SchedulerState, now: datetime) -> list[Decision]:
    """Waiting jobs that should not wait any longer: past the queue's time limit, or for a model that no
    live slot has served for `unserviceable_after` while others were live. A scheduler that cannot read
    Kafka judges nothing, and every window starts again when it (re)starts reading."""
    if state.queue_ttl is None and state.unserviceable_after is None:
        return []
    if state.last_input is not None and now - state.last_input > state.dead_after / 2:
        return []
    alive = [s for s in state.slots.values() if is_alive(state, s, now)]
    served = {s.model for s in alive}
    out: list[Decision] = []
    for lane in LANES:
        for _, job_id in state.lanes[lane]:
            job = state.jobs[uuid.UUID(job_id)]
            if job.cancel_requested or job.request is None or job.created_at is None:
                continue
            why = _expired(state, job, now, served if alive and None not in served else None)
            if why is not None:
                reason, code = why
                out.append(Finish(job.job_id, job.live_attempt, cancelled=False, reason=reason, code=code))
    return out


def _expired(
    state: SchedulerState, job: JobEntry, now: datetime, served: set[str | None] | None
) -> tuple[str, ErrorCode] | None:
    assert job.request is not None
    assert job.created_at is not None
    if state.queue_ttl is not None and now - job.created_at > state.queue_ttl:
        limit = state.queue_ttl.total_seconds()
        return f"waited longer than the queue's limit of {limit:g} s for a slot", ErrorCode.QUEUE_TIMEOUT
    model = job.request.model
    if state.unserviceable_after is None or served is None or model in served:
        return None
    starts = [
        job.queued_at or job.created_at,
        state.epoch,
        state.input_resumed_at,
        state.model_seen.get(model),
    ]
    since = max(t for t in starts if t is not None)
    if now - since <= state.unserviceable_after:
        return None
    names = ", ".join(sorted(m for m in served if m is not None))
    waited = state.unserviceable_after.total_seconds()
    return (
        f"no running slot serves model {model} (served now: {names}); waited {waited:g} s for one",
        ErrorCode.MODEL_UNAVAILABLE,
    )
