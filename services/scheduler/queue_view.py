"""The queue as the scheduler will serve it: every waiting job's position and its wait and run estimates.

The scheduler is the only one that knows its order (lanes, preemptions, look-ahead) and the step times
its workers report, so it computes the view and publishes it (`schemas/queue.py`); the api only reads.

The estimate is the list schedule the dispatcher follows: each live slot is free once its running job
has done its GPU work (steps left at its measured step time, plus the measured time beyond the steps)
and its follower after that; then the waiting jobs, interactive lane first and each lane in order, each
take the slot free first among those that can run their model. A job's run is its own steps at the step
time measured for its kind, plus that kind's time beyond the steps. Where a time is not measured yet the
job's estimate is None, and so is the wait of every job that would follow it on the same slots.
"""

from __future__ import annotations

import heapq
import math
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from schemas.jobs import Priority
from schemas.queue import Estimate, QueueView, TenantLoad
from services.scheduler.plan import held_by_tenant, is_alive
from services.scheduler.state import LANES, JobEntry, SchedulerState


@dataclass(slots=True)
class _Slot:
    model: str | None
    free_at: float  # seconds from now; NaN when unknown


def _slot_picture(state: SchedulerState, now: datetime) -> tuple[list[_Slot], list[Estimate]]:
    """When each live slot is free, and the estimates of the jobs the slots hold."""
    slots: list[_Slot] = []
    held: list[Estimate] = []
    for slot in sorted(state.slots.values(), key=lambda s: s.slot):
        if slot.slot >= state.slots_total or not is_alive(state, slot, now):
            continue
        free = 0.0
        running = _job(state, state.assignments.get(slot.slot))
        if running is not None:
            left = state.generating_left(running, now)
            free = left.total_seconds() if left is not None else _or_nan(state.work_left(running))
            held.append((running.job_id, 0.0, _or_none(free)))
        follower = _job(state, state.queued_next.get(slot.slot))
        if follower is not None:
            run = _or_nan(state.work_left(follower))
            held.append((follower.job_id, _or_none(free), _or_none(run)))
            free += run
        slots.append(_Slot(slot.model, free))
    return slots, held


def _job(state: SchedulerState, job_id: uuid.UUID | None) -> JobEntry | None:
    return state.jobs.get(job_id) if job_id is not None else None


def _or_nan(seconds: float | None) -> float:
    return math.nan if seconds is None else seconds


def _or_none(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds, 2)


def fair_order(state: SchedulerState, lane: Priority, held: Counter[str]) -> Iterator[JobEntry]:
    """The lane's jobs in the order fair share dispatches them when every slot can run every job:
    next is always the oldest job of the tenant holding (or about to hold) the fewest slots."""
    counts = Counter(held)
    heads = [(counts[tenant], keys[0], tenant, 0) for tenant, keys in state.by_tenant[lane].items() if keys]
    heapq.heapify(heads)
    while heads:
        _, key, tenant, index = heapq.heappop(heads)
        yield state.jobs[uuid.UUID(key[1])]
        counts[tenant] += 1
        keys = state.by_tenant[lane][tenant]
        if index + 1 < len(keys):
            heapq.heappush(heads, (counts[tenant], keys[index + 1], tenant, index + 1))


def tenant_loads(state: SchedulerState, held: Counter[str], now: datetime) -> dict[str, TenantLoad]:
    waiting: Counter[str] = Counter()
    for lane in LANES:
        for tenant, keys in state.by_tenant[lane].items():
            waiting[tenant] += len(keys)
    today = now.date()
    names = {*waiting, *held, *(t for t, (day, _) in state.gpu_used.items() if day == today)}
    return {t: (waiting[t], held[t], round(state.gpu_seconds_on(t, today), 1)) for t in sorted(names)}


def queue_view(state: SchedulerState, now: datetime) -> QueueView:
    slots, held = _slot_picture(state, now)
    held_slots = held_by_tenant(state)
    lanes: dict[str, list[Estimate]] = {}
    for lane in LANES:
        estimates: list[Estimate] = []
        for job in fair_order(state, lane, held_slots):
            if job.request is None or job.cancel_requested:
                continue
            run = _or_nan(state.work_left(job))
            able = [s for s in slots if s.model is None or s.model == job.request.model]
            if not able:
                estimates.append((job.job_id, None, _or_none(run)))
                continue
            # The slot free first; an unknown time (NaN) counts as free last, and stays unknown.
            first = min(able, key=lambda s: math.inf if math.isnan(s.free_at) else s.free_at)
            estimates.append((job.job_id, _or_none(first.free_at), _or_none(run)))
            first.free_at += run
        lanes[lane.value] = estimates
    # Built, not validated: every field is made here, and validating 10,000 ids twice a second would
    # hold up the planning loop.
    return QueueView.model_construct(
        generated_at=now,
        lanes={Priority(lane): jobs for lane, jobs in lanes.items()},
        held=held,
        tenants=tenant_loads(state, held_slots, now),
    )
