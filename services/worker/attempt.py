"""One attempt of a job on this slot: its state, its events and the pump that sends its progress.

Every event the worker emits for an attempt is built here (`Attempt.event`, `attempt_event`), so each
carries the job, the attempt, the producer and the tenant of its dispatch. An attempt's events are
numbered and handed to the producer one at a time, so the log holds them in `sequence` order although
progress, checkpoints and the end are sent by different tasks. Progress is throttled (within a phase
only the newest update is sent, but every phase is); the last event of an attempt is retried until
Kafka has it (or the worker stops).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from schemas.events import JobDispatched, JobEvent, JobProgress, JobStarted, utcnow
from schemas.jobs import Phase
from services.common import tracing
from services.common.errors import RetryableError
from services.common.runtime import retry
from services.worker.engine.generator import StepInfo
from services.worker.telemetry import GPU_UTIL, TERMINAL_RETRIES, Phases

log = logging.getLogger("reelstream.worker")

Publish = Callable[[JobEvent], Awaitable[object]]
E = TypeVar("E", bound=JobEvent)

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
    """The scheduler preempted the attempt: it stops after a durable checkpoint; the job resumes there."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"preempted after the checkpoint at step {step}: {reason}")
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


DEFAULT_BACKOFF = Backoff()


def attempt_event(
    dispatch: JobDispatched, kind: type[E], producer: str, sequence: int | None = None, **fields: object
) -> E:
    """An event of the attempt `dispatch` names, stamped with its job, attempt and tenant."""
    return kind(
        job_id=dispatch.job_id,
        producer=producer,
        attempt=dispatch.attempt,
        tenant=dispatch.tenant,
        sequence=sequence,
        **fields,
    )


