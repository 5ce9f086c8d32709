"""The worker's job state machine, with a simulated generator, an in-memory store and a recorded publisher."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.events import (
    ErrorCode,
    EventType,
    JobCancelled,
    JobDispatched,
    JobEvent,
    JobProgress,
    JobSucceeded,
)
from schemas.jobs import JobRequest, Phase, resolve
from services.common.errors import BrokerUnavailable, StorageUnavailable
from services.common.storage import (
    ObjectMissing,
    checkpoint_prefix,
    poster_key,
    spritesheet_key,
    thumbnail_key,
    video_key,
)
from services.worker.attempt import Attempt, attempt_event
from services.worker.engine import SimulatedGenerator
from services.worker.runner import Backoff, JobRunner, ProgressPump


class MemoryStore:
    """An S3 stand-in: a dict of keys to bytes; `down` makes every call fail like an unreachable store."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = False
        self.deleted_prefixes: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise StorageUnavailable("store is down")

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        self._check()
        self.objects[key] = Path(path).read_bytes()

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._check()
        self.objects[key] = data

    async def get_bytes(self, key: str) -> bytes:
        self._check()
        if key not in self.objects:
            raise ObjectMissing(key)
        return self.objects[key]

    async def delete_prefix(self, prefix: str) -> int:
        self._check()
        self.deleted_prefixes.append(prefix)
        doomed = [k for k in self.objects if k.startswith(prefix)]
        for key in doomed:
            del self.objects[key]
        return len(doomed)


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> object:
        self.events.append(event)
        return None

    def types(self) -> list[EventType]:
        return [e.type for e in self.events]


FAST_BACKOFF = Backoff(first=0.01, cap=0.05)


def dispatch(attempt: int = 1, resume: str | None = None) -> JobDispatched:
    request = resolve(JobRequest(prompt="a cat", model="tiny-mochi", quality="high", seed=3))
    return JobDispatched(
        job_id=uuid.uuid4(),
        producer="scheduler",
        attempt=attempt,
        slot=0,
        request=request,
        resume_checkpoint=resume,
    )


def result_keys(job: JobDispatched) -> list[str]:
    """What a succeeded attempt stores, in upload order."""
    return [f(job.job_id, job.attempt) for f in (video_key, poster_key, thumbnail_key, spritesheet_key)]


def runner(
    tmp_path: Path,
    generator: SimulatedGenerator,
    store: MemoryStore,
    publish: Recorder,
    checkpoint_every: int = 2,
    checkpoint_min_seconds: float = 0.0,
    upload_retry_seconds: float = 0.3,
    backoff: Backoff = FAST_BACKOFF,
) -> JobRunner:
    return JobRunner(
        slot=0,
        generator=generator,
        store=store,
        publish=publish,
        scratch_dir=tmp_path,
        checkpoint_every=checkpoint_every,
        checkpoint_min_seconds=checkpoint_min_seconds,
        progress_interval=0,
        upload_retry_seconds=upload_retry_seconds,
        backoff=backoff,
    )


