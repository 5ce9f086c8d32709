"""The job state machine of one slot: run a dispatched job, report it, store its artifacts.

Generation runs on a worker thread; callbacks from that thread reach the event loop only through
`call_soon_threadsafe`/`run_coroutine_threadsafe` (or the progress pump's atomic hand-over). Progress is
throttled and droppable; terminal events are retried until Kafka has them (or the worker stops), uploads for
`upload_retry_seconds`. Infrastructure trouble (S3, Kafka) is kept apart from model errors.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from schemas.events import (
    ErrorCode,
    JobCancelled,
    JobCheckpointed,
    JobDispatched,
    JobError,
    JobEvent,
    JobFailed,
    JobPreempted,
    JobProgress,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import Phase
from services.common.errors import ReelstreamError, RetryableError
from services.common.runtime import retry
from services.common.storage import checkpoint_key, checkpoint_prefix, poster_key, video_key
from services.worker.engine.generator import (
    Cancelled,
    GeneratedVideo,
    GenerationError,
    Generator,
    ResumeState,
    StepInfo,
)
from services.worker.engine.video import encode_mp4, poster_jpeg

log = logging.getLogger("reelstream.worker")

PHASE_WEIGHT = {  # share of the progress bar each phase ends at
    Phase.LOADING: 0.0,
    Phase.ENCODING_PROMPT: 0.02,
    Phase.DENOISING: 0.05,
    Phase.DECODING: 0.90,
    Phase.ENCODING_VIDEO: 0.95,
    Phase.UPLOADING: 0.98,
}


class Abandoned(Exception):
    """The worker is shutting down: stop without a terminal event so the scheduler runs it elsewhere."""


class Preempted(Exception):
    """The scheduler asked for the job back: stop after a durable checkpoint; it resumes elsewhere."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"handed back after the checkpoint at step {step}: {reason}")
        self.step, self.reason = step, reason


class Superseded(Exception):
    """The scheduler gave the job to a newer attempt (this slot was taken for dead): stop quietly."""


class Undelivered(Exception):
    """The worker stopped before Kafka took the attempt's last event: the scheduler must recover the job."""


@dataclass(frozen=True)
class Backoff:
    """Delays between tries of what must not be given up on a blip: doubling from `first` up to `cap`."""

    first: float = 0.5
    cap: float = 15.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.cap)


class RunState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"


class ArtifactStore(Protocol):
    async def put_file(self, key: str, path: str, content_type: str) -> None: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def delete_prefix(self, prefix: str) -> int: ...


Publish = Callable[[JobEvent], Awaitable[object]]


@dataclass
class CurrentJob:
    """The job the slot holds; `cancel` and `drain` are read from the generation thread."""

    dispatch: JobDispatched
    cancel: threading.Event = field(default_factory=threading.Event)
    drain: threading.Event = field(default_factory=threading.Event)
    superseded: threading.Event = field(default_factory=threading.Event)
    # The commit of the job's dispatch record, which goes on while the job starts. Nothing of the
    # attempt is published before it lands; if it fails the attempt stops and publishes nothing at
    # all (`admitted` turns False), and the slot's next process reads the record again.
    admission: asyncio.Future[None] | None = None
    admitted: bool = True
    # itertools.count is safe to share between the loop and the generation thread.
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Events of the attempt are numbered and handed to the producer one at a time, so the log holds
    # them in `sequence` order although progress, checkpoints and the end are sent by different tasks.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    seconds_per_step: float | None = None
    last_checkpoint_step: int = -1
    pump: ProgressPump | None = None
    # The checkpoint being stored while denoising goes on; at most one is in flight.
    saving: concurrent.futures.Future[int] | None = None
    # Set by a preempt request (event loop), read by the generation thread: hand back at this step.
    yield_at: int | None = None
    yield_reason: str = ""
    # When the attempt started generating or took its last checkpoint (time.monotonic()).
    unsaved_since: float = 0.0
    stored_checkpoints: bool = False  # this attempt began storing at least one


