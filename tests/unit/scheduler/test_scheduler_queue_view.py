"""The scheduler's queue view: positions in dispatch order, waits from the list schedule."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from schemas.events import JobProgress, JobStarted
from schemas.jobs import Priority
from schemas.queue import QueueView
from services.scheduler.plan import plan
from services.scheduler.queue_view import queue_view
from services.scheduler.state import step_key
from tests.unit.scheduler.test_scheduler import T0, beat, carry_out, make_state, submit


def started(job_id: uuid.UUID, slot: int, at: datetime) -> JobStarted:
    return JobStarted(job_id=job_id, producer="w", attempt=1, occurred_at=at, slot=slot, worker_id="w")


def test_positions_follow_the_dispatch_order_interactive_lane_first() -> None:
    state = make_state(slots=1)
    batch = submit(state, Priority.BATCH, at=T0)
    first = submit(state, at=T0 + timedelta(seconds=1))
    second = submit(state, at=T0 + timedelta(seconds=2))
    view = queue_view(state, T0 + timedelta(seconds=3))
    positions = view.positions()
    assert positions[first.job_id][0] == 1
    assert positions[second.job_id][0] == 2
    assert positions[batch.job_id][0] == 1, "a position counts within the job's lane"


def test_waits_are_the_list_schedule_on_the_live_slots() -> None:
    state = make_state(slots=2)
    now = T0 + timedelta(seconds=5)
    jobs = [submit(state, at=T0 + timedelta(seconds=i)) for i in range(5)]
    state.on_heartbeat(beat(0, now))
    state.on_heartbeat(beat(1, now))
    carry_out(state, plan(state, now))  # jobs 0 and 1 take the two slots
    steps = jobs[0].request.num_inference_steps
    key = step_key(jobs[0].request)
    state.step_times[key], state.extra_seconds[key] = 1.0, 2.0
    for slot, job in enumerate(jobs[:2]):
        state.on_event(started(job.job_id, slot, now))
    view = queue_view(state, now)
    run = steps * 1.0 + 2.0
    held = {job_id: (wait, left) for job_id, wait, left in view.held}
    assert held[jobs[0].job_id] == (0.0, run)
    waiting = view.lanes[Priority.INTERACTIVE]
    assert [job_id for job_id, _, _ in waiting] == [j.job_id for j in jobs[2:]]
    assert [(wait, left) for _, wait, left in waiting] == [(run, run), (run, run), (2 * run, run)]


def test_unmeasured_step_times_give_no_estimate_rather_than_a_guess() -> None:
    state = make_state(slots=1)
    now = T0 + timedelta(seconds=1)
    state.on_heartbeat(beat(0, now))
    job = submit(state, at=T0)
    [(job_id, wait, run)] = queue_view(state, now).lanes[Priority.INTERACTIVE]
    assert (job_id, wait, run) == (job.job_id, 0.0, None)


def test_a_job_no_live_slot_can_run_has_no_wait() -> None:
    state = make_state(slots=1)
    now = T0 + timedelta(seconds=1)
    state.on_heartbeat(beat(0, now, model="wan-2.1"))
    job = submit(state, at=T0)
    [(job_id, wait, _)] = queue_view(state, now).lanes[Priority.INTERACTIVE]
    assert (job_id, wait) == (job.job_id, None)


def test_progress_moves_the_wait_of_the_jobs_behind() -> None:
    state = make_state(slots=1)
    now = T0 + timedelta(seconds=1)
    state.on_heartbeat(beat(0, now))
    running, waiting = submit(state, at=T0), submit(state, at=T0 + timedelta(milliseconds=1))
    carry_out(state, plan(state, now))
    state.on_event(started(running.job_id, 0, now))
    state.on_event(
        JobProgress(
            job_id=running.job_id, producer="w", attempt=1, occurred_at=now, phase="denoising",
            step=running.request.num_inference_steps - 1,
            total_steps=running.request.num_inference_steps, progress=0.9, seconds_per_step=0.5,
        )
    )  # fmt: skip
    state.extra_seconds[step_key(running.request)] = 1.0
    [(_, wait, run)] = queue_view(state, now).lanes[Priority.INTERACTIVE]
    assert wait == 0.5 + 1.0
    assert run == waiting.request.num_inference_steps * 0.5 + 1.0


def test_the_view_survives_its_encoding() -> None:
    state = make_state(slots=1)
    submit(state, at=T0)
    view = queue_view(state, T0)
    again = QueueView.model_validate_json(view.model_dump_json())
    assert again == view