@dataclass
class Attempt:
    """The attempt a slot holds, from its dispatch to its last event.

    `cancel`, `drain`, `superseded`, `preempt_at` and `saving` are read from the generation thread.
    """

    dispatch: JobDispatched
    producer: str
    publish: Publish
    # When the slot took the dispatch and began: job.started's occurred_at, though it is sent only once
    # the commit lands, while the attempt already runs (its first progress comes after this time).
    began: datetime = field(default_factory=utcnow)
    backoff: Backoff = field(default_factory=Backoff)
    # Set at shutdown: a last event still failing then is given up (see `terminal`).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    drain: threading.Event = field(default_factory=threading.Event)
    superseded: threading.Event = field(default_factory=threading.Event)
    # The commit of the attempt's dispatch record, which goes on while the attempt starts. Nothing of
    # the attempt is published before it lands; if it fails the attempt stops and publishes nothing at
    # all (`admitted` turns False), and the slot's next process reads the record again.
    admission: asyncio.Future[None] | None = None
    admitted: bool = True
    # itertools.count is safe to share between the loop and the generation thread.
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    seconds_per_step: float | None = None
    last_checkpoint_step: int = -1
    pump: ProgressPump | None = None
    # The checkpoint being stored while denoising goes on; at most one is in flight.
    saving: concurrent.futures.Future[int] | None = None
    # Set by a preempt request (event loop), read by the generation thread: stop at this step.
    preempt_at: int | None = None
    preempt_reason: str = ""
    # When the attempt started generating or took its last checkpoint (time.monotonic()).
    unsaved_since: float = 0.0
    stored_checkpoints: bool = False  # this attempt began storing at least one
    # The preview being stored and announced; at most one is in flight (a newer one is dropped meanwhile).
    previewing: concurrent.futures.Future[None] | None = None
    # When the attempt started generating or sent its last preview (time.monotonic()).
    previewed_at: float = 0.0
    ended: bool = False  # its last event is being sent: droppable events stop here
    # Its phase spans and durations (telemetry.py); set by the runner.
    phases: Phases | None = None

    @property
    def job_id(self) -> uuid.UUID:
        return self.dispatch.job_id

    def event(self, kind: type[E], **fields: object) -> E:
        """The attempt's next event; the caller holds `sending`."""
        return attempt_event(self.dispatch, kind, self.producer, next(self.sequence), **fields)

    def progress(self, phase: Phase, value: float, step: StepInfo | None = None) -> JobProgress:
        """A progress update, numbered only when it is sent (`send_progress`): most are dropped."""
        return attempt_event(
            self.dispatch,
            JobProgress,
            self.producer,
            phase=phase,
            progress=min(max(value, 0.0), 1.0),
            step=step.step if step else None,
            total_steps=step.total_steps if step else None,
            seconds_per_step=self.seconds_per_step,
            gpu_util=GPU_UTIL(),
        )

    def phase_progress(self, phase: Phase) -> JobProgress:
        return self.progress(phase, PHASE_WEIGHT.get(phase, 0.0))

    async def admit(self) -> bool:
        """Wait for the commit of the dispatch record; when it failed, stop the attempt silently."""
        if self.admission is not None and self.admitted:
            await asyncio.wait({self.admission})
            failed = self.admission.cancelled() or self.admission.exception() is not None
            if failed and self.admitted:
                log.error("job=%s: dispatch record not committed; stopped silently", self.job_id)
                self.admitted = False
                self.superseded.set()
        return self.admitted

    async def send_started(self, slot: int) -> None:
        """Send job.started once the dispatch record is committed; the caller acquired `sending`."""
        try:
            if not await self.admit():
                return
            event = self.event(JobStarted, slot=slot, worker_id=self.producer, occurred_at=self.began)
            await retry(f"publish {event.type}", lambda: self.publish(event))
        except RetryableError as e:
            log.warning("job.started of job=%s not sent: %s", self.job_id, e)
        finally:
            self.sending.release()

    async def emit(self, kind: type[JobEvent], **fields: object) -> None:
        async with self.sending:
            if not self.admitted:
                return
            event = self.event(kind, **fields)
            await retry(f"publish {event.type}", lambda: self.publish(event))

    async def emit_droppable(self, kind: type[JobEvent], **fields: object) -> None:
        """An event that may be lost (a preview): one try, and never after the attempt's last event."""
        async with self.sending:
            if not self.admitted or self.ended:
                return
            await self.publish(self.event(kind, **fields))

    async def send_progress(self, event: JobProgress) -> object:
        async with self.sending:
            if not self.admitted:
                return None
            return await self.publish(event.model_copy(update={"sequence": next(self.sequence)}))

    def start_pump(self, interval: float) -> ProgressPump:
        self.pump = ProgressPump(self.send_progress, interval)
        return self.pump

    def offer(self, phase: Phase) -> None:
        """Progress from the event loop (encoding and storing the video)."""
        if self.phases is not None:
            self.phases.enter(phase)
        if self.pump is not None:
            self.pump.offer(self.phase_progress(phase))

    async def terminal(self, kind: type[JobEvent], **fields: object) -> None:
        """The last event of the attempt (terminal, or `job.preempted`) is retried until Kafka has it:
        losing it would leave the job open forever. Meanwhile the job stays held (current, or
        finishing), so heartbeats keep reporting it. Only a shutdown ends the retries (`Undelivered`:
        the process exits non-zero), or the job passing to a newer attempt (`Superseded`)."""
        if self.pump is not None:
            await self.pump.close()
        if self.phases is not None:
            self.phases.close()
        async with self.sending:
            self.ended = True
            if not self.admitted:
                return
            event = self.event(kind, **fields)
            with tracing.span("worker", f"worker.publish {event.type}"):
                await self._send_terminal(event)

    async def _send_terminal(self, event: JobEvent) -> None:
        """Publish the last event until Kafka has it; see `terminal`."""
        delays = self.backoff.delays()
        while True:
            try:
                await self.publish(event)
                return
            except RetryableError as e:
                TERMINAL_RETRIES.labels(event.type.value).inc()
                if self.stopping.is_set():
                    raise Undelivered(f"{event.type} not published before shutdown: {e}") from e
                if self.superseded.is_set():
                    raise Superseded("given to a newer attempt") from e
                delay = next(delays)
                log.warning(
                    "job=%s: %s not published, retrying in %.1f s: %s", self.job_id, event.type, delay, e
                )
            # A shutdown cuts the wait short: one more try, then the attempt is given up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()