class ProgressPump:
    """Publishes the newest progress at most every `interval` seconds; older unsent updates are dropped.

    The generation thread offers an update at every step. It wakes the event loop only when the pump
    is waiting for one: waking it at every step, for updates the pump mostly drops, cost the slot's
    host a thread switch per step while the loop was storing the previous job's video.
    """

    def __init__(self, publish: Callable[[JobProgress], Awaitable[object]], interval: float) -> None:
        self._publish = publish
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        # The newest unsent update. A deque's append and popleft are atomic, so the generation thread
        # replaces it while the loop takes it without a lock and without losing the newer one.
        self._latest: collections.deque[JobProgress] = collections.deque(maxlen=1)
        self._wake = asyncio.Event()
        self._waiting = False
        self._task = asyncio.create_task(self._pump(), name="progress-pump")

    def offer(self, event: JobProgress) -> None:
        """Called on the event loop."""
        self._latest.append(event)
        self._wake.set()

    def offer_threadsafe(self, event: JobProgress) -> None:
        """Called from another thread."""
        self._latest.append(event)
        if self._waiting:  # read after the append: a pump that starts waiting now sees the update
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _send_latest(self) -> None:
        try:
            event = self._latest.popleft()
        except IndexError:
            return
        try:
            await self._publish(event)
        except RetryableError as e:
            log.warning("dropped a progress update: %s", e)

    async def _pump(self) -> None:
        while True:
            if not self._latest:
                self._wake.clear()
                self._waiting = True
                try:
                    if not self._latest:  # checked again after announcing the wait
                        await self._wake.wait()
                finally:
                    self._waiting = False
            await self._send_latest()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Stop the pump and send what is still pending, so progress never follows the terminal event."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._send_latest()