async def test_success_reports_in_order_stores_one_video_and_drops_checkpoints(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    outcome = await runner(
        tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0), store, publish
    ).run(job)
    assert outcome == "succeeded"
    types = publish.types()
    assert types[0] is EventType.STARTED and types[-1] is EventType.SUCCEEDED
    assert EventType.CHECKPOINTED in types and EventType.PROGRESS in types
    steps = [e.step for e in publish.events if e.type is EventType.PROGRESS and e.step is not None]
    # Progress is droppable (only the newest is sent), so steps rise but need not all appear.
    assert steps == sorted(steps) and 0 < steps[-1] <= job.request.num_inference_steps
    phases = [e.phase for e in publish.events if e.type is EventType.PROGRESS]
    assert phases[-1] == "uploading"
    sequences = [e.sequence for e in publish.events]
    assert sequences == sorted(sequences)
    assert list(store.objects) == result_keys(job)
    result = next(e for e in publish.events if isinstance(e, JobSucceeded)).result
    assert [result.video_key, result.poster_key, result.thumbnail_key, result.spritesheet_key] == result_keys(
        job
    )
    assert result.spritesheet is not None and result.spritesheet.frame_indices[-1] == result.frames - 1
    assert store.objects[video_key(job.job_id, 1)][4:8] == b"ftyp"
    assert not any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_cancel_stops_within_a_step_and_leaves_no_artifact(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    started = threading.Event()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.05)
    job = dispatch()
    run = runner(tmp_path, generator, store, publish)
    task = asyncio.create_task(run.run(job))
    while not any(e.type is EventType.PROGRESS and e.step for e in publish.events):
        await asyncio.sleep(0.01)
    started.set()
    assert run.cancel(job.job_id)
    assert await task == "cancelled"
    assert publish.types()[-1] is EventType.CANCELLED
    assert store.objects == {}
    steps = [e.step for e in publish.events if e.type is EventType.PROGRESS and e.step]
    assert max(steps) < job.request.num_inference_steps


async def test_model_error_fails_the_job_with_its_code(tmp_path: Path) -> None:
    publish = Recorder()
    generator = SimulatedGenerator(
        "tiny-mochi", seconds_per_step=0, fail_at_step=1, fail_code=ErrorCode.OUT_OF_MEMORY
    )
    outcome = await runner(tmp_path, generator, MemoryStore(), publish).run(dispatch())
    assert outcome == "failed"
    failed = publish.events[-1]
    assert failed.type is EventType.FAILED and failed.error.code is ErrorCode.OUT_OF_MEMORY


async def test_store_down_is_retried_then_fails_as_storage_unavailable(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    store.down = True
    outcome = await runner(
        tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0), store, publish, checkpoint_every=0
    ).run(dispatch())
    assert outcome == "failed"
    failed = publish.events[-1]
    assert failed.error.code is ErrorCode.STORAGE_UNAVAILABLE and failed.error.retryable


async def test_drain_stops_the_job_at_a_checkpoint_without_a_terminal_event(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    task = asyncio.create_task(run.run(job))
    while not publish.events:
        await asyncio.sleep(0.01)
    run.drain()
    assert await task == "abandoned"
    assert publish.types()[-1] is EventType.CHECKPOINTED
    assert any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_resume_continues_from_the_checkpoint_step(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    first = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    task = asyncio.create_task(run.run(first))
    while not publish.events:
        await asyncio.sleep(0.01)
    run.drain()
    await task
    checkpoint = [e for e in publish.events if e.type is EventType.CHECKPOINTED][-1]
    second = first.model_copy(update={"attempt": 2, "resume_checkpoint": checkpoint.checkpoint_key})
    publish.events.clear()
    assert await run.run(second) == "succeeded"
    steps = [e.step for e in publish.events if e.type is EventType.PROGRESS and e.step]
    assert min(steps) > checkpoint.step
    assert video_key(first.job_id, 2) in store.objects


class SlowCheckpointStore(MemoryStore):
    """Checkpoint puts take `delay` seconds; it records when each one was asked for and finished."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.puts: list[tuple[str, float, float]] = []

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        asked = asyncio.get_running_loop().time()
        if key.startswith("checkpoints/"):
            await asyncio.sleep(self.delay)
        await super().put_bytes(key, data, content_type)
        self.puts.append((key, asked, asyncio.get_running_loop().time()))


async def test_denoising_goes_on_while_a_checkpoint_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints every 2 steps take 0.3 s to store: steps are taken while each one is in flight;
    they still land in order, each before the next is asked for, and all are gone at the end."""
    store, publish = SlowCheckpointStore(delay=0.3), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    loop = asyncio.get_running_loop()
    stepped: list[float] = []
    progress = Attempt.progress

    def timed(self: Attempt, *args: Any, **kwargs: Any) -> JobProgress:
        stepped.append(loop.time())  # called by the generation thread's step callback
        return progress(self, *args, **kwargs)

    monkeypatch.setattr(Attempt, "progress", timed)
    assert await run.run(job) == "succeeded"
    checkpoints = [p for p in store.puts if p[0].startswith("checkpoints/")]
    assert len(checkpoints) == (job.request.num_inference_steps - 1) // 2
    for _, asked, done in checkpoints[:-1]:
        assert any(asked < t < done for t in stepped), "denoising waited for the checkpoint"
    assert [k for k, _, _ in checkpoints] == sorted(k for k, _, _ in checkpoints)
    for (_, _, done), (_, asked, _) in itertools.pairwise(checkpoints):
        assert done <= asked
    saved = [e.step for e in publish.events if e.type is EventType.CHECKPOINTED]
    assert saved == sorted(saved) and len(saved) == len(checkpoints)
    assert publish.types()[-1] is EventType.SUCCEEDED
    assert not any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_drain_waits_for_the_checkpoint_in_flight(tmp_path: Path) -> None:
    store, publish = SlowCheckpointStore(delay=0.2), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.02), store, publish)
    task = asyncio.create_task(run.run(job))
    while not publish.events:
        await asyncio.sleep(0.01)
    run.drain()
    assert await task == "abandoned"
    last = [e for e in publish.events if e.type is EventType.CHECKPOINTED][-1]
    assert publish.types()[-1] is EventType.CHECKPOINTED
    assert last.checkpoint_key in store.objects