class ProgressPump:
    """Publishes progress at most every `interval` seconds, keeping the last update of every phase.

    Within a phase only the newest unsent update counts (a step replaces the step before it); an update
    that ends a phase is kept when the next phase's update arrives before the pump's next turn, so a
    phase shorter than the interval (the tiny model's video encoding) is still reported, in order. A new
    phase does not wait for the interval: its first update is sent at once (a handful per job), so a
    watcher sees the job start decoding or uploading when it does, not up to an interval later.

    The generation thread offers an update at every step. It wakes the event loop only when the pump
    is waiting for one: a wake-up per step, for updates the pump mostly drops, would cost the slot's
    host a thread switch per step while the loop stores the previous job's video.
    """

    def __init__(self, publish: Callable[[JobProgress], Awaitable[object]], interval: float) -> None:
        self._publish = publish
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        # The unsent updates: the last of each phase that ended since the pump's last turn, then the
        # newest. The generation thread and the loop both touch it, under the lock.
        self._pending: list[JobProgress] = []
        self._phase: Phase | None = None  # of the newest update offered
        self._sent_phase: Phase | None = None  # of the last update sent
        self._lock = threading.Lock()
        self._wake = asyncio.Event()  # an update is pending (set while the pump waits for one)
        self._hurry = asyncio.Event()  # a new phase began: the pump's next turn is now
        self._waiting = False
        self._task = asyncio.create_task(self._pump(), name="progress-pump")

    def _put(self, event: JobProgress) -> bool:
        """Keeps `event` pending; whether it begins a new phase."""
        with self._lock:
            if self._pending and self._pending[-1].phase == event.phase:
                self._pending[-1] = event
            else:
                self._pending.append(event)
            new_phase, self._phase = event.phase != self._phase, event.phase
        return new_phase

    def _new_phase(self) -> None:
        self._hurry.set()
        self._wake.set()

    def offer(self, event: JobProgress) -> None:
        """Called on the event loop."""
        if self._put(event):
            self._new_phase()
        else:
            self._wake.set()

    def offer_threadsafe(self, event: JobProgress) -> None:
        """Called from another thread."""
        if self._put(event):
            self._loop.call_soon_threadsafe(self._new_phase)
        elif self._waiting:  # read after the put: a pump that starts waiting now sees the update
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _send_pending(self) -> None:
        """Sends the updates pending now, one at a time: one cancelled mid-send (by `close`) loses at
        most the update in flight, and `close` sends the rest."""
        with self._lock:
            count = len(self._pending)
        for _ in range(count):
            with self._lock:
                if not self._pending:
                    return
                event = self._pending.pop(0)
                self._sent_phase = event.phase
            try:
                await self._publish(event)
            except RetryableError as e:
                log.warning("dropped a progress update: %s", e)

    async def _pump(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                self._waiting = True
                try:
                    if not self._pending:  # checked again after announcing the wait
                        await self._wake.wait()
                finally:
                    self._waiting = False
            await self._send_pending()
            await self._rest()

    async def _rest(self) -> None:
        """Until the interval has passed, or until an update of a phase not sent yet is pending."""
        deadline = self._loop.time() + self._interval
        while (remaining := deadline - self._loop.time()) > 0:
            self._hurry.clear()
            if self._new_phase_pending():  # checked after the clear: a later one sets it again
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._hurry.wait()

    def _new_phase_pending(self) -> bool:
        with self._lock:
            return any(event.phase != self._sent_phase for event in self._pending)

    async def close(self) -> None:
        """Stop the pump and send what is still pending, so progress never follows the terminal event."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._send_pending()