class JobRunner:
    """Runs one dispatched job at a time on a loaded generator and reports every step of it."""

    def __init__(
        self,
        *,
        slot: int,
        generator: Generator,
        store: ArtifactStore,
        publish: Publish,
        scratch_dir: Path,
        checkpoint_every: int = 0,
        checkpoint_min_seconds: float = 0.0,
        progress_interval: float = 0.25,
        upload_retry_seconds: float = 600.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.slot = slot
        self.producer = f"worker-{slot}"
        self.generator = generator
        self.store = store
        self.publish = publish
        self.scratch_dir = scratch_dir
        self.checkpoint_every = checkpoint_every if generator.supports_resume else 0
        self.checkpoint_min_seconds = checkpoint_min_seconds
        self.progress_interval = progress_interval
        self.upload_retry_seconds = upload_retry_seconds
        self.backoff = backoff
        self.state = RunState.IDLE
        # Set at shutdown: a terminal event still failing then is given up (see `_terminal`).
        self.stopping = asyncio.Event()
        self.undelivered: list[JobDispatched] = []
        # The job on the GPU, and the jobs whose video is being encoded and stored meanwhile.
        self.current: CurrentJob | None = None
        self.finishing: dict[uuid.UUID, CurrentJob] = {}

    # ---- control from the event loop ------------------------------------------------------------
    def cancel(self, job_id: uuid.UUID) -> bool:
        if self.current is not None and self.current.dispatch.job_id == job_id:
            self.current.cancel.set()
            return True
        return False

    def supersede(self, job_id: uuid.UUID, lost_attempt: int) -> bool:
        """The scheduler retried the job after `lost_attempt`: an attempt up to it that this slot still
        runs or stores is stale. It stops within a step, stores no video and sends no terminal event."""
        found = False
        for job in [self.current, *self.finishing.values()]:
            if job is not None and job.dispatch.job_id == job_id and job.dispatch.attempt <= lost_attempt:
                job.superseded.set()
                found = True
        return found

    def preempt(self, job_id: uuid.UUID, attempt: int, at_step: int, reason: str) -> bool:
        """Hand the running attempt back after step `at_step` (the next step if it is past it), with a
        checkpoint taken there."""
        job = self.current
        if job is None or job.dispatch.job_id != job_id or job.dispatch.attempt != attempt:
            return False
        if self.checkpoint_every == 0:
            return False  # no checkpoints: it could only start over, which gains nothing
        job.yield_reason = reason
        job.yield_at = at_step if job.yield_at is None else min(job.yield_at, at_step)
        return True

    def drain(self) -> None:
        """Shutting down: stop the running job after its current step (with a checkpoint, when the
        worker takes them) without ending it."""
        self.stopping.set()
        if self.current is not None:
            self.current.drain.set()

    @property
    def seconds_per_step(self) -> float | None:
        return self.current.seconds_per_step if self.current else None

    # ---- one job ---------------------------------------------------------------------------------
    async def run(
        self,
        dispatch: JobDispatched,
        on_generated: Callable[[], object] | None = None,
        admission: asyncio.Future[None] | None = None,
    ) -> str:
        """Run a job to its terminal event; returns the outcome ("succeeded", "abandoned", ...).

        Once denoising and decoding are done the GPU side is free: `on_generated` is called and the
        next job may `run` while this one encodes and stores its video. `admission` is the commit of
        the dispatch record, still under way: see `CurrentJob.admission`.
        """
        if self.state is not RunState.IDLE:
            raise RuntimeError(f"slot {self.slot} is {self.state}; one job at a time")
        job = CurrentJob(dispatch, admission=admission)
        self.current, self.state = job, RunState.RUNNING
        outcome = "abandoned"
        # job.started is sent while the generation starts (it holds the send lock, so it still comes
        # first in the log): on short jobs the acknowledged round trip is a share of the GPU time.
        await job.sending.acquire()
        started = asyncio.create_task(self._send_started(job))
        try:
            outcome = await self._attempt(job, on_generated)
        finally:
            await asyncio.gather(started, return_exceptions=True)
            if outcome not in ("abandoned", "preempted", "superseded", "undelivered"):
                await self._delete_checkpoints(job)
            self.finishing.pop(dispatch.job_id, None)
            self._release(job)
        return outcome

    def _release(self, job: CurrentJob) -> None:
        if self.current is job:
            self.current, self.state = None, RunState.IDLE

    async def _attempt(self, job: CurrentJob, on_generated: Callable[[], object] | None) -> str:
        """The attempt's outcome; a terminal event given up at shutdown, or one whose job was given to a
        newer attempt while it was retried, ends it here (it may come from any branch of `_outcome`)."""
        d = job.dispatch
        try:
            return await self._outcome(job, on_generated)
        except Superseded:
            log.warning("job=%s attempt=%d superseded while its last event was retried", d.job_id, d.attempt)
            return "superseded"
        except Undelivered as e:
            log.error("job=%s attempt=%d: %s; the scheduler recovers it", d.job_id, d.attempt, e)
            self.undelivered.append(d)
            return "undelivered"

    async def _outcome(self, job: CurrentJob, on_generated: Callable[[], object] | None) -> str:
        d = job.dispatch
        try:
            video = await self._generate(job, await self._load_resume(d))
            self.finishing[d.job_id] = job
            self._release(job)
            if on_generated is not None:
                on_generated()
            await self._settled(job)  # before the terminal event and the deletion of the checkpoints
            if not await self._admit(job):
                raise Superseded("its dispatch record was not committed")
            result = await self._store_artifacts(job, video)
            await self._terminal(
                job, JobSucceeded, result=result, generation_seconds=video.generation_seconds
            )
            return "succeeded"
        except Abandoned:
            log.info("abandoned job=%s attempt=%d at shutdown", d.job_id, d.attempt)
            return "abandoned"
        except Superseded:
            # Its checkpoints stay: the newer attempt may be resuming from one of them.
            log.warning("job=%s attempt=%d superseded by a newer attempt; stopped", d.job_id, d.attempt)
            return "superseded"
        except Preempted as p:
            log.info("job=%s attempt=%d %s", d.job_id, d.attempt, p)
            key = checkpoint_key(d.job_id, d.attempt, p.step)
            total = d.request.num_inference_steps
            await self._terminal(
                job, JobPreempted, step=p.step, total_steps=total, checkpoint_key=key, reason=p.reason
            )
            return "preempted"
        except Cancelled:
            at = job.last_checkpoint_step if job.last_checkpoint_step >= 0 else None
            await self._terminal(job, JobCancelled, reason="requested by client", at_step=at)
            return "cancelled"
        except GenerationError as e:
            await self._fail(job, e.code, e.message, e.retryable)
        except RetryableError as e:
            await self._fail(job, ErrorCode.STORAGE_UNAVAILABLE, str(e), True)
        except Undelivered:
            raise  # the success was not told: no other ending may be told in its place
        except Exception as e:
            log.exception("job=%s failed unexpectedly", d.job_id)
            await self._fail(job, ErrorCode.INTERNAL, f"{e.__class__.__name__}: {e}", False)
        return "failed"

    # ---- events ------------------------------------------------------------------------------------
    def _event(self, job: CurrentJob, kind: type[JobEvent], **fields: object) -> JobEvent:
        """The attempt's next event; the caller holds `job.sending`."""
        d = job.dispatch
        sequence = next(job.sequence)
        return kind(job_id=d.job_id, producer=self.producer, attempt=d.attempt, sequence=sequence, **fields)

    async def _emit(self, job: CurrentJob, kind: type[JobEvent], **fields: object) -> None:
        async with job.sending:
            if not job.admitted:
                return
            event = self._event(job, kind, **fields)
            await retry(f"publish {event.type}", lambda: self.publish(event))

    async def _admit(self, job: CurrentJob) -> bool:
        """Wait for the commit of the dispatch record; when it failed, stop the attempt silently."""
        if job.admission is not None and job.admitted:
            await asyncio.wait({job.admission})
            failed = job.admission.cancelled() or job.admission.exception() is not None
            if failed and job.admitted:
                log.error("job=%s: dispatch record not committed; stopped silently", job.dispatch.job_id)
                job.admitted = False
                job.superseded.set()
        return job.admitted

    async def _send_started(self, job: CurrentJob) -> None:
        """Send job.started once the dispatch record is committed; the caller acquired `job.sending`."""
        d = job.dispatch
        try:
            if not await self._admit(job):
                return
            event = JobStarted(
                job_id=d.job_id,
                producer=self.producer,
                attempt=d.attempt,
                sequence=next(job.sequence),
                slot=self.slot,
                worker_id=self.producer,
            )
            await retry(f"publish {event.type}", lambda: self.publish(event))
        except RetryableError as e:
            log.warning("job.started of job=%s not sent: %s", d.job_id, e)
        finally:
            job.sending.release()

    async def _send_progress(self, job: CurrentJob, event: JobProgress) -> object:
        async with job.sending:
            if not job.admitted:
                return None
            return await self.publish(event.model_copy(update={"sequence": next(job.sequence)}))

    async def _terminal(self, job: CurrentJob, kind: type[JobEvent], **fields: object) -> None:
        """The last event of an attempt (terminal, or the hand-back of a preempted one) is retried until
        Kafka has it: losing it would leave the job open forever. Meanwhile the job stays held (current,
        or finishing), so heartbeats keep reporting it. Only a shutdown ends the retries (`Undelivered`:
        the process exits non-zero), or the job passing to a newer attempt (`Superseded`)."""
        if job.pump is not None:
            await job.pump.close()
        async with job.sending:
            if not job.admitted:
                return
            event = self._event(job, kind, **fields)
            delays = self.backoff.delays()
            while True:
                try:
                    await self.publish(event)
                    return
                except RetryableError as e:
                    if self.stopping.is_set():
                        raise Undelivered(f"{event.type} not published before shutdown: {e}") from e
                    if job.superseded.is_set():
                        raise Superseded("given to a newer attempt") from e
                    delay = next(delays)
                    log.warning(
                        "job=%s: %s not published, retrying in %.1f s: %s",
                        job.dispatch.job_id,
                        event.type,
                        delay,
                        e,
                    )
                # A shutdown cuts the wait short: one more try, then the attempt is given up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stopping.wait()

    async def _fail(self, job: CurrentJob, code: ErrorCode, message: str, retryable: bool) -> None:
        log.warning("job=%s failed code=%s: %s", job.dispatch.job_id, code, message)
        await self._terminal(job, JobFailed, error=JobError(code=code, message=message, retryable=retryable))

    def _progress(
        self, job: CurrentJob, phase: Phase, value: float, step: StepInfo | None = None
    ) -> JobProgress:
        d = job.dispatch
        return JobProgress(
            job_id=d.job_id,
            producer=self.producer,
            attempt=d.attempt,
            phase=phase,
            progress=min(max(value, 0.0), 1.0),
            step=step.step if step else None,
            total_steps=step.total_steps if step else None,
            seconds_per_step=job.seconds_per_step,
        )

    # ---- generation on the worker thread -------------------------------------------------------------
    async def _generate(self, job: CurrentJob, resume: ResumeState | None) -> GeneratedVideo:
        loop = asyncio.get_running_loop()
        pump = job.pump = ProgressPump(
            lambda event: self._send_progress(job, event),
            self.progress_interval,
        )

        def on_phase(phase: Phase) -> None:
            pump.offer_threadsafe(self._progress(job, phase, PHASE_WEIGHT.get(phase, 0.0)))

        def on_step(info: StepInfo) -> None:
            job.seconds_per_step = info.seconds_per_step
            if job.superseded.is_set():
                raise Superseded(f"superseded at step {info.step}")
            if job.cancel.is_set():
                raise Cancelled(f"cancelled at step {info.step}")
            if job.drain.is_set() and self.checkpoint_every == 0:
                raise Abandoned(f"shutting down at step {info.step}")
            value = PHASE_WEIGHT[Phase.DENOISING] + 0.85 * info.step / info.total_steps
            pump.offer_threadsafe(self._progress(job, Phase.DENOISING, value, info))

        def on_checkpoint(state: ResumeState) -> None:
            if not self._checkpoint_wanted(job, state.step):
                return
            job.unsaved_since, job.stored_checkpoints = time.monotonic(), True
            # Denoising goes on while the checkpoint is stored; the thread waits only for the previous
            # one (so they land in order), or for this one when shutting down, so that `Abandoned`
            # always follows a durable checkpoint.
            self._settle(job)
            job.saving = asyncio.run_coroutine_threadsafe(self._save_checkpoint(job, state), loop)
            if job.drain.is_set():
                self._settle(job)
                raise Abandoned(f"shutting down after the checkpoint at step {state.step}")
            if job.yield_at is not None and state.step >= job.yield_at:
                self._settle(job)
                if job.last_checkpoint_step == state.step:  # only after a durable checkpoint
                    raise Preempted(state.step, job.yield_reason)

        job.unsaved_since = time.monotonic()
        try:
            return await asyncio.to_thread(
                self.generator.generate,
                job.dispatch.request,
                on_phase=on_phase,
                on_step=on_step,
                resume=resume,
                # The engine offers a checkpoint after every step and `on_checkpoint` picks those to
                # store: the regular ones, and the one a hand-back or a shutdown stops at, at once.
                checkpoint_every=1 if self.checkpoint_every else 0,
                on_checkpoint=on_checkpoint if self.checkpoint_every else None,
            )
        except BaseException:
            # Whatever cut the generation short, its last checkpoint is stored (or has failed) before
            # the job goes on: a hand-back names it, a cancel reports it. (After a whole generation
            # the slot is freed first: `_attempt` waits for it while the video is stored.)
            await self._settled(job)
            raise

    def _checkpoint_wanted(self, job: CurrentJob, step: int) -> bool:
        """The one the job stops at (a hand-back, a shutdown), at the first step it can; otherwise every
        `checkpoint_every` steps, but not within `checkpoint_min_seconds` of the attempt's start or its
        last checkpoint: re-running that little work after a crash costs less than storing,
        announcing and deleting a checkpoint for every job."""
        if job.drain.is_set() or (job.yield_at is not None and step >= job.yield_at):
            return True
        if step % self.checkpoint_every:
            return False
        return time.monotonic() - job.unsaved_since >= self.checkpoint_min_seconds

    async def _settled(self, job: CurrentJob) -> None:
        if job.saving is not None:
            await asyncio.to_thread(self._settle, job)

    @staticmethod
    def _settle(job: CurrentJob) -> None:
        """Wait (on a thread, never the loop) for the checkpoint in flight, if any."""
        saving, job.saving = job.saving, None
        if saving is None:
            return
        try:
            job.last_checkpoint_step = saving.result(timeout=120)
        except (RetryableError, TimeoutError) as e:
            log.warning("a checkpoint of job=%s was not saved: %s", job.dispatch.job_id, e)

    # ---- storage -----------------------------------------------------------------------------------------
    async def _load_resume(self, d: JobDispatched) -> ResumeState | None:
        if d.resume_checkpoint is None:
            return None
        try:
            data = await retry("read checkpoint", lambda: self.store.get_bytes(str(d.resume_checkpoint)))
            state = await asyncio.to_thread(ResumeState.from_bytes, data)
        except (ReelstreamError, ValueError) as e:
            log.warning("job=%s starts over: checkpoint %s unusable: %s", d.job_id, d.resume_checkpoint, e)
            return None
        log.info("job=%s attempt=%d resumes at step %d", d.job_id, d.attempt, state.step)
        return state

    async def _save_checkpoint(self, job: CurrentJob, state: ResumeState) -> int:
        d = job.dispatch
        key = checkpoint_key(d.job_id, d.attempt, state.step)
        data = await asyncio.to_thread(state.to_bytes)
        await retry("save checkpoint", lambda: self.store.put_bytes(key, data, "application/octet-stream"))
        await self._emit(
            job, JobCheckpointed, step=state.step, total_steps=state.total_steps, checkpoint_key=key
        )
        return state.step

    async def _store_artifacts(self, job: CurrentJob, video: GeneratedVideo) -> VideoResult:
        d, pump = job.dispatch, job.pump
        assert pump is not None
        pump.offer(self._progress(job, Phase.ENCODING_VIDEO, PHASE_WEIGHT[Phase.ENCODING_VIDEO]))
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        path = self.scratch_dir / f"{d.job_id}-attempt-{d.attempt}.mp4"
        try:
            await asyncio.to_thread(encode_mp4, video.frames, video.fps, path)
            poster = await asyncio.to_thread(poster_jpeg, video.frames)
            pump.offer(self._progress(job, Phase.UPLOADING, PHASE_WEIGHT[Phase.UPLOADING]))
            vkey, pkey = video_key(d.job_id, d.attempt), poster_key(d.job_id, d.attempt)
            if job.superseded.is_set():
                raise Superseded("superseded before its upload")
            deadline = asyncio.get_running_loop().time() + self.upload_retry_seconds
            await self._upload(job, deadline, lambda: self.store.put_file(vkey, str(path), "video/mp4"))
            await self._upload(job, deadline, lambda: self.store.put_bytes(pkey, poster, "image/jpeg"))
            if job.superseded.is_set():  # told during the upload: take back what this attempt stored
                await self.store.delete_prefix(f"jobs/{d.job_id}/attempt-{d.attempt}/")
                raise Superseded("superseded during its upload")
            frames, height, width = video.frames.shape[0], video.frames.shape[1], video.frames.shape[2]
            return VideoResult(
                video_key=vkey,
                poster_key=pkey,
                size_bytes=path.stat().st_size,
                width=width - width % 2,
                height=height - height % 2,
                fps=video.fps,
                frames=frames,
                duration_seconds=frames / video.fps,
            )
        finally:
            path.unlink(missing_ok=True)

    async def _upload(self, job: CurrentJob, deadline: float, put: Callable[[], Awaitable[None]]) -> None:
        """Store one artifact, retried with backoff until `deadline` (loop time). The encoded video waits
        on the scratch dir and the slot denoises its next job meanwhile: a storage outage costs a wait,
        not the GPU work. Past the deadline the storage error stands (the job fails, retryable)."""
        loop, delays = asyncio.get_running_loop(), self.backoff.delays()
        while True:
            try:
                await put()
                return
            except RetryableError as e:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                if job.superseded.is_set():
                    raise Superseded("superseded while its upload was retried") from e
                delay = min(next(delays), left)
                log.warning(
                    "job=%s: upload failed, retrying in %.1f s (%.0f s left): %s",
                    job.dispatch.job_id,
                    delay,
                    left,
                    e,
                )
            if job.pump is not None:  # the job is still uploading, not stuck
                job.pump.offer(self._progress(job, Phase.UPLOADING, PHASE_WEIGHT[Phase.UPLOADING]))
            await asyncio.sleep(delay)

    async def _delete_checkpoints(self, job: CurrentJob) -> None:
        """Delete every attempt's checkpoints; a first attempt that stored none has none to delete."""
        if job.dispatch.attempt == 1 and not job.stored_checkpoints:
            return
        try:
            await self.store.delete_prefix(checkpoint_prefix(job.dispatch.job_id))
        except RetryableError as e:
            log.warning("checkpoints of job=%s not deleted: %s", job.dispatch.job_id, e)