def test_one_job_at_a_time(tmp_path: Path) -> None:
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0), MemoryStore(), Recorder())
    run.state = run.state.RUNNING
    with pytest.raises(RuntimeError, match="one job at a time"):
        asyncio.run(run.run(dispatch()))


class SlowUploadStore(MemoryStore):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        await asyncio.sleep(self.delay)
        await super().put_file(key, path, content_type)


async def test_the_next_job_denoises_while_the_previous_stores_its_video(tmp_path: Path) -> None:
    store, publish = SlowUploadStore(delay=0.5), Recorder()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.01), store, publish)
    first, second = dispatch(), dispatch()
    generated = asyncio.Event()
    first_run = asyncio.create_task(run.run(first, on_generated=generated.set))
    await asyncio.wait_for(generated.wait(), 10)
    assert run.current is None and set(run.finishing) == {first.job_id}
    second_run = asyncio.create_task(run.run(second))
    await asyncio.sleep(0.05)
    assert run.current is not None and run.current.dispatch.job_id == second.job_id
    assert not first_run.done()  # still uploading while the second denoises
    assert await first_run == "succeeded" and await second_run == "succeeded"
    assert run.finishing == {} and run.current is None
    for job in (first, second):
        ends = [e for e in publish.events if e.job_id == job.job_id and e.type is EventType.SUCCEEDED]
        assert len(ends) == 1 and video_key(job.job_id, 1) in store.objects


