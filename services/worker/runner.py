"""The attempt flow of one slot: generate a dispatched job, store its result, tell how it ended.

Generation runs on a worker thread; callbacks from that thread reach the event loop only through
`call_soon_threadsafe`/`run_coroutine_threadsafe` (or the progress pump's atomic hand-over). The
attempt's state and events are in `attempt.py`, what it stores in `artifacts.py`. Infrastructure
trouble (S3, Kafka) is kept apart from model errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import PIL.Image
from opentelemetry import context as otel_context

from schemas.events import (
    ErrorCode,
    JobCancelled,
    JobDispatched,
    JobError,
    JobFailed,
    JobPreempted,
    JobSucceeded,
)
from schemas.jobs import Phase
from services.common.errors import RetryableError
from services.common.storage import checkpoint_key
from services.worker.artifacts import Artifacts, ArtifactStore
from services.worker.attempt import (
    DEFAULT_BACKOFF,
    PHASE_WEIGHT,
    Abandoned,
    Attempt,
    Backoff,
    Preempted,
    ProgressPump,
    Publish,
    Superseded,
    Undelivered,
)
from services.worker.engine.generator import (
    Cancelled,
    GeneratedVideo,
    GenerationError,
    Generator,
    ResumeState,
    StepInfo,
)
from services.worker.telemetry import Phases

log = logging.getLogger("reelstream.worker")

__all__ = ["ArtifactStore", "Backoff", "JobRunner", "ProgressPump", "Publish", "RunState"]

# Outcomes after which the job's checkpoints stay: another attempt may resume from them.
KEEPS_CHECKPOINTS = frozenset({"abandoned", "preempted", "superseded", "undelivered"})


class RunState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"


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
        backoff: Backoff = DEFAULT_BACKOFF,
        preview_every: int = 0,
        preview_min_seconds: float = 0.0,
    ) -> None:
        self.slot = slot
        self.preview_every = preview_every
        self.producer = f"worker-{slot}"
        self.generator = generator
        self.publish = publish
        self.checkpoint_every = checkpoint_every if generator.supports_resume else 0
        self.artifacts = Artifacts(
            store,
            scratch_dir,
            checkpoint_every=self.checkpoint_every,
            checkpoint_min_seconds=checkpoint_min_seconds,
            upload_retry_seconds=upload_retry_seconds,
            backoff=backoff,
            preview_min_seconds=preview_min_seconds,
        )
        self.progress_interval = progress_interval
        self.backoff = backoff
        self.state = RunState.IDLE
        # Set at shutdown: a last event still failing then is given up (see `Attempt.terminal`).
        self.stopping = asyncio.Event()
        self.undelivered: list[JobDispatched] = []
        # The attempt on the GPU, and the attempts whose video is being encoded and stored meanwhile.
        self.current: Attempt | None = None
        self.finishing: dict[uuid.UUID, Attempt] = {}

    # ---- control from the event loop ------------------------------------------------------------
    def cancel(self, job_id: uuid.UUID) -> bool:
        if self.current is not None and self.current.job_id == job_id:
            self.current.cancel.set()
            return True
        return False

    def supersede(self, job_id: uuid.UUID, lost_attempt: int) -> bool:
        """The scheduler retried the job after `lost_attempt`: an attempt up to it that this slot still
        runs or stores is stale. It stops within a step, stores no video and sends no terminal event."""
        found = False
        for attempt in [self.current, *self.finishing.values()]:
            if attempt is not None and attempt.job_id == job_id and attempt.dispatch.attempt <= lost_attempt:
                attempt.superseded.set()
                found = True
        return found

    def preempt(self, job_id: uuid.UUID, attempt: int, at_step: int, reason: str) -> bool:
        """Stop the running attempt after step `at_step` (the next step if it is past it), with a
        checkpoint taken there; the job waits again and resumes from it."""
        current = self.current
        if current is None or current.job_id != job_id or current.dispatch.attempt != attempt:
            return False
        if self.checkpoint_every == 0:
            return False  # no checkpoints: it could only start over, which gains nothing
        current.preempt_reason = reason
        current.preempt_at = at_step if current.preempt_at is None else min(current.preempt_at, at_step)
        return True

    def drain(self) -> None:
        """Shutting down: stop the running attempt after its current step (with a checkpoint, when the
        worker takes them) without ending it."""
        self.stopping.set()
        if self.current is not None:
            self.current.drain.set()

    @property
    def seconds_per_step(self) -> float | None:
        return self.current.seconds_per_step if self.current else None

    # ---- one attempt -------------------------------------------------------------------------------
    async def run(
        self,
        dispatch: JobDispatched,
        on_generated: Callable[[], object] | None = None,
        admission: asyncio.Future[None] | None = None,
    ) -> str:
        """Run an attempt to its last event; returns the outcome ("succeeded", "abandoned", ...).

        Once denoising and decoding are done the GPU side is free: `on_generated` is called and the
        next job may `run` while this one encodes and stores its video. `admission` is the commit of
        the dispatch record, still under way: see `Attempt.admission`.
        """
        if self.state is not RunState.IDLE:
            raise RuntimeError(f"slot {self.slot} is {self.state}; one job at a time")
        attempt = Attempt(
            dispatch,
            producer=self.producer,
            publish=self.publish,
            backoff=self.backoff,
            stopping=self.stopping,
            admission=admission,
        )
        # Phase spans are children of the span the run is called in (the slot's `worker.attempt`).
        attempt.phases = Phases(otel_context.get_current(), dispatch.request.model)
        self.current, self.state = attempt, RunState.RUNNING
        outcome = "abandoned"
        # job.started is sent while the generation starts (it holds the send lock, so it still comes
        # first in the log): on short jobs the acknowledged round trip is a share of the GPU time.
        await attempt.sending.acquire()
        started = asyncio.create_task(attempt.send_started(self.slot))
        try:
            outcome = await self._attempt(attempt, on_generated)
        finally:
            attempt.phases.close()  # an attempt that ended without a last event (shutdown, superseded)
            attempt.ended = True  # a preview still on its way is not announced after this
            await asyncio.gather(started, return_exceptions=True)
            if outcome not in KEEPS_CHECKPOINTS:
                await self.artifacts.delete_checkpoints(attempt)
            self.finishing.pop(dispatch.job_id, None)
            self._release(attempt)
        return outcome

    def _release(self, attempt: Attempt) -> None:
        if self.current is attempt:
            self.current, self.state = None, RunState.IDLE

    async def _attempt(self, attempt: Attempt, on_generated: Callable[[], object] | None) -> str:
        """The outcome; a last event given up at shutdown, or one whose job was given to a newer
        attempt while it was retried, ends it here (it may come from any branch of `_outcome`)."""
        d = attempt.dispatch
        try:
            return await self._outcome(attempt, on_generated)
        except Superseded:
            log.warning("job=%s attempt=%d superseded while its last event was retried", d.job_id, d.attempt)
            return "superseded"
        except Undelivered as e:
            log.error("job=%s attempt=%d: %s; the scheduler recovers it", d.job_id, d.attempt, e)
            self.undelivered.append(d)
            return "undelivered"

    async def _outcome(self, attempt: Attempt, on_generated: Callable[[], object] | None) -> str:
        d = attempt.dispatch
        try:
            image = await self.artifacts.load_image(d)
            video = await self._generate(attempt, await self.artifacts.load_resume(d), image)
            self.finishing[d.job_id] = attempt
            self._release(attempt)
            if on_generated is not None:
                on_generated()
            # The last checkpoint lands before the terminal event and the deletion of the checkpoints.
            await self.artifacts.settled(attempt)
            if not await attempt.admit():
                raise Superseded("its dispatch record was not committed")
            result = await self.artifacts.store_video(attempt, video)
            await attempt.terminal(JobSucceeded, result=result, generation_seconds=video.generation_seconds)
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
            await attempt.terminal(
                JobPreempted, step=p.step, total_steps=total, checkpoint_key=key, reason=p.reason
            )
            return "preempted"
        except Cancelled:
            at = attempt.last_checkpoint_step if attempt.last_checkpoint_step >= 0 else None
            await attempt.terminal(JobCancelled, reason="requested by client", at_step=at)
            return "cancelled"
        except GenerationError as e:
            await self._fail(attempt, e.code, e.message, e.retryable)
        except RetryableError as e:
            await self._fail(attempt, ErrorCode.STORAGE_UNAVAILABLE, str(e), True)
        except Undelivered:
            raise  # the success was not told: no other ending may be told in its place
        except Exception as e:
            log.exception("job=%s failed unexpectedly", d.job_id)
            await self._fail(attempt, ErrorCode.INTERNAL, f"{e.__class__.__name__}: {e}", False)
        return "failed"

    async def _fail(self, attempt: Attempt, code: ErrorCode, message: str, retryable: bool) -> None:
        log.warning("job=%s failed code=%s: %s", attempt.job_id, code, message)
        await attempt.terminal(JobFailed, error=JobError(code=code, message=message, retryable=retryable))

    # ---- generation on the worker thread -------------------------------------------------------------
    async def _generate(
        self, attempt: Attempt, resume: ResumeState | None, image: PIL.Image.Image | None = None
    ) -> GeneratedVideo:
        loop = asyncio.get_running_loop()
        pump = attempt.start_pump(self.progress_interval)
        artifacts = self.artifacts

        def on_phase(phase: Phase) -> None:
            if attempt.phases is not None:
                attempt.phases.enter(phase)
            pump.offer_threadsafe(attempt.phase_progress(phase))

        def on_step(info: StepInfo) -> None:
            attempt.seconds_per_step = info.seconds_per_step
            if attempt.phases is not None:
                attempt.phases.step(info.step)
            if attempt.superseded.is_set():
                raise Superseded(f"superseded at step {info.step}")
            if attempt.cancel.is_set():
                raise Cancelled(f"cancelled at step {info.step}")
            if attempt.drain.is_set() and self.checkpoint_every == 0:
                raise Abandoned(f"shutting down at step {info.step}")
            value = PHASE_WEIGHT[Phase.DENOISING] + 0.85 * info.step / info.total_steps
            pump.offer_threadsafe(attempt.progress(Phase.DENOISING, value, info))
            if info.preview is not None:
                artifacts.start_preview(attempt, info.preview, loop)

        def on_checkpoint(state: ResumeState) -> None:
            if not artifacts.checkpoint_wanted(attempt, state.step):
                return
            # Denoising goes on while the checkpoint is stored; the thread waits for this one only
            # when it stops here, so that `Abandoned` and `Preempted` always follow a durable checkpoint.
            artifacts.start_checkpoint(attempt, state, loop)
            if attempt.drain.is_set():
                artifacts.settle(attempt)
                raise Abandoned(f"shutting down after the checkpoint at step {state.step}")
            if attempt.preempt_at is not None and state.step >= attempt.preempt_at:
                artifacts.settle(attempt)
                if attempt.last_checkpoint_step == state.step:  # only after a durable checkpoint
                    raise Preempted(state.step, attempt.preempt_reason)

        attempt.unsaved_since = time.monotonic()
        attempt.previewed_at = self.artifacts.preview_clock()
        try:
            return await asyncio.to_thread(
                self.generator.generate,
                attempt.dispatch.request,
                on_phase=on_phase,
                on_step=on_step,
                resume=resume,
                # The engine offers a checkpoint after every step and `on_checkpoint` picks those to
                # store: the regular ones, and the one a preemption or a shutdown stops at, at once.
                checkpoint_every=1 if self.checkpoint_every else 0,
                on_checkpoint=on_checkpoint if self.checkpoint_every else None,
                preview_every=self.preview_every,
                image=image,
            )
        except BaseException:
            # Whatever cut the generation short, its last checkpoint is stored (or has failed) before
            # the attempt goes on: a preemption names it, a cancel reports it. After a whole
            # generation the slot is freed first, and `_outcome` waits for it while the video is stored.
            await artifacts.settled(attempt)
            raise
