"""The scheduler's rules, on its pure state with an explicit clock: lanes, slots, cancels, recovery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import (
    ErrorCode,
    HeldJob,
    JobCancelled,
    JobCancelRequested,
    JobCheckpointed,
    JobDispatched,
    JobPreempted,
    JobPreemptRequested,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    SlotState,
    VideoResult,
    WorkerHeartbeat,
)
from schemas.jobs import JobRequest, Phase, Priority, resolve
from services.scheduler.main import decision_event
from services.scheduler.plan import plan
from services.scheduler.state import Dispatch, Finish, Preempt, Retry, SchedulerState, step_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOOT = uuid.uuid4()


def make_state(slots: int = 2, reserved: int = 0, max_attempts: int = 3) -> SchedulerState:
    return SchedulerState(
        slots_total=slots,
        dead_after=timedelta(seconds=10),
        lost_grace=timedelta(seconds=3),
        max_attempts=max_attempts,
        reserved_interactive=reserved,
        epoch=T0,
    )


def request(priority: Priority = Priority.INTERACTIVE, model: str = "tiny-mochi") -> JobRequested:
    resolved = resolve(JobRequest(prompt="a cat", model=model, priority=priority, seed=1))
    return JobRequested(job_id=uuid.uuid4(), producer="api", request=resolved, request_hash="h")


def beat(
    slot: int,
    at: datetime,
    *,
    job: tuple[uuid.UUID, int] | None = None,
    position: int = 0,
    state: SlotState = SlotState.IDLE,
    boot: uuid.UUID = BOOT,
    model: str = "tiny-mochi",
) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        producer=f"worker-{slot}",
        slot=slot,
        worker_id="w",
        boot_id=boot,
        state=state,
        occurred_at=at,
        job_id=job[0] if job else None,
        attempt=job[1] if job else None,
        model=model,
        dispatch_position=position,
    )


def submit(
    state: SchedulerState, priority: Priority = Priority.INTERACTIVE, at: datetime = T0
) -> JobRequested:
    event = request(priority)
    event = event.model_copy(update={"occurred_at": at})
    state.on_event(event)
    return event


def carry_out(state: SchedulerState, decisions: list[object], offset: int = 0) -> None:
    """Apply decisions the way the Kafka loop does after the broker acknowledged them."""
    for d in decisions:
        if isinstance(d, Dispatch):
            state.on_dispatch(
                JobDispatched(
                    job_id=d.job_id,
                    producer="scheduler",
                    attempt=d.attempt,
                    slot=d.slot,
                    request=d.request,
                    resume_checkpoint=d.resume_checkpoint,
                ),
                offset,
            )
        elif isinstance(d, Retry):
            state._retry(state.jobs[d.job_id], d.next_attempt)
        elif isinstance(d, Finish):
            state._finish(state.jobs[d.job_id])


def succeed(state: SchedulerState, job_id: uuid.UUID, attempt: int) -> None:
    result = VideoResult(
        video_key="k",
        poster_key=None,
        size_bytes=1,
        width=96,
        height=64,
        fps=30,
        frames=7,
        duration_seconds=0.2,
    )
    state.on_event(
        JobSucceeded(job_id=job_id, producer="w", attempt=attempt, result=result, generation_seconds=1)
    )


def test_no_slot_no_dispatch_then_fifo_per_idle_slot() -> None:
    state = make_state()
    first, second, third = (submit(state, at=T0 + timedelta(seconds=i)) for i in range(3))
    assert plan(state, T0) == []
    state.on_heartbeat(beat(0, T0))
    state.on_heartbeat(beat(1, T0))
    decisions = plan(state, T0)
    assert [(d.job_id, d.slot, d.attempt) for d in decisions if isinstance(d, Dispatch)] == [
        (first.job_id, 0, 1),
        (second.job_id, 1, 1),
    ]
    carry_out(state, decisions)
    assert plan(state, T0) == []  # both slots busy: the third waits
    succeed(state, first.job_id, 1)
    [d] = plan(state, T0)
    assert isinstance(d, Dispatch) and d.job_id == third.job_id and d.slot == 0


def test_interactive_lane_goes_before_older_batch_jobs() -> None:
    state = make_state(slots=1)
    batch = submit(state, Priority.BATCH, T0)
    interactive = submit(state, Priority.INTERACTIVE, T0 + timedelta(seconds=5))
    state.on_heartbeat(beat(0, T0))
    [d] = plan(state, T0)
    assert isinstance(d, Dispatch) and d.job_id == interactive.job_id
    carry_out(state, [d])
    succeed(state, interactive.job_id, 1)
    [d] = plan(state, T0)
    assert isinstance(d, Dispatch) and d.job_id == batch.job_id


def test_reserved_slots_stay_free_of_batch_work() -> None:
    state = make_state(slots=3, reserved=1)
    for _ in range(3):
        submit(state, Priority.BATCH)
    for slot in range(3):
        state.on_heartbeat(beat(slot, T0))
    decisions = plan(state, T0)
    assert [d.slot for d in decisions if isinstance(d, Dispatch)] == [0, 1]
    carry_out(state, decisions)
    late = submit(state, Priority.INTERACTIVE)
    [d] = plan(state, T0)
    assert isinstance(d, Dispatch) and d.job_id == late.job_id and d.slot == 2


def test_slot_only_runs_jobs_of_its_model() -> None:
    state = make_state(slots=1)
    other = request(model="mochi-1-preview")
    state.on_event(other)
    state.on_heartbeat(beat(0, T0, model="tiny-mochi"))
    assert plan(state, T0) == []


def test_cancelled_queued_job_is_finished_and_never_dispatched() -> None:
    state = make_state(slots=1)
    job = submit(state)
    state.on_event(JobCancelRequested(job_id=job.job_id, producer="api"))
    state.on_heartbeat(beat(0, T0))
    decisions = plan(state, T0)
    assert decisions == [Finish(job.job_id, 0, cancelled=True, reason="requested by client")]
    carry_out(state, decisions)
    assert plan(state, T0) == []


def test_duplicate_requested_is_ignored_and_done_jobs_stay_done() -> None:
    state = make_state(slots=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0))
    succeed(state, job.job_id, 1)
    state.on_event(job)  # the same job.requested read again
    assert plan(state, T0) == []


def test_silent_slot_job_is_retried_from_its_checkpoint_on_another_slot() -> None:
    state = make_state()
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=5)
    state.on_event(
        JobCheckpointed(
            job_id=job.job_id, producer="w", attempt=1, step=2, total_steps=4, checkpoint_key="ckpt"
        )
    )
    state.on_heartbeat(beat(1, T0 + timedelta(seconds=11)))
    [retry] = plan(state, T0 + timedelta(seconds=11))
    assert isinstance(retry, Retry) and retry.next_attempt == 2 and "silent" in retry.reason
    carry_out(state, [retry])
    [d] = plan(state, T0 + timedelta(seconds=11))
    assert isinstance(d, Dispatch) and (d.slot, d.attempt, d.resume_checkpoint) == (1, 2, "ckpt")


def test_restarted_worker_that_dropped_the_job_is_noticed_after_the_grace() -> None:
    state = make_state(slots=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=7)
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=1), position=7))  # not read yet: fine
    assert plan(state, T0 + timedelta(seconds=5)) == []
    restarted = uuid.uuid4()
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=6), position=8, boot=restarted))
    assert plan(state, T0 + timedelta(seconds=6)) == []  # within the grace: a terminal may be on its way
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=9), position=8, boot=restarted))
    [retry] = plan(state, T0 + timedelta(seconds=9))
    assert isinstance(retry, Retry) and retry.job_id == job.job_id


def test_a_restarted_slot_busy_with_its_next_job_still_gets_the_lost_one_back_after_the_grace() -> None:
    # The slot held job 1 (record 7) with job 2 queued behind it (record 8). Its process dies; the new
    # one starts past both records' commit, takes job 2 and reports it. Job 1's grace runs on its own:
    # reporting job 2 does not restart it, so job 1 is retried within the grace, not after job 2 ends.
    state = make_state(slots=1)
    jobs = {j.job_id: j for j in (submit(state), submit(state))}
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=7)
    first = jobs.pop(state.assignments[0])  # whichever of the two the plan put on the slot
    (second,) = jobs.values()
    carry_out(state, [Dispatch(second.job_id, 0, 1, second.request, None, after=first.job_id)], offset=8)
    assert state.queued_next[0] == second.job_id
    restarted = uuid.uuid4()
    for s in range(6, 9):
        busy = beat(0, T0 + timedelta(seconds=s), job=(second.job_id, 1), position=9, boot=restarted)
        state.on_heartbeat(busy.model_copy(update={"state": SlotState.BUSY}))
        assert plan(state, T0 + timedelta(seconds=s)) == []  # within the grace
    state.on_heartbeat(
        beat(
            0,
            T0 + timedelta(seconds=9),
            job=(second.job_id, 1),
            position=9,
            boot=restarted,
            state=SlotState.BUSY,
        )
    )
    [retry] = plan(state, T0 + timedelta(seconds=9))
    assert isinstance(retry, Retry) and retry.job_id == first.job_id and "restarted" in retry.reason


def test_slot_reporting_its_job_is_left_alone() -> None:
    state = make_state(slots=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=3)
    for s in range(1, 30):
        state.on_heartbeat(
            beat(0, T0 + timedelta(seconds=s), job=(job.job_id, 1), position=4, state=SlotState.BUSY)
        )
        assert plan(state, T0 + timedelta(seconds=s)) == []


def test_attempts_are_bounded() -> None:
    state = make_state(slots=1, max_attempts=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0))
    [d] = plan(state, T0 + timedelta(seconds=30))
    assert isinstance(d, Finish) and not d.cancelled and d.job_id == job.job_id


def test_stale_terminal_event_does_not_free_the_new_attempt() -> None:
    state = make_state()
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0))
    state.on_heartbeat(beat(1, T0 + timedelta(seconds=11)))
    carry_out(state, plan(state, T0 + timedelta(seconds=11)))  # retry
    carry_out(state, plan(state, T0 + timedelta(seconds=11)))  # attempt 2 on slot 1
    state.on_event(JobCancelled(job_id=job.job_id, producer="w", attempt=1))
    assert state.assignments.get(1) == job.job_id


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(6))))
def test_rebuild_in_any_order_gives_the_same_waiting_lanes(order: list[int]) -> None:
    """Replaying topics after a restart interleaves them differently; the queue must not care."""
    jobs = [request(Priority.BATCH if i % 2 else Priority.INTERACTIVE) for i in range(6)]
    jobs = [j.model_copy(update={"occurred_at": T0 + timedelta(seconds=i)}) for i, j in enumerate(jobs)]
    expected, shuffled = make_state(), make_state()
    for j in jobs:
        expected.on_event(j)
    for i in order:
        shuffled.on_event(jobs[i])
    assert shuffled.lanes == expected.lanes


@pytest.mark.parametrize("waiting", [0, 1, 5])
def test_plan_never_dispatches_one_job_twice(waiting: int) -> None:
    state = make_state(slots=4)
    for _ in range(waiting):
        submit(state)
    for slot in range(4):
        state.on_heartbeat(beat(slot, T0))
    ids = [d.job_id for d in plan(state, T0) if isinstance(d, Dispatch)]
    assert len(ids) == len(set(ids)) == min(waiting, 4)


def test_decision_events_have_ids_that_survive_a_restart() -> None:
    job = request()
    first = decision_event(JobDispatched, job.job_id, 2, slot=0, request=job.request)
    again = decision_event(JobDispatched, job.job_id, 2, slot=1, request=job.request)
    assert first.event_id == again.event_id == uuid.uuid5(job.job_id, "dispatched/2")
    assert decision_event(JobCancelled, job.job_id, 2).event_id != first.event_id


def test_a_slot_that_has_not_read_the_record_yet_is_left_alone() -> None:
    """Reported position at the record: read perhaps, not committed; the slot may still take it."""
    state = make_state(slots=1)
    submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=7)
    for s in range(1, 9):
        state.on_heartbeat(beat(0, T0 + timedelta(seconds=s), position=7))
        assert plan(state, T0 + timedelta(seconds=s)) == []


def test_a_slot_idle_past_its_record_gets_the_job_again_within_the_grace() -> None:
    """A fresh slot whose consumer started past its first record (the first-job hang): the same
    process reports idle past the record it was given, so the job goes out again, not waits forever."""
    state = make_state(slots=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=7)
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=1), position=8))  # same boot, holding nothing
    assert plan(state, T0 + timedelta(seconds=1)) == []  # its terminal event may be on its way
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=4), position=8))
    [retry] = plan(state, T0 + timedelta(seconds=4))
    assert isinstance(retry, Retry) and retry.job_id == job.job_id and "without taking it" in retry.reason
    carry_out(state, [retry])
    [again] = plan(state, T0 + timedelta(seconds=4))
    assert isinstance(again, Dispatch) and (again.job_id, again.slot, again.attempt) == (job.job_id, 0, 2)


def retried_once() -> tuple[SchedulerState, JobRequested]:
    """A job dispatched as attempt 1 on slot 0 (record at offset 3), then announced retrying as attempt 2."""
    state = make_state(slots=1)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    carry_out(state, plan(state, T0), offset=3)
    state.on_event(
        JobRetrying(job_id=job.job_id, producer="scheduler", attempt=1, next_attempt=2, reason="lost")
    )
    return state, job


def test_a_stale_attempts_terminal_event_between_retry_and_redispatch_is_fenced() -> None:
    """job.retrying moved the job to attempt 2; attempt 1's late job.failed must not end it (the
    projector drops it too, so ending it here would leave the read model queued for ever)."""
    state, job = retried_once()
    state.on_event(JobCancelled(job_id=job.job_id, producer="w", attempt=1))
    assert job.job_id in state.jobs and job.job_id not in state.done
    state.on_heartbeat(beat(0, T0 + timedelta(seconds=1), position=4))
    [d] = plan(state, T0 + timedelta(seconds=1))
    assert isinstance(d, Dispatch) and d.attempt == 2


def test_cancelling_a_retried_waiting_job_names_the_attempt_the_projector_expects() -> None:
    state, job = retried_once()
    state.on_event(JobCancelRequested(job_id=job.job_id, producer="api", attempt=1))
    [finish] = plan(state, T0 + timedelta(seconds=1))
    assert isinstance(finish, Finish) and finish.cancelled and finish.attempt == 2


def test_a_scheduler_that_hears_nothing_judges_no_slot_dead() -> None:
    """A broker outage silences every slot at once; that is not the slots' fault."""
    state = make_state(slots=2)
    job = submit(state)
    state.on_heartbeat(beat(0, T0))
    state.on_heartbeat(beat(1, T0))
    state.on_input(T0)
    carry_out(state, plan(state, T0))
    assert plan(state, T0 + timedelta(seconds=30)) == []  # no input for 30 s: blind, not dead
    for s in range(31, 43):  # Kafka is back: every slot gets a fresh window, slot 1 beats again
        state.on_input(T0 + timedelta(seconds=s))
        state.on_heartbeat(beat(1, T0 + timedelta(seconds=s)))
        if s < 41:
            assert plan(state, T0 + timedelta(seconds=s)) == []
    [retry] = plan(state, T0 + timedelta(seconds=42))
    assert isinstance(retry, Retry) and retry.job_id == job.job_id