async def test_a_preempted_job_stops_after_a_durable_checkpoint_and_resumes(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    task = asyncio.create_task(run.run(job))
    while run.current is None:
        await asyncio.sleep(0.005)
    assert not run.preempt(job.job_id, job.attempt + 1, 3, "wrong attempt")
    assert run.preempt(job.job_id, job.attempt, 3, "balance the batch lane")
    assert await task == "preempted"
    preempted = publish.events[-1]
    assert preempted.type is EventType.PREEMPTED
    # At the step asked, though the regular checkpoints come every 2 steps: a checkpoint is taken there.
    assert preempted.step == 3 and preempted.reason == "balance the batch lane"
    assert preempted.checkpoint_key in store.objects
    assert not any(k.startswith(f"jobs/{job.job_id}/") for k in store.objects)  # no video
    resumed = job.model_copy(update={"attempt": 2, "resume_checkpoint": preempted.checkpoint_key})
    publish.events.clear()
    assert await run.run(resumed) == "succeeded"
    steps = [e.step for e in publish.events if e.type is EventType.PROGRESS and e.step]
    assert min(steps) > 3
    assert not any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_every_event_of_an_attempt_carries_the_tenant_of_its_dispatch(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch().model_copy(update={"tenant": "acme"})
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0), store, publish)
    assert await run.run(job) == "succeeded"
    preempted = dispatch().model_copy(update={"tenant": "acme"})
    slow = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    task = asyncio.create_task(slow.run(preempted))
    while slow.current is None:
        await asyncio.sleep(0.005)
    assert slow.preempt(preempted.job_id, preempted.attempt, 3, "balance the batch lane")
    assert await task == "preempted"
    types = set(publish.types())
    assert {EventType.STARTED, EventType.PROGRESS, EventType.CHECKPOINTED, EventType.SUCCEEDED} <= types
    assert EventType.PREEMPTED in types
    assert {e.tenant for e in publish.events} == {"acme"}


def test_an_event_for_a_dispatch_the_slot_never_starts_carries_its_tenant() -> None:
    job = dispatch().model_copy(update={"tenant": "acme"})
    cancelled = attempt_event(job, JobCancelled, "worker-0")
    assert (cancelled.job_id, cancelled.attempt, cancelled.tenant) == (job.job_id, job.attempt, "acme")


async def succeed_with_minimum(
    tmp_path: Path, seconds_per_step: float, minimum: float
) -> tuple[JobDispatched, MemoryStore, Recorder]:
    """A whole job with checkpoints due every 2 steps but at least `minimum` seconds apart."""
    store, publish, job = MemoryStore(), Recorder(), dispatch()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=seconds_per_step)
    outcome = await runner(tmp_path, generator, store, publish, checkpoint_min_seconds=minimum).run(job)
    assert outcome == "succeeded"
    return job, store, publish


async def test_a_job_shorter_than_the_checkpoint_minimum_stores_none_and_deletes_none(tmp_path: Path) -> None:
    job, store, publish = await succeed_with_minimum(tmp_path, seconds_per_step=0.01, minimum=60)
    assert EventType.CHECKPOINTED not in publish.types()
    assert list(store.objects) == result_keys(job)
    assert store.deleted_prefixes == []  # a first attempt that stored no checkpoint has none to delete


async def test_checkpoints_come_no_closer_than_the_minimum(tmp_path: Path) -> None:
    # Every 2 steps = 0.1 s; at least 0.15 s apart: every other one is skipped.
    job, store, publish = await succeed_with_minimum(tmp_path, seconds_per_step=0.05, minimum=0.15)
    steps = [e.step for e in publish.events if e.type is EventType.CHECKPOINTED]
    assert steps and steps[0] >= 4 and all(b - a >= 4 for a, b in itertools.pairwise(steps))
    assert store.deleted_prefixes == [checkpoint_prefix(job.job_id)]
    assert not any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_a_preemption_or_a_shutdown_takes_its_checkpoint_within_the_minimum(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    preempted, drained = dispatch(), dispatch()
    run = runner(
        tmp_path,
        SimulatedGenerator("tiny-mochi", seconds_per_step=0.05),
        store,
        publish,
        checkpoint_min_seconds=60,
    )
    task = asyncio.create_task(run.run(preempted))
    while run.current is None:
        await asyncio.sleep(0.005)
    assert run.preempt(preempted.job_id, preempted.attempt, 3, "balance the batch lane")
    assert await task == "preempted"
    preempted = publish.events[-1]
    assert preempted.type is EventType.PREEMPTED and preempted.step == 3
    assert preempted.checkpoint_key in store.objects

    task = asyncio.create_task(run.run(drained))
    while run.current is None:
        await asyncio.sleep(0.005)
    run.drain()
    assert await task == "abandoned"
    last = publish.events[-1]
    assert last.type is EventType.CHECKPOINTED and last.job_id == drained.job_id
    assert last.checkpoint_key in store.objects


async def test_a_superseded_attempt_stops_quietly_and_keeps_its_checkpoints(tmp_path: Path) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.05), store, publish)
    task = asyncio.create_task(run.run(job))
    while not any(e.type is EventType.CHECKPOINTED for e in publish.events):
        await asyncio.sleep(0.01)
    assert not run.supersede(job.job_id, lost_attempt=0)  # an older attempt: not this one
    assert run.supersede(job.job_id, lost_attempt=1)
    assert await task == "superseded"
    assert not {EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED} & set(publish.types())
    assert not any(k.startswith(f"jobs/{job.job_id}/") for k in store.objects)
    # The newer attempt may resume from these.
    assert any(k.startswith(checkpoint_prefix(job.job_id)) for k in store.objects)


