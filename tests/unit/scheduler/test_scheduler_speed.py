"""Step times per speed tier: learned per model, size and tier from the workers' reports, with the
catalog's expected ratio standing in until a tier is measured; snapshots keep them apart."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from schemas.catalog import CATALOG, Speed
from schemas.events import JobRequested
from schemas.jobs import JobRequest, resolve
from services.scheduler.plan import plan
from services.scheduler.snapshot import capture, decode, encode, restore
from services.scheduler.state import SchedulerState, step_key
from tests.unit.scheduler.test_scheduler import T0, beat, carry_out, make_state, progress, started, succeed

TIERS = CATALOG["tiny-mochi"].speeds


def submit_tier(state: SchedulerState, speed: Speed) -> JobRequested:
    resolved = resolve(JobRequest(prompt="a cat", model="tiny-mochi", seed=1, speed=speed))
    event = JobRequested(
        job_id=uuid.uuid4(), producer="api", request=resolved, request_hash="h", occurred_at=T0
    )
    state.on_event(event)
    return event


def reported(state: SchedulerState, job: JobRequested, per_step: float) -> None:
    """A worker ran the job (the only one waiting) and reported its step time."""
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0))
    assert state.jobs[job.job_id].attempt == 1
    started(state, job.job_id, 1, T0)
    progress(state, job.job_id, 1, T0 + timedelta(seconds=1), step=1, per_step=per_step)
    succeed(state, job.job_id, 1)


def test_step_times_are_learned_per_tier() -> None:
    state = make_state(slots=1)
    exact = submit_tier(state, Speed.EXACT)
    reported(state, exact, 2.0)
    fast = submit_tier(state, Speed.FAST)
    reported(state, fast, 0.5)

    assert state.kind_step_time(step_key(exact.request)) == 2.0
    assert state.kind_step_time(step_key(fast.request)) == 0.5
    assert step_key(fast.request)[-1] == "fast"


def test_an_unmeasured_tier_is_estimated_from_exact_with_the_catalogs_ratio() -> None:
    state = make_state(slots=1)
    reported(state, submit_tier(state, Speed.EXACT), 2.0)
    waiting = submit_tier(state, Speed.FASTEST)

    expected = 2.0 / TIERS[Speed.FASTEST].expected_speedup
    assert state.kind_step_time(step_key(waiting.request)) == pytest.approx(expected)
    # The GPU time besides the steps (prompt, decode) is exact's: the tiers only speed up the steps.
    extra = state.kind_extra(step_key(waiting.request))
    assert extra is not None and extra == state.extra_seconds[(*step_key(waiting.request)[:4], "exact")]
    assert state.work_left(state.jobs[waiting.job_id]) == pytest.approx(
        waiting.request.num_inference_steps * expected + extra
    )


def test_exact_is_estimated_from_a_measured_tier_when_only_that_ran() -> None:
    state = make_state(slots=1)
    reported(state, submit_tier(state, Speed.FAST), 1.0)
    waiting = submit_tier(state, Speed.EXACT)

    assert state.kind_step_time(step_key(waiting.request)) == pytest.approx(
        TIERS[Speed.FAST].expected_speedup
    )


def test_nothing_measured_at_that_size_gives_no_estimate() -> None:
    state = make_state()
    waiting = submit_tier(state, Speed.FAST)
    assert state.kind_step_time(step_key(waiting.request)) is None
    assert state.work_left(state.jobs[waiting.job_id]) is None


def test_a_snapshot_keeps_tiers_apart_and_a_version_1_snapshot_reads_as_exact() -> None:
    state = make_state(slots=1)
    exact = submit_tier(state, Speed.EXACT)
    reported(state, exact, 2.0)
    fast = submit_tier(state, Speed.FAST)
    reported(state, fast, 0.5)
    raw = encode(capture(state, {}, T0))

    restored = make_state(slots=1)
    restore(restored, decode(raw))
    assert restored.step_times == state.step_times

    old = json.loads(raw)
    old["schema_version"] = 1
    old["step_times"] = [[key[:4], seconds] for key, seconds in old["step_times"] if key[4] == "exact"]
    old["extra_seconds"] = [[key[:4], seconds] for key, seconds in old["extra_seconds"] if key[4] == "exact"]
    from_v1 = make_state(slots=1)
    restore(from_v1, decode(json.dumps(old).encode()))
    assert from_v1.step_times == {step_key(exact.request): 2.0}