def test_an_announced_dispatch_without_its_record_is_known_as_assigned() -> None:
    state = make_state(slots=1)
    job = submit(state)
    announced = JobDispatched(job_id=job.job_id, producer="scheduler", attempt=1, slot=0, request=job.request)
    state.on_event(announced)
    entry = state.jobs[job.job_id]
    assert entry.stage.value == "assigned" and entry.dispatch_offset is None and entry.dispatch == announced
    state.on_dispatch(announced, 4)
    assert state.jobs[job.job_id].dispatch_offset == 4


# ---- finishing and look-ahead: no GPU waits for a video upload or a dispatch round trip ----------


def started(state: SchedulerState, job_id: uuid.UUID, attempt: int, at: datetime) -> None:
    state.on_event(
        JobStarted(job_id=job_id, producer="w", attempt=attempt, occurred_at=at, slot=0, worker_id="w")
    )


def progress(
    state: SchedulerState,
    job_id: uuid.UUID,
    attempt: int,
    at: datetime,
    *,
    step: int | None = None,
    phase: Phase = Phase.DENOISING,
    per_step: float | None = 1.0,
) -> None:
    job = state.jobs[job_id]
    assert job.request is not None
    state.on_event(
        JobProgress(
            job_id=job_id,
            producer="w",
            attempt=attempt,
            occurred_at=at,
            phase=phase,
            progress=0.5,
            step=step,
            total_steps=job.request.num_inference_steps,
            seconds_per_step=per_step,
        )
    )