async def test_an_attempt_superseded_while_storing_its_video_takes_it_back(tmp_path: Path) -> None:
    store, publish = SlowUploadStore(delay=0.3), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.01), store, publish)
    generated = asyncio.Event()
    task = asyncio.create_task(run.run(job, on_generated=generated.set))
    await asyncio.wait_for(generated.wait(), 10)
    await asyncio.sleep(0.1)  # the video upload is under way
    assert run.supersede(job.job_id, lost_attempt=1)
    assert await task == "superseded"
    assert publish.types()[-1] is not EventType.SUCCEEDED
    assert not any(k.startswith(f"jobs/{job.job_id}/") for k in store.objects)


async def test_denoising_starts_before_the_dispatch_commit_and_nothing_is_published_before_it(
    tmp_path: Path,
) -> None:
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0.01), store, publish)
    commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run.run(job, admission=commit))
    while run.current is None or run.current.seconds_per_step is None:  # steps are being taken
        await asyncio.sleep(0.005)
    assert publish.events == []
    await asyncio.sleep(0.05)  # the commit takes a while
    committed = datetime.now(UTC)
    commit.set_result(None)
    assert await task == "succeeded"
    assert publish.types()[0] is EventType.STARTED and publish.types()[-1] is EventType.SUCCEEDED
    assert [e.sequence for e in publish.events] == sorted(e.sequence for e in publish.events)
    # job.started says when the attempt began, not when it could be announced: before the commit, and
    # before every other event of the attempt.
    started = publish.events[0].occurred_at
    assert started < committed - timedelta(seconds=0.04)
    assert all(started <= e.occurred_at for e in publish.events)


@pytest.mark.parametrize("generated_first", [False, True])
async def test_a_failed_dispatch_commit_stops_the_attempt_without_a_trace(
    tmp_path: Path, generated_first: bool
) -> None:
    """Whether the commit fails mid-denoising or after the frames are made, the attempt publishes
    nothing and stores no video: the slot's next process reads the record again and runs it.
    (A checkpoint's event waits for the commit too, so with checkpoints the frames cannot be made
    before it: the second checkpoint waits for the first.)"""
    store, publish = MemoryStore(), Recorder()
    job = dispatch()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.01)
    run = runner(tmp_path, generator, store, publish, checkpoint_every=0 if generated_first else 2)
    commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    generated = asyncio.Event()
    task = asyncio.create_task(run.run(job, on_generated=generated.set, admission=commit))
    if generated_first:
        await asyncio.wait_for(generated.wait(), 10)
    else:
        while run.current is None or run.current.seconds_per_step is None:
            await asyncio.sleep(0.005)
    commit.set_exception(RuntimeError("the group coordinator moved"))
    assert await task == "superseded"
    assert publish.events == []
    assert not any(k.startswith(f"jobs/{job.job_id}/") for k in store.objects)


