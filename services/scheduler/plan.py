"""Turning the scheduler's state into decisions: recover lost jobs, finish cancelled ones, fill idle slots."""

from __future__ import annotations

import uuid
from datetime import datetime

from schemas.events import SlotState
from schemas.jobs import Priority
from services.scheduler.state import (
    LANES,
    Decision,
    Dispatch,
    Finish,
    JobEntry,
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
    if not consumed or slot.reported_job == (job.job_id, job.attempt):
        state.mismatch_since.pop(job.slot, None)
        return None
    if slot.state is not SlotState.STOPPING:
        return _dropped_after_restart(state, job, slot, now)
    return f"slot {job.slot} stopped during the job"


def _dropped_after_restart(state: SchedulerState, job: JobEntry, slot: Slot, now: datetime) -> str | None:
    assert job.slot is not None
    # The same process that read the record reports it until the run ends, so only a new process
    # (another boot id) can have dropped it; with no boot id known (after a restart), wait longer.
    if job.boot_at_dispatch is not None and slot.boot_id == job.boot_at_dispatch:
        return None
    since = state.mismatch_since.setdefault(job.slot, now)
    if now - since >= state.lost_grace:
        return f"slot {job.slot} restarted and dropped the job"
    return None


def _recover(state: SchedulerState, job: JobEntry, reason: str) -> Decision:
    if job.cancel_requested:
        return Finish(job.job_id, job.attempt, cancelled=True, reason="requested by client")
    if job.attempt >= state.max_attempts:
        return Finish(
            job.job_id, job.attempt, cancelled=False, reason=f"gave up after {job.attempt} attempts: {reason}"
        )
    return Retry(job.job_id, job.attempt + 1, reason)


def recoveries(state: SchedulerState, now: datetime) -> list[Decision]:
    """Jobs whose slot died or dropped them: retried as a new attempt, or ended."""
    out: list[Decision] = []
    for job_id in list(state.assignments.values()):
        job = state.jobs.get(job_id)
        if job is not None and (reason := _lost_reason(state, job, now)) is not None:
            out.append(_recover(state, job, reason))
    return out


def _pick(state: SchedulerState, slot: Slot, batch_allowed: bool, taken: set[uuid.UUID]) -> JobEntry | None:
    """The oldest waiting job of the highest lane that this slot's model can run."""
    for lane in LANES:
        if lane is Priority.BATCH and not batch_allowed:
            continue
        for _, job_id in state.lanes[lane]:
            job = state.jobs[uuid.UUID(job_id)]
            if job.job_id in taken or job.cancel_requested or job.request is None:
                continue
            if slot.model is None or job.request.model == slot.model:
                return job
    return None


def _batch_running(state: SchedulerState) -> int:
    running = (state.jobs.get(j) for j in state.assignments.values())
    return sum(1 for job in running if job and job.request and job.request.priority is Priority.BATCH)


def dispatches(state: SchedulerState, now: datetime) -> list[Decision]:
    """Finish cancelled waiting jobs, then give each idle live slot the job it should run next."""
    out: list[Decision] = [
        Finish(job_id, state.jobs[job_id].attempt, cancelled=True, reason="requested by client")
        for job_id in sorted(state.cancel_waiting, key=str)
        if job_id in state.jobs
    ]
    alive = sorted(
        (s for s in state.slots.values() if s.slot < state.slots_total and is_alive(state, s, now)),
        key=lambda s: s.slot,
    )
    batch_running = _batch_running(state)
    taken: set[uuid.UUID] = set()
    for slot in alive:
        if slot.slot in state.assignments:
            continue
        batch_allowed = batch_running + 1 <= len(alive) - state.reserved_interactive
        job = _pick(state, slot, batch_allowed, taken)
        if job is None or job.request is None:
            continue
        taken.add(job.job_id)
        batch_running += job.request.priority is Priority.BATCH
        resume = job.checkpoint_key if job.attempt > 0 else None
        out.append(Dispatch(job.job_id, slot.slot, job.attempt + 1, job.request, resume))
    return out


def plan(state: SchedulerState, now: datetime) -> list[Decision]:
    return recoveries(state, now) + dispatches(state, now)