def one_slot_running(lookahead: float = 0.0) -> tuple[SchedulerState, JobRequested, JobRequested]:
    state = make_state(slots=1)
    state.lookahead = timedelta(seconds=lookahead)
    state.on_heartbeat(beat(0, T0))
    first, second = submit(state), submit(state, at=T0 + timedelta(seconds=1))
    decisions = plan(state, T0)
    assert [(d.job_id, d.slot) for d in decisions if isinstance(d, Dispatch)] == [(first.job_id, 0)]
    carry_out(state, decisions, offset=0)
    started(state, first.job_id, 1, T0)
    return state, first, second


def test_a_slot_storing_a_video_takes_the_next_job_and_still_answers_for_the_first() -> None:
    state, first, second = one_slot_running()
    now = T0 + timedelta(seconds=2)
    assert plan(state, now) == []  # denoising: the slot is busy
    finishing = beat(0, now, position=1).model_copy(
        update={"finishing": [HeldJob(job_id=first.job_id, attempt=1)]}
    )
    state.on_heartbeat(finishing)
    decisions = plan(state, now)
    assert [(d.job_id, d.slot) for d in decisions if isinstance(d, Dispatch)] == [(second.job_id, 0)]
    carry_out(state, decisions, offset=1)
    assert state.assignments[0] == second.job_id and state.finishing == {first.job_id: 0}
    # The slot dies while storing the first video: both jobs are recovered.
    for second_ in range(12):  # the scheduler itself hears the other slots all along
        state.on_input(now + timedelta(seconds=second_))
    later = now + timedelta(seconds=11)
    retried = {d.job_id for d in plan(state, later) if isinstance(d, Retry)}
    assert retried == {first.job_id, second.job_id}


