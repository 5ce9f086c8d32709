"""Fair share between tenants, their limits in the scheduler, and what the queue view says of them."""

from __future__ import annotations

import uuid
from datetime import timedelta

from schemas.events import JobRequested, JobStarted, JobSucceeded, TenantLimits, VideoResult
from schemas.jobs import Priority
from services.scheduler.plan import plan
from services.scheduler.queue_view import queue_view
from services.scheduler.snapshot import capture, restore
from services.scheduler.state import Dispatch, SchedulerState
from tests.unit.scheduler.test_scheduler import T0, beat, carry_out, make_state, request


def submit_as(
    state: SchedulerState,
    tenant: str,
    n: int = 1,
    *,
    limits: TenantLimits | None = None,
    priority: Priority = Priority.BATCH,
    start: int = 0,
) -> list[JobRequested]:
    out = []
    for i in range(n):
        event = request(priority).model_copy(
            update={
                "occurred_at": T0 + timedelta(milliseconds=start + i),
                "tenant": tenant,
                "limits": limits or TenantLimits(),
            }
        )
        state.on_event(event)
        out.append(event)
    return out


def live(state: SchedulerState, slots: int, seconds: float = 1) -> None:
    for slot in range(slots):
        state.on_heartbeat(beat(slot, T0 + timedelta(seconds=seconds)))


def dispatched_tenants(state: SchedulerState, seconds: float = 1) -> list[str]:
    decisions = [d for d in plan(state, T0 + timedelta(seconds=seconds)) if isinstance(d, Dispatch)]
    carry_out(state, decisions)
    return [state.jobs[d.job_id].tenant for d in decisions]


def test_a_tenant_with_one_job_is_not_starved_by_one_with_a_thousand() -> None:
    state = make_state(slots=4)
    submit_as(state, "noisy", 1000)
    submit_as(state, "quiet", 1, start=5000)  # submitted after all of noisy's
    live(state, 4)
    tenants = dispatched_tenants(state)
    assert sorted(tenants) == ["noisy", "noisy", "noisy", "quiet"]


def test_with_one_tenant_the_order_is_oldest_first_as_before() -> None:
    state = make_state(slots=2)
    jobs = submit_as(state, "solo", 3)
    live(state, 2)
    decisions = [d for d in plan(state, T0 + timedelta(seconds=1)) if isinstance(d, Dispatch)]
    assert [d.job_id for d in decisions] == [jobs[0].job_id, jobs[1].job_id]


def test_a_tenant_at_its_running_limit_waits_while_others_run() -> None:
    state = make_state(slots=4)
    submit_as(state, "capped", 5, limits=TenantLimits(max_running_jobs=1))
    submit_as(state, "other", 2, start=100)
    live(state, 4)
    assert sorted(dispatched_tenants(state)) == ["capped", "other", "other"]
    assert dispatched_tenants(state, seconds=2) == [], "the fourth slot stays free: capped holds its one"


def test_a_tenant_out_of_gpu_seconds_today_waits_and_the_view_reports_its_use() -> None:
    state = make_state(slots=1)
    limits = TenantLimits(gpu_seconds_per_day=30)
    first, second = submit_as(state, "metered", 2, limits=limits)
    live(state, 1)
    assert dispatched_tenants(state) == ["metered"]
    at = T0 + timedelta(seconds=2)
    state.on_event(
        JobStarted(job_id=first.job_id, producer="w", attempt=1, slot=0, worker_id="w", occurred_at=at)
    )
    result = VideoResult(video_key="k", poster_key=None, size_bytes=1, width=8, height=8, fps=8, frames=1,
                         duration_seconds=0.1)  # fmt: skip
    done = at + timedelta(seconds=40)
    state.on_event(
        JobSucceeded(
            job_id=first.job_id,
            producer="w",
            attempt=1,
            result=result,
            generation_seconds=40,
            occurred_at=done,
        )
    )
    state.on_heartbeat(beat(0, done))
    assert [d for d in plan(state, done) if isinstance(d, Dispatch)] == [], "40 s used of 30"
    view = queue_view(state, done)
    assert view.tenants["metered"] == (1, 0, 40.0)
    tomorrow = done + timedelta(days=1)
    state.on_heartbeat(beat(0, tomorrow))
    assert [d.job_id for d in plan(state, tomorrow) if isinstance(d, Dispatch)] == [second.job_id]


def test_the_view_orders_each_lane_by_fair_share_and_counts_each_tenants_work() -> None:
    state = make_state(slots=1)
    a = submit_as(state, "a", 3)
    b = submit_as(state, "b", 2, start=100)
    live(state, 1)
    view = queue_view(state, T0 + timedelta(seconds=1))
    order = [job_id for job_id, _, _ in view.lanes[Priority.BATCH]]
    assert order == [a[0].job_id, b[0].job_id, a[1].job_id, b[1].job_id, a[2].job_id]
    assert view.tenants == {"a": (3, 0, 0.0), "b": (2, 0, 0.0)}


def test_a_snapshot_keeps_tenants_limits_and_use_and_rebuilds_the_tenant_index() -> None:
    state = make_state(slots=1)
    submit_as(state, "a", 2, limits=TenantLimits(max_running_jobs=3))
    submit_as(state, "b", 1, start=10)
    state.gpu_used["a"] = (T0.date(), 12.5)
    restored = make_state(slots=1)
    restore(restored, capture(state, {}, T0))
    assert restored.by_tenant == state.by_tenant
    assert restored.gpu_used == state.gpu_used
    job = next(iter(restored.jobs.values()))
    assert (job.tenant, job.limits) == ("a", TenantLimits(max_running_jobs=3))
    assert uuid.UUID(int=0) not in restored.jobs
