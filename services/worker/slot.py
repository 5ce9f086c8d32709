"""The loops of one GPU slot around its runner: dispatch, control and heartbeat.

The slot reads only its own partition of jobs.dispatch, by manual assignment, so a long generation never
trips a consumer-group timeout, and every partition of jobs.control for cancels, preempt requests and
retries. It reports ready (`ready`, served as `/readyz`) once its dispatch position is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from schemas.envelope import MalformedMessage, decode_event
from schemas.events import (
    EventType,
    HeldJob,
    JobCancelled,
    JobDispatched,
    JobEvent,
    JobPreemptRequested,
    JobRetrying,
    SlotState,
    WorkerHeartbeat,
)
from schemas.topics import JOBS_EVENTS, WORKERS_HEARTBEAT
from services.common import logging as logs
from services.common import tracing
from services.common.errors import RetryableError
from services.common.kafka import Producer, dead_letter, publish_event, publish_heartbeat
from services.worker.attempt import attempt_event
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings

log = logging.getLogger("reelstream.worker")

GROUP = "reelstream-worker"
MAX_CANCELS_KEPT = 100_000
MAX_PREEMPTS_KEPT = 1000


def remember_cancel(
    cancelled: dict[uuid.UUID, datetime], job_id: uuid.UUID, now: datetime, lookback_seconds: float
) -> None:
    """Keep a cancel for a dispatch that may still come, oldest first out: past the look-back, or past
    `MAX_CANCELS_KEPT`. Amortised O(1) per cancel, so a burst of cancels costs linear time."""
    cancelled.pop(job_id, None)
    cancelled[job_id] = now
    horizon = now - timedelta(seconds=lookback_seconds)
    while cancelled:
        oldest = next(iter(cancelled))
        if cancelled[oldest] > horizon and len(cancelled) <= MAX_CANCELS_KEPT:
            break
        del cancelled[oldest]


async def fix_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """Resolve where the slot reads jobs.dispatch, before its first heartbeat, and commit it when the
    group has none for the partition ("latest"), so a restart keeps it too.

    The scheduler sends a job to a slot once it hears from it. A position still unresolved then (the
    group coordinator takes seconds on a fresh broker) resolves to "latest" only after the record is
    appended, past it: the slot would never read its job.
    """
    committed = await consumer.committed(tp)
    position: int = await consumer.position(tp)
    if committed is None:
        await consumer.commit({tp: position})
    log.info("slot %d reads %s from offset %d", tp.partition, tp.topic, position)
    return position


class Slot:
    """One GPU slot: reads its dispatches, hands each to the runner, hears control, heartbeats."""

    def __init__(
        self,
        settings: WorkerSettings,
        producer: Producer,
        runner: JobRunner,
        ready: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.runner = runner
        # Read by the metrics server's thread: set once the slot may be sent jobs, cleared at shutdown.
        self.ready = ready or threading.Event()
        self.left_open: list[str] = []  # runs cut short at shutdown
        self.boot_id = uuid.uuid4()
        self.position: int | None = None
        self.stopping = False
        self.cancelled: dict[uuid.UUID, datetime] = {}
        # The dispatch this slot holds from the moment it commits it until its run returns, so no
        # heartbeat in between says "read past the record, holding nothing".
        self.claimed: JobDispatched | None = None
        # Runs still going: at most one denoising, the others storing their videos.
        self.runs: set[asyncio.Task[str]] = set()
        self.preempts: dict[tuple[uuid.UUID, int], JobPreemptRequested] = {}
        self.superseded: dict[uuid.UUID, int] = {}  # job -> the newest attempt given up on
        self.sending: set[asyncio.Task[None]] = set()  # heartbeats on their way

    # ---- the whole slot --------------------------------------------------------------------------
    async def operate(
        self,
        dispatch: AIOKafkaConsumer,
        tp: TopicPartition,
        control: AIOKafkaConsumer,
        stop: asyncio.Event,
    ) -> None:
        """Fix the dispatch position, then announce the slot and run what it is sent until `stop`."""
        if not await _unless_stopped(self.take_position(dispatch, tp), stop):
            return
        self.ready.set()
        log.info("slot %d ready with model %s", self.settings.slot_id, self.settings.model)
        tasks = [
            asyncio.create_task(self.heartbeat_loop(stop), name="heartbeat"),
            asyncio.create_task(self.control_loop(control, stop), name="control"),
        ]
        drain = asyncio.create_task(self._drain_on_stop(stop), name="drain")
        try:
            await self.dispatch_loop(dispatch, tp, stop)
        finally:
            self.ready.clear()
            stop.set()
            self.stopping = True
            await self.finish(self.settings.finish_timeout_seconds)
            await asyncio.gather(*tasks, drain, *self.sending, return_exceptions=True)
            await self.beat()

    async def _drain_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.ready.clear()
        self.stopping = True
        self.runner.drain()

    async def finish(self, seconds: float) -> None:
        """Let the jobs still storing their videos end (shutdown), for at most `seconds`."""
        if self.runs:
            _, pending = await asyncio.wait(set(self.runs), timeout=seconds)
            for task in pending:
                log.warning("%s still running at shutdown; cancelled", task.get_name())
                self.left_open.append(task.get_name())
                task.cancel()

    def unfinished(self) -> list[str]:
        """The jobs this process leaves without their last event (shutdown cut them short)."""
        given_up = [f"job-{d.job_id}" for d in self.runner.undelivered]
        return self.left_open + given_up

    # ---- heartbeats ------------------------------------------------------------------------------
    def heartbeat(self) -> WorkerHeartbeat:
        held = self.runner.current.dispatch if self.runner.current else self.claimed
        state = SlotState.STOPPING if self.stopping else SlotState.BUSY if held else SlotState.IDLE
        return WorkerHeartbeat(
            producer=self.runner.producer,
            slot=self.settings.slot_id,
            worker_id=self.settings.hostname or "local",
            boot_id=self.boot_id,
            state=state,
            job_id=held.job_id if held else None,
            attempt=held.attempt if held else None,
            model=self.settings.model,
            seconds_per_step=self.runner.seconds_per_step,
            dispatch_position=self.position,
            finishing=[
                HeldJob(job_id=a.job_id, attempt=a.dispatch.attempt)
                for a in list(self.runner.finishing.values())
            ],
        )

    async def _send_heartbeat(self, beat: WorkerHeartbeat) -> None:
        try:
            async with asyncio.timeout(5):
                await publish_heartbeat(self.producer, WORKERS_HEARTBEAT, beat)
        except (RetryableError, TimeoutError) as e:
            log.warning("heartbeat not sent: %s", e)

    async def beat(self) -> None:
        await self._send_heartbeat(self.heartbeat())

    def beat_soon(self) -> None:
        """A heartbeat of the slot as it is now, sent without holding up the caller (the next job)."""
        task = asyncio.create_task(self._send_heartbeat(self.heartbeat()), name="heartbeat-now")
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await stop.wait()

    # ---- control: cancels, preempt requests, retries -----------------------------------------------
    def on_control(self, event: JobEvent) -> None:
        if isinstance(event, JobRetrying):
            # The scheduler took an attempt of this job for lost: any older attempt here is stale.
            self.superseded[event.job_id] = max(self.superseded.get(event.job_id, 0), event.attempt)
            if self.runner.supersede(event.job_id, event.attempt):
                log.warning(
                    "job=%s: attempt %d was given up on; stopping it here", event.job_id, event.attempt
                )
            return
        if isinstance(event, JobPreemptRequested):
            # The request may come before the slot starts the job (look-ahead): kept until it does.
            self.preempts[(event.job_id, event.attempt)] = event
            if len(self.preempts) > MAX_PREEMPTS_KEPT:
                self.preempts.pop(next(iter(self.preempts)))
            self._apply_preempt()
            return
        if event.type is EventType.CANCEL_REQUESTED:
            remember_cancel(
                self.cancelled, event.job_id, datetime.now(UTC), self.settings.control_lookback_seconds
            )
            if self.runner.cancel(event.job_id):
                log.info("cancelling running job=%s", event.job_id)

    def _apply_preempt(self) -> None:
        """Pass a kept preempt request for the running attempt on to the runner."""
        current = self.runner.current
        if current is None:
            return
        asked = self.preempts.pop((current.job_id, current.dispatch.attempt), None)
        if asked is None:
            return
        if self.runner.preempt(asked.job_id, asked.attempt, asked.at_step, asked.reason):
            log.info("job=%s will be preempted at step %d", asked.job_id, asked.at_step)

    async def control_loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for msg in records:
                    try:
                        self.on_control(decode_event(msg.value))
                    except MalformedMessage as e:
                        log.warning("unreadable control record offset=%s: %s", msg.offset, e)

    # ---- dispatches ------------------------------------------------------------------------------
    async def take_position(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        self.position = await fix_position(consumer, tp)

    async def commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        await consumer.commit({tp: offset})
        self.position = offset

    async def dispatch_loop(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, stop: asyncio.Event
    ) -> None:
        """Handle the slot's dispatch records one at a time, reading the next while one runs.

        With look-ahead the scheduler sends a slot its next job before the running one ends: read
        while it runs, it is in hand the moment the slot is free, instead of after a round of the
        event loop (busy storing the last video) and the consumer. Reading is not taking: only
        `handle` commits, so a record read but not handled is read again by the slot's next process.
        The position is fixed before (`fix_position`).
        """

        def read() -> asyncio.Task[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
            return asyncio.create_task(consumer.getmany(tp, timeout_ms=500, max_records=1))

        ahead = None
        try:
            while not stop.is_set():
                batch, ahead = await (ahead or read()), None
                for msg in batch.get(tp, []):
                    if stop.is_set():
                        return  # not committed: it stays for this slot's next process
                    ahead = read()
                    await self.handle(consumer, tp, msg)
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def handle(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, msg: ConsumerRecord[bytes, bytes]
    ) -> None:
        """Commit, then run: a crash mid-job is recovered by the scheduler as a new attempt.

        The run starts while the commit is under way (a broker round trip, a share of a short job):
        it publishes nothing before the commit lands, so a crash in between leaves no trace of the
        attempt and the record is read again, as if the crash had come before it was read.
        """
        try:
            event = decode_event(msg.value)
            if not isinstance(event, JobDispatched) or event.slot != self.settings.slot_id:
                raise MalformedMessage(
                    f"expected job.dispatched for slot {self.settings.slot_id}, got {event.type}"
                )
        except MalformedMessage as e:
            await dead_letter(self.producer, msg, str(e), GROUP)
            await self.commit(consumer, tp, msg.offset + 1)
            return
        self.claimed = event
        trace = tracing.extract(msg.headers)  # the scheduler's dispatch span: the attempt's parent
        try:
            if event.attempt <= self.superseded.get(event.job_id, 0):
                await self.commit(consumer, tp, msg.offset + 1)
                log.warning("job=%s attempt=%d was given up on; not started", event.job_id, event.attempt)
                return
            if event.job_id in self.cancelled:
                await self.commit(consumer, tp, msg.offset + 1)
                cancelled = attempt_event(event, JobCancelled, self.runner.producer)
                with tracing.attached(trace):
                    await publish_event(self.producer, JOBS_EVENTS, cancelled)
                return
            committing = asyncio.create_task(self.commit(consumer, tp, msg.offset + 1))
            self.beat_soon()  # tell the scheduler at once that this slot holds the job
            generated = asyncio.Event()
            run = asyncio.create_task(
                self._run(event, generated, committing, trace), name=f"job-{event.job_id}"
            )
            await asyncio.sleep(0)  # the run takes the GPU side (runner.current) before anything else
            self._apply_preempt()
            self.runs.add(run)
            run.add_done_callback(self.runs.discard)
            # The slot is free for the next job once this one's frames exist (or it ended); storing
            # the video goes on meanwhile, up to `max_finishing` jobs at once.
            waiting = asyncio.create_task(generated.wait())
            await asyncio.wait({run, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            await committing  # a failed commit ends the process, the run having stopped silently
        finally:
            self.claimed = None
        self.beat_soon()  # the slot is free: the scheduler may send the next job
        while len(self.runs) > self.settings.max_finishing:
            await asyncio.wait(set(self.runs), return_when=asyncio.FIRST_COMPLETED)

    async def _run(
        self,
        event: JobDispatched,
        generated: asyncio.Event,
        committing: asyncio.Future[None],
        trace: Context | None = None,
    ) -> str:
        attributes: dict[str, str | int] = {
            "reelstream.job_id": str(event.job_id),
            "reelstream.attempt": event.attempt,
            "reelstream.slot": event.slot,
            "reelstream.model": event.request.model,
        }
        # The task's own context: its log lines name the job, its spans are the attempt's.
        logs.bind(job_id=event.job_id, attempt=event.attempt, slot=event.slot)
        with tracing.span(
            "worker", "worker.attempt", parent=trace, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            try:
                outcome = await self.runner.run(event, on_generated=generated.set, admission=committing)
            except Exception:
                log.exception("job=%s attempt=%d: the run crashed", event.job_id, event.attempt)
                raise
            finally:
                generated.set()
            span.set_attribute("reelstream.outcome", outcome)
            log.info("job=%s attempt=%d %s", event.job_id, event.attempt, outcome)
        return outcome


async def _unless_stopped(step: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await `step` unless `stop` comes first (a shutdown while Kafka is unreachable); True when done."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()
    return True