def test_a_finishing_phase_frees_the_slot_and_the_terminal_event_ends_it() -> None:
    state, first, second = one_slot_running()
    now = T0 + timedelta(seconds=2)
    progress(state, first.job_id, 1, now, phase=Phase.ENCODING_VIDEO)
    carry_out(state, plan(state, now), offset=1)
    assert state.assignments[0] == second.job_id
    succeed(state, first.job_id, 1)
    assert first.job_id not in state.finishing and first.job_id not in state.jobs
    assert state.assignments[0] == second.job_id


def test_the_gpu_time_beyond_the_steps_is_measured_per_kind_of_job() -> None:
    state, first, _ = one_slot_running()
    steps = first.request.num_inference_steps
    progress(state, first.job_id, 1, T0 + timedelta(seconds=1), step=1, per_step=1.0)
    # Started at T0, `steps` seconds of steps, frames made 3 s later (prompt encoding, VAE decode).
    progress(state, first.job_id, 1, T0 + timedelta(seconds=steps + 3), phase=Phase.ENCODING_VIDEO)
    assert list(state.extra_seconds.values()) == [3.0]


def test_a_job_too_short_to_report_its_step_time_is_measured_with_its_kinds() -> None:
    state, first, _ = one_slot_running()
    steps = first.request.num_inference_steps
    state.step_times[step_key(first.request)] = 1.0  # measured on earlier jobs of this kind
    at = T0 + timedelta(seconds=steps + 2)
    progress(state, first.job_id, 1, at, phase=Phase.ENCODING_VIDEO, per_step=None)
    assert list(state.extra_seconds.values()) == [2.0]