async def test_the_progress_pump_sends_the_newest_update_from_a_thread_without_losing_the_last() -> None:
    sent: list[JobProgress] = []

    async def publish(event: JobProgress) -> object:
        sent.append(event)
        return None

    def update(step: int) -> JobProgress:
        return JobProgress(
            job_id=uuid.UUID(int=1),
            producer="worker-0",
            attempt=1,
            phase=Phase.DENOISING,
            progress=0.5,
            step=step,
        )

    pump = ProgressPump(publish, interval=0.05)
    # Idle, a single update from the thread wakes the pump at once.
    await asyncio.to_thread(pump.offer_threadsafe, update(0))
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    assert [e.step for e in sent] == [0]

    def steps() -> None:  # a fast generation thread: far more updates than intervals
        for step in range(1, 2001):
            pump.offer_threadsafe(update(step))

    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(steps)
    await asyncio.sleep(0.12)
    await pump.close()
    elapsed = asyncio.get_running_loop().time() - started
    numbers = [e.step for e in sent]
    assert numbers == sorted(numbers) and numbers[-1] == 2000  # the newest is never lost
    assert len(numbers) <= 2 + elapsed / 0.05 + 1  # at most one per interval


async def test_the_progress_pump_reports_every_phase_even_one_shorter_than_its_interval() -> None:
    sent: list[JobProgress] = []

    async def publish(event: JobProgress) -> object:
        sent.append(event)
        return None

    def update(phase: Phase, step: int | None = None) -> JobProgress:
        return JobProgress(
            job_id=uuid.UUID(int=1), producer="worker-0", attempt=1, phase=phase, progress=0.5, step=step
        )

    pump = ProgressPump(publish, interval=10.0)  # one turn in the whole test, then only `close`
    pump.offer(update(Phase.ENCODING_PROMPT))
    await asyncio.sleep(0.01)  # the idle pump sends the first update at once, then sleeps

    def generation() -> None:
        for step in range(1, 51):
            pump.offer_threadsafe(update(Phase.DENOISING, step))
        pump.offer_threadsafe(update(Phase.DECODING))

    await asyncio.to_thread(generation)
    pump.offer(update(Phase.ENCODING_VIDEO))  # milliseconds long, replaced before the next turn
    pump.offer(update(Phase.UPLOADING))
    await pump.close()
    phases = [e.phase for e in sent]
    assert list(dict.fromkeys(phases)) == [
        Phase.ENCODING_PROMPT, Phase.DENOISING, Phase.DECODING, Phase.ENCODING_VIDEO, Phase.UPLOADING
    ]  # fmt: skip
    steps = [e.step for e in sent if e.phase is Phase.DENOISING]
    assert steps == sorted(steps) and steps[-1] == 50, "a phase's last update is never lost"


async def test_the_progress_pump_sends_a_new_phase_at_once_not_after_its_interval() -> None:
    sent: list[JobProgress] = []
    arrived = asyncio.Event()

    async def publish(event: JobProgress) -> object:
        sent.append(event)
        arrived.set()
        return None

    def update(phase: Phase, step: int | None = None) -> JobProgress:
        return JobProgress(
            job_id=uuid.UUID(int=1), producer="worker-0", attempt=1, phase=phase, progress=0.5, step=step
        )

    pump = ProgressPump(publish, interval=30.0)
    try:
        await asyncio.to_thread(pump.offer_threadsafe, update(Phase.DENOISING, 1))
        await asyncio.wait_for(arrived.wait(), 5)  # idle: the first update goes at once
        arrived.clear()
        await asyncio.to_thread(pump.offer_threadsafe, update(Phase.DENOISING, 2))
        await asyncio.sleep(0.2)
        assert [e.step for e in sent] == [1], "a step waits for the pump's next turn (30 s away)"
        await asyncio.to_thread(pump.offer_threadsafe, update(Phase.DECODING))  # from the thread
        await asyncio.wait_for(_until(lambda: len(sent) == 3), 5)
        assert [(e.phase, e.step) for e in sent[1:]] == [(Phase.DENOISING, 2), (Phase.DECODING, None)]
        pump.offer(update(Phase.UPLOADING))  # and from the event loop
        await asyncio.wait_for(_until(lambda: len(sent) == 4), 5)
        assert sent[-1].phase is Phase.UPLOADING
    finally:
        await pump.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