def test_look_ahead_dispatches_the_next_job_shortly_before_the_slot_is_free() -> None:
    state, first, second = one_slot_running(lookahead=2.0)
    steps = second.request.num_inference_steps
    state.extra_seconds[step_key(first.request)] = 1.0  # measured on earlier jobs of this kind
    progress(state, first.job_id, 1, T0 + timedelta(seconds=1), step=1, per_step=1.0)
    early = T0 + timedelta(seconds=1)  # steps - 1 seconds of denoising left, then 1 s of decoding
    assert steps - 1 > 2 and plan(state, early) == []
    near = T0 + timedelta(seconds=steps - 1)  # within 2 s of the end
    decisions = plan(state, near)
    assert [(d.job_id, d.slot) for d in decisions if isinstance(d, Dispatch)] == [(second.job_id, 0)]
    carry_out(state, decisions, offset=1)
    assert state.assignments[0] == first.job_id and state.queued_next[0] == second.job_id
    assert plan(state, near) == []  # one follower per slot
    # Not read yet by the slot (position 1 is its offset): not lost while the slot beats.
    state.on_heartbeat(beat(0, near, job=(first.job_id, 1), position=1, state=SlotState.BUSY))
    assert plan(state, near + timedelta(seconds=1)) == []
    succeed(state, first.job_id, 1)
    assert state.assignments[0] == second.job_id and 0 not in state.queued_next


def test_the_follower_starting_frees_the_slot_for_the_next_look_ahead() -> None:
    """The slot starts its follower once the job before it has made its frames: that start is news
    of the first job's finishing, before its throttled progress event says so."""
    state, first, second = one_slot_running(lookahead=2.0)
    third = submit(state, at=T0 + timedelta(seconds=2))
    steps = first.request.num_inference_steps
    state.extra_seconds[step_key(first.request)] = 0.0
    progress(state, first.job_id, 1, T0 + timedelta(seconds=1), step=1, per_step=1.0)
    near = T0 + timedelta(seconds=steps - 1)
    carry_out(state, plan(state, near), offset=1)
    assert state.queued_next[0] == second.job_id
    done = T0 + timedelta(seconds=steps)
    started(state, second.job_id, 1, done)
    assert state.assignments[0] == second.job_id and state.finishing == {first.job_id: 0}
    assert 0 not in state.queued_next
    # Its own step time is the measured one of its kind: within 2 s of its end, `third` follows it.
    decisions = plan(state, done + timedelta(seconds=steps - 2))
    assert [(d.job_id, d.slot) for d in decisions if isinstance(d, Dispatch)] == [(third.job_id, 0)]


def _running(state: SchedulerState, slot: int, priority: Priority, offset: int) -> JobRequested:
    job = submit(state, priority)
    state.on_dispatch(
        JobDispatched(job_id=job.job_id, producer="s", attempt=1, slot=slot, request=job.request), offset
    )
    state.on_event(
        JobStarted(job_id=job.job_id, producer="w", attempt=1, occurred_at=T0, slot=slot, worker_id="w")
    )
    state.step_times[step_key(job.request)] = 1.0
    state.extra_seconds[step_key(job.request)] = 0.0
    return job