TERMINAL = {EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED, EventType.PREEMPTED}


class FlakyPublisher(Recorder):
    """Kafka refusing the attempt's terminal events: the first `failures` sends of one fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.refused = 0

    async def __call__(self, event: JobEvent) -> object:
        if event.type in TERMINAL and self.refused < self.failures:
            self.refused += 1
            raise BrokerUnavailable("Kafka did not acknowledge")
        return await super().__call__(event)


@pytest.mark.timeout(30)
async def test_a_refused_terminal_event_is_retried_while_the_job_stays_held(tmp_path: Path) -> None:
    """More refusals than any fixed budget: the job stays in `finishing` (heartbeats report it held)
    until Kafka takes its one job.succeeded."""
    publish = FlakyPublisher(failures=60)
    run = runner(
        tmp_path,
        SimulatedGenerator("tiny-mochi", seconds_per_step=0),
        MemoryStore(),
        publish,
        backoff=Backoff(first=0.001, cap=0.002),
    )
    job, held = dispatch(), []
    task = asyncio.create_task(run.run(job))
    while not task.done():
        if 0 < publish.refused < 60:
            held.append(job.job_id in run.finishing)
        await asyncio.sleep(0.001)
    assert await task == "succeeded"
    assert held and all(held)
    assert publish.refused == 60 and publish.types().count(EventType.SUCCEEDED) == 1
    assert run.finishing == {} and run.undelivered == []


async def test_a_terminal_event_still_refused_at_shutdown_leaves_the_job_to_the_scheduler(
    tmp_path: Path,
) -> None:
    publish = FlakyPublisher(failures=10**9)
    run = runner(tmp_path, SimulatedGenerator("tiny-mochi", seconds_per_step=0), MemoryStore(), publish)
    job = dispatch()
    task = asyncio.create_task(run.run(job))
    while publish.refused < 3:
        await asyncio.sleep(0.005)
    assert job.job_id in run.finishing
    run.drain()
    assert await asyncio.wait_for(task, 5) == "undelivered"
    assert run.undelivered == [job] and run.finishing == {}
    assert not TERMINAL & set(publish.types())


class FlakyStore(MemoryStore):
    """S3 refusing the first `failures` artifact uploads (a storage blip longer than a few retries)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def _artifact(self, key: str) -> None:
        if key.startswith("jobs/") and self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("store is down")

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        self._artifact(key)
        await super().put_file(key, path, content_type)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._artifact(key)
        await super().put_bytes(key, data, content_type)


async def test_an_upload_outage_is_waited_out_with_the_slot_free(tmp_path: Path) -> None:
    store, publish = FlakyStore(failures=12), Recorder()
    run = runner(
        tmp_path,
        SimulatedGenerator("tiny-mochi", seconds_per_step=0),
        store,
        publish,
        upload_retry_seconds=30,
    )
    job, generated = dispatch(), asyncio.Event()
    task = asyncio.create_task(run.run(job, on_generated=generated.set))
    await asyncio.wait_for(generated.wait(), 10)
    while store.failures > 6:
        await asyncio.sleep(0.005)
    assert run.current is None and job.job_id in run.finishing  # free for the next job meanwhile
    assert await task == "succeeded"
    assert publish.types().count(EventType.SUCCEEDED) == 1 and EventType.FAILED not in publish.types()
    videos = [k for k in store.objects if k.endswith(".mp4")]
    assert videos == [video_key(job.job_id, 1)]
    uploading = [e for e in publish.events if e.type is EventType.PROGRESS and e.phase is Phase.UPLOADING]
    assert len(uploading) > 1  # reported again while it waits
    assert list(tmp_path.iterdir()) == []  # the scratch copy is gone once stored