@pytest.mark.parametrize("reserved", [0, 1])
def test_a_batch_follower_replaces_a_batch_job_without_eating_the_reserve(reserved: int) -> None:
    """A slot counts once for the batch lane, by its newest job: a batch job following a batch job
    takes no more slots (look-ahead works when every slot runs batch), one following an interactive
    job does, and the reserve still holds."""
    state = make_state(slots=2, reserved=reserved)
    state.lookahead = timedelta(seconds=2)
    for slot in range(2):
        state.on_heartbeat(beat(slot, T0))
    batch = _running(state, 0, Priority.BATCH, offset=0)
    _running(state, 1, Priority.INTERACTIVE, offset=0)
    waiting = [submit(state, Priority.BATCH, T0 + timedelta(seconds=i + 1)) for i in range(2)]
    near = T0 + timedelta(seconds=batch.request.num_inference_steps - 1)
    decisions = [(d.job_id, d.slot) for d in plan(state, near) if isinstance(d, Dispatch)]
    expected = [(waiting[0].job_id, 0)] + ([(waiting[1].job_id, 1)] if reserved == 0 else [])
    assert decisions == expected


def test_look_ahead_waits_for_measured_times() -> None:
    state, first, _ = one_slot_running(lookahead=2.0)
    later = T0 + timedelta(seconds=9)
    state.on_heartbeat(beat(0, later, job=(first.job_id, 1), position=1, state=SlotState.BUSY))
    assert plan(state, later) == []  # nothing measured for this model and size yet: no guess


def test_a_preempted_job_waits_behind_the_jobs_already_waiting_and_resumes_from_its_checkpoint() -> None:
    state, first, second = one_slot_running()
    asked = JobPreemptRequested(job_id=first.job_id, producer="scheduler", attempt=1, at_step=4, reason="r")
    state.on_event(asked)
    assert state.jobs[first.job_id].preempt_at == 4
    handed = JobPreempted(
        job_id=first.job_id,
        producer="w",
        attempt=1,
        step=4,
        total_steps=first.request.num_inference_steps,
        checkpoint_key="ck/4",
        reason="r",
        occurred_at=T0 + timedelta(seconds=5),
    )
    state.on_event(handed)
    later = T0 + timedelta(seconds=5)
    state.on_heartbeat(beat(0, later, position=1))
    decisions = plan(state, later)
    # `second` waited since T0 + 1 s, before the preemption at T0 + 5 s: it goes first.
    assert [d.job_id for d in decisions if isinstance(d, Dispatch)] == [second.job_id]
    carry_out(state, decisions, offset=1)
    succeed(state, second.job_id, 1)
    decisions = plan(state, later)
    assert decisions == [Dispatch(first.job_id, 0, 2, first.request, "ck/4")]
    # A preemption is not a failure: the attempts left are unchanged.
    assert state.jobs[first.job_id].failed_attempts == 0


def test_balance_asks_running_batch_jobs_back_only_when_the_lane_would_end_in_a_tail() -> None:
    state = make_state(slots=2)
    state.balance_gain = timedelta(seconds=1)
    for slot in (0, 1):
        state.on_heartbeat(beat(slot, T0))
    jobs = [submit(state, Priority.BATCH, at=T0 + timedelta(milliseconds=i)) for i in range(3)]
    carry_out(state, plan(state, T0))
    steps = jobs[0].request.num_inference_steps
    for job in jobs[:2]:
        started(state, job.job_id, 1, T0)
        progress(state, job.job_id, 1, T0, step=0, per_step=1.0)
    # Two running, one waiting, all of `steps` seconds: without a preemption the third runs alone
    # after the others; balanced, all end at 1.5 x steps.
    decisions = plan(state, T0)
    assert len(decisions) == 1 and isinstance(decisions[0], Preempt)
    assert decisions[0].job_id in {jobs[0].job_id, jobs[1].job_id}
    assert decisions[0].at_step == steps // 2
    state.on_event(
        JobPreemptRequested(
            job_id=decisions[0].job_id, producer="scheduler", attempt=1, at_step=steps // 2, reason="r"
        )
    )
    assert plan(state, T0) == []  # the tail is gone: nothing more to ask


def expiring_state(**limits: timedelta) -> SchedulerState:
    state = make_state(slots=2)
    state.queue_ttl = limits.get("ttl")
    state.unserviceable_after = limits.get("unserviceable")
    return state


def test_a_job_for_a_model_no_live_slot_serves_fails_after_the_bound_naming_the_served_ones() -> None:
    state = expiring_state(unserviceable=timedelta(seconds=60))
    state.on_heartbeat(beat(0, T0, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
    state.on_heartbeat(beat(1, T0, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
    job = request(model="wan2.1-t2v-1.3b")
    state.on_event(job.model_copy(update={"occurred_at": T0}))
    for s in (1, 30, 60):
        at = T0 + timedelta(seconds=s)
        state.on_heartbeat(beat(0, at, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
        state.on_heartbeat(beat(1, at, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
        assert plan(state, at) == []
    at = T0 + timedelta(seconds=61)
    state.on_heartbeat(beat(0, at, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
    [finish] = plan(state, at)
    assert isinstance(finish, Finish) and finish.job_id == job.job_id and not finish.cancelled
    assert finish.code is ErrorCode.MODEL_UNAVAILABLE and "served now: tiny-mochi" in finish.reason


def test_an_outage_of_every_slot_fails_no_waiting_job() -> None:
    state = expiring_state(unserviceable=timedelta(seconds=60))
    submit(state)
    assert plan(state, T0 + timedelta(hours=1)) == []


def test_a_job_waits_for_its_model_while_a_slot_serving_it_was_seen_recently() -> None:
    state = expiring_state(unserviceable=timedelta(seconds=60))
    job = request(model="wan2.1-t2v-1.3b")
    state.on_event(job.model_copy(update={"occurred_at": T0}))
    state.on_heartbeat(
        beat(
            0,
            T0 + timedelta(seconds=50),
            model="wan2.1-t2v-1.3b",
            state=SlotState.BUSY,
            job=(uuid.uuid4(), 1),
        )
    )
    at = T0 + timedelta(seconds=100)
    state.on_heartbeat(beat(1, at, model="tiny-mochi", state=SlotState.BUSY, job=(uuid.uuid4(), 1)))
    assert plan(state, at) == []  # mochi-1 was served 50 s ago: not yet past the bound


def test_a_job_past_the_queue_ttl_fails_and_is_never_dispatched() -> None:
    state = expiring_state(ttl=timedelta(minutes=10))
    job = submit(state)
    at = T0 + timedelta(minutes=10, seconds=1)
    state.on_heartbeat(beat(0, at))
    state.on_input(at)
    [finish] = plan(state, at)
    assert isinstance(finish, Finish) and finish.job_id == job.job_id
    assert finish.code is ErrorCode.QUEUE_TIMEOUT and "600 s" in finish.reason


def test_a_round_without_a_sweep_dispatches_but_neither_expires_nor_balances() -> None:
    """The loop sweeps (expiries, balancing: both read every waiting job) once a tick, not once a fetch."""
    state = expiring_state(ttl=timedelta(minutes=10))
    old = submit(state)
    at = T0 + timedelta(minutes=10, seconds=1)
    state.on_heartbeat(beat(0, at))
    state.on_input(at)
    [dispatch] = plan(state, at, sweep=False)
    assert isinstance(dispatch, Dispatch) and dispatch.job_id == old.job_id, "a round still dispatches"

    state = make_state(slots=2)
    state.balance_gain = timedelta(seconds=1)
    for slot in (0, 1):
        state.on_heartbeat(beat(slot, T0))
    jobs = [submit(state, Priority.BATCH, at=T0 + timedelta(milliseconds=i)) for i in range(3)]
    carry_out(state, plan(state, T0))
    for job in jobs[:2]:
        started(state, job.job_id, 1, T0)
        progress(state, job.job_id, 1, T0, step=0, per_step=1.0)
    assert plan(state, T0, sweep=False) == [], "no balancing in a round without a sweep"
    [preempt] = plan(state, T0)
    assert isinstance(preempt, Preempt)

    state = expiring_state(ttl=timedelta(minutes=10))
    waiting = submit(state)
    state.on_input(at)
    assert plan(state, at, sweep=False) == [], "no expiry in a round without a sweep"
    [finish] = plan(state, at)
    assert isinstance(finish, Finish) and finish.job_id == waiting.job_id
