"""The scheduler process: rebuild state (from the latest snapshot and the records after it, or from the
topics alone), then fold records, carry out decisions and write snapshots."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge

from schemas.envelope import MalformedMessage, decode_event, decode_heartbeat
from schemas.events import (
    TERMINAL_TYPES,
    JobCancelled,
    JobDispatched,
    JobError,
    JobEvent,
    JobFailed,
    JobPreemptRequested,
    JobRetrying,
)
from services.common import logging as logs
from services.common import tracing
from services.common.errors import RetryableError
from services.common.kafka import (
    Producer,
    dead_letter,
    make_consumer,
    make_producer,
    missed_deadline,
    partitions_of,
    publish_event,
)
from services.common.metrics import observe_lag
from services.common.runtime import retry, run_until_signalled, serve_metrics
from services.scheduler.metrics import LAST_REBUILD_SECONDS, REBUILD_SECONDS, QueueGauges
from services.scheduler.plan import is_alive, plan
from services.scheduler.queue_publish import QueueViewWriter
from services.scheduler.settings import SchedulerSettings
from services.scheduler.snapshot import SnapshotError, StateSnapshot, capture, restore
from services.scheduler.state import Decision, Dispatch, Finish, Preempt, Retry, SchedulerState, Stage
from services.scheduler.store import SnapshotWriter, load_latest
from services.scheduler.topics import SchedulerTopics

log = logging.getLogger("reelstream.scheduler")
PRODUCER = "scheduler"
DECISIONS = Counter("reelstream_scheduler_decisions_total", "Decisions carried out", ["kind"])
WAITING = Gauge("reelstream_scheduler_waiting_jobs", "Jobs waiting for a slot", ["lane"])
SLOTS_ALIVE = Gauge("reelstream_scheduler_slots_alive", "Slots with a recent heartbeat")
SLOTS_BUSY = Gauge("reelstream_scheduler_slots_busy", "Slots holding a job")


SchedulerEvent = JobDispatched | JobRetrying | JobCancelled | JobFailed | JobPreemptRequested
E = TypeVar("E", JobDispatched, JobRetrying, JobCancelled, JobFailed, JobPreemptRequested)


def decision_event(
    kind: type[E], job_id: uuid.UUID, attempt: int, *, id_attempt: int | None = None, **fields: Any
) -> E:
    """An event the scheduler decided. Its id is derived from the job, the type and the attempt, so
    re-publishing it after a crash is recognised downstream as the same event."""
    name = str(kind.model_fields["type"].default).removeprefix("job.")
    event_id = uuid.uuid5(job_id, f"{name}/{attempt if id_attempt is None else id_attempt}")
    return kind(event_id=event_id, job_id=job_id, producer=PRODUCER, attempt=attempt, **fields)


def _seconds_or_none(seconds: float) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds > 0 else None


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        producer: Producer,
        consumer: AIOKafkaConsumer,
        topics: SchedulerTopics | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics or SchedulerTopics()
        self.producer = producer
        self.consumer = consumer
        self.live = False
        self.state = SchedulerState(
            slots_total=settings.gpu_slots,
            dead_after=timedelta(seconds=settings.dead_after_seconds),
            lost_grace=timedelta(seconds=settings.lost_grace_seconds),
            max_attempts=settings.max_attempts,
            reserved_interactive=settings.reserved_interactive_slots,
            lookahead=timedelta(seconds=settings.lookahead_seconds),
            balance_gain=(
                timedelta(seconds=settings.balance_min_gain_seconds) if settings.balance_batch else None
            ),
            max_preemptions=settings.max_preemptions,
            queue_ttl=_seconds_or_none(settings.queue_ttl_seconds),
            unserviceable_after=_seconds_or_none(settings.unserviceable_after_seconds),
            epoch=datetime.now(UTC),
        )
        # The trace context of each open job (its job.requested record's), so every decision about it
        # belongs to the job's trace. Not in the snapshot: a job restored from one whose request came
        # before it is traced from the next record of it that is read, else from its decision on.
        self.traces: dict[uuid.UUID, dict[str, str]] = {}
        self.queue_gauges = QueueGauges()
        self.positions: dict[TopicPartition, int] = {}  # of the records folded, for the lag metric

    def _decided(self, kind: type[E], job_id: uuid.UUID, attempt: int, **fields: Any) -> E:
        """A decision's event, carrying its job's tenant."""
        job = self.state.jobs.get(job_id)
        return decision_event(kind, job_id, attempt, tenant=job.tenant if job else None, **fields)

    async def apply(self, msg: ConsumerRecord[bytes, bytes]) -> None:
        """Fold one record into the state. Poison records are skipped (their owner dead-letters them), and
        so is a job.requested the broker appended after its `accept_by`: it is not a job (the projector
        dead-letters it)."""
        topics = self.topics
        try:
            if msg.topic == topics.heartbeat:
                self.state.on_heartbeat(decode_heartbeat(msg.value))
                return
            event = decode_event(msg.value)
            if msg.topic == topics.requested and (late := missed_deadline(event, msg)) is not None:
                log.info("skipped job=%s offset=%s: %s", event.job_id, msg.offset, late)
                return
            self._trace(event, msg)
            if msg.topic == topics.dispatch:
                if isinstance(event, JobDispatched):
                    self.state.on_dispatch(event, msg.offset)
                return
            self.state.on_event(event)
        except MalformedMessage as e:
            if self.live and msg.topic in (topics.control, topics.heartbeat):
                await dead_letter(self.producer, msg, str(e), "reelstream-scheduler")
            else:
                log.debug("skipped malformed record topic=%s offset=%s", msg.topic, msg.offset)

    def _trace(self, event: JobEvent, msg: ConsumerRecord[bytes, bytes]) -> None:
        """Keep the trace context of an open job: its request's, else the first one a record of it has."""
        if event.type in TERMINAL_TYPES:
            self.traces.pop(event.job_id, None)
            return
        if msg.topic != self.topics.requested and event.job_id in self.traces:
            return
        if event.job_id in self.state.done:
            return
        if found := tracing.carrier(getattr(msg, "headers", None)):  # fakes in tests may have none
            self.traces[event.job_id] = found

    async def execute(self, decision: Decision) -> None:
        """Carry out `decision` in a span of its job's trace (the records it publishes carry it)."""
        job = self.state.jobs.get(decision.job_id)
        attributes: dict[str, str | int | float] = {"reelstream.job_id": str(decision.job_id)}
        if job is not None:
            attributes["reelstream.tenant"] = job.tenant
            attributes["reelstream.attempt"] = job.attempt
            if job.request is not None:
                attributes["reelstream.lane"] = job.request.priority.value
        name = f"scheduler.{type(decision).__name__.lower()}"
        parent = self.traces.get(decision.job_id) or {}
        with (
            logs.bound(job_id=decision.job_id),
            tracing.span("scheduler", name, parent=parent, kind=SpanKind.PRODUCER, attributes=attributes),
        ):
            await self._execute(decision)

    async def _execute(self, decision: Decision) -> None:
        if isinstance(decision, Dispatch):
            await self._dispatch(decision)
        elif isinstance(decision, Retry):
            job = self.state.jobs[decision.job_id]
            retrying = self._decided(
                JobRetrying,
                decision.job_id,
                job.attempt,
                id_attempt=decision.next_attempt,
                reason=decision.reason,
                next_attempt=decision.next_attempt,
            )
            await self._publish(self.topics.events, retrying)
            # And to the slots: one that was only cut off (not dead) stops the stale attempt.
            await self._publish(self.topics.control, retrying)
            self.state.on_event(retrying)
            log.warning(
                "retrying job=%s next_attempt=%d reason=%s",
                decision.job_id,
                decision.next_attempt,
                decision.reason,
            )
        elif isinstance(decision, Preempt):
            asked = self._decided(
                JobPreemptRequested,
                decision.job_id,
                decision.attempt,
                at_step=decision.at_step,
                reason=decision.reason,
            )
            await self._publish(self.topics.control, asked)
            self.state.on_event(asked)
            log.info("asked job=%s attempt=%d back at step %d: %s", *dataclasses.astuple(decision))
        else:
            await self._finish(decision)
        DECISIONS.labels(type(decision).__name__.lower()).inc()

    async def _dispatch(self, d: Dispatch) -> None:
        job = self.state.jobs.get(d.job_id)
        trace = self.traces.get(d.job_id)
        if job is not None and job.created_at is not None and trace:
            # The wait in the queue, as a span of the job's trace (from its request, or its preemption).
            since = job.queued_at or job.created_at
            waited = tracing.start_span(
                "scheduler",
                "scheduler.queued",
                parent=trace,
                attributes={"reelstream.slot": d.slot},
                start_time=int(since.timestamp() * 1e9),
            )
            waited.end()
        tracing.annotate({"reelstream.attempt": d.attempt, "reelstream.slot": d.slot})
        event = self._decided(
            JobDispatched,
            d.job_id,
            d.attempt,
            slot=d.slot,
            request=d.request,
            resume_checkpoint=d.resume_checkpoint,
        )
        # Announce first, then hand the record to the slot: consumers of jobs.events then never see a
        # job.started before its job.dispatched. A crash in between is repaired by `repair_records`.
        await self._publish(self.topics.events, event)
        self.state.on_event(event)
        meta = await self._publish(self.topics.dispatch, event, partition=d.slot)
        self.state.on_dispatch(event, meta.offset)
        follows = f" after job={d.after}" if d.after else ""
        log.info("dispatched job=%s slot=%d attempt=%d%s", d.job_id, d.slot, d.attempt, follows)

    async def _finish(self, d: Finish) -> None:
        if d.cancelled:
            ended: JobCancelled | JobFailed = self._decided(
                JobCancelled, d.job_id, d.attempt, reason=d.reason
            )
        else:
            error = JobError(code=d.code, message=d.reason, retryable=False)
            ended = self._decided(JobFailed, d.job_id, d.attempt, error=error)
        await self._publish(self.topics.events, ended)
        self.state.on_event(ended)
        log.info("finished job=%s as %s: %s", d.job_id, ended.type, d.reason)

    async def _publish(
        self,
        topic: str,
        event: SchedulerEvent,
        partition: int | None = None,
    ) -> Any:
        return await retry(
            f"publish {event.type}", lambda: publish_event(self.producer, topic, event, partition)
        )

    async def repair_records(self) -> None:
        """Assignments announced on jobs.events whose record never reached jobs.dispatch get it now."""
        for job in list(self.state.jobs.values()):
            if job.stage is Stage.ASSIGNED and job.dispatch_offset is None and job.dispatch is not None:
                meta = await self._publish(self.topics.dispatch, job.dispatch, partition=job.dispatch.slot)
                self.state.on_dispatch(job.dispatch, meta.offset)
                log.warning("re-sent the dispatch record of job=%s attempt=%d", job.job_id, job.attempt)

    def observe(self) -> None:
        now = datetime.now(UTC)
        for lane, keys in self.state.lanes.items():
            WAITING.labels(lane.value).set(len(keys))
        self.queue_gauges.observe(self.state, now)
        observe_lag("reelstream-scheduler", self.consumer, self.positions.items())
        SLOTS_ALIVE.set(sum(1 for s in self.state.slots.values() if is_alive(self.state, s, now)))
        SLOTS_BUSY.set(len(self.state.assignments))

    async def snapshot(self) -> StateSnapshot:
        """The state with the input positions it reflects. Taken between two rounds of the loop, where
        every record before those positions is folded and none after them."""
        positions = {
            (tp.topic, tp.partition): await self.consumer.position(tp) for tp in self.consumer.assignment()
        }
        return capture(self.state, positions, datetime.now(UTC))


async def assign_all(scheduler: Scheduler) -> list[TopicPartition]:
    """Read every partition of our topics ourselves: the scheduler is one active instance, not a group."""
    partitions = await partitions_of(scheduler.settings, scheduler.topics.inputs)
    scheduler.consumer.assign(partitions)
    return partitions


async def snapshot_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], snapshot: StateSnapshot
) -> dict[TopicPartition, int]:
    """Where to resume each partition. A partition the snapshot does not name was added after it and is
    read from its beginning. An offset outside its partition's log means the snapshot is not of these
    topics as they are (recreated, or records it never saw already deleted by retention)."""
    known = snapshot.positions()
    ours = {(tp.topic, tp.partition) for tp in partitions}
    if strangers := sorted(set(known) - ours):
        raise SnapshotError(f"the snapshot names partitions we do not read: {strangers[:3]}")
    begin = await consumer.beginning_offsets(partitions)
    end = await consumer.end_offsets(partitions)
    offsets: dict[TopicPartition, int] = {}
    for tp in partitions:
        offset = known.get((tp.topic, tp.partition), begin[tp])
        if not begin[tp] <= offset <= end[tp]:
            raise SnapshotError(
                f"snapshot offset {offset} of {tp.topic}/{tp.partition} is outside [{begin[tp]}, {end[tp]}]"
            )
        offsets[tp] = offset
    return offsets


async def resume(
    scheduler: Scheduler, partitions: list[TopicPartition], snapshot: StateSnapshot | None
) -> bool:
    """Load the snapshot and seek every partition to the first record it does not reflect, or, without
    a usable snapshot, seek them to their beginning. True when the snapshot is used."""
    consumer = scheduler.consumer
    if snapshot is not None:
        try:
            offsets = await snapshot_offsets(consumer, partitions, snapshot)
        except SnapshotError as e:
            log.error("ignoring the latest snapshot, replaying in full: %s", e)
        else:
            restore(scheduler.state, snapshot)
            for tp, offset in offsets.items():
                consumer.seek(tp, offset)
            log.info("resuming from the snapshot of %s", snapshot.taken_at.isoformat())
            return True
    await consumer.seek_to_beginning(*partitions)
    return False


async def rebuild(scheduler: Scheduler, partitions: list[TopicPartition], stop: asyncio.Event) -> None:
    """Fold every record from the current positions up to the end offsets seen now; no decision is
    made before that."""
    consumer = scheduler.consumer
    end = await consumer.end_offsets(partitions)
    behind = {tp for tp, offset in end.items() if offset > await consumer.position(tp)}
    folded = 0
    while behind and not stop.is_set():
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        for records in batch.values():
            for msg in records:
                await scheduler.apply(msg)
            folded += len(records)
        for tp in list(behind):
            if await consumer.position(tp) >= end[tp]:
                behind.discard(tp)
    log.info("rebuilt state from %d records: %d jobs open", folded, len(scheduler.state.jobs))


async def prepare(scheduler: Scheduler, stop: asyncio.Event) -> bool:
    """Everything before the first decision: the latest snapshot (unless restoring is off), then the
    records after it. True when a snapshot was used."""
    started = time.monotonic()
    partitions = await assign_all(scheduler)
    snapshot = None
    if scheduler.settings.snapshot_restore:
        snapshot = await load_latest(scheduler.settings, scheduler.topics.snapshot)
    used = await resume(scheduler, partitions, snapshot)
    await rebuild(scheduler, partitions, stop)
    seconds = time.monotonic() - started
    REBUILD_SECONDS.observe(seconds)
    LAST_REBUILD_SECONDS.set(seconds)
    return used


async def serve(
    settings: SchedulerSettings, stop: asyncio.Event, topics: SchedulerTopics | None = None
) -> None:
    producer = make_producer(settings, "reelstream-scheduler")
    consumer = make_consumer(settings, group_id=None, client_id="reelstream-scheduler")
    scheduler = Scheduler(settings, producer, consumer, topics)
    snapshots = SnapshotWriter(settings, scheduler.topics.snapshot)
    views = QueueViewWriter(settings, scheduler.topics.queue)
    await producer.start()
    await consumer.start()
    await snapshots.start()
    await views.start()
    try:
        await prepare(scheduler, stop)
        if stop.is_set():
            return  # an unfinished rebuild is no state to snapshot
        scheduler.live = True
        await loop(scheduler, stop, snapshots, views)
        await snapshots.finish(await scheduler.snapshot())
    finally:
        await views.stop()
        await snapshots.stop()
        await consumer.stop()
        await producer.stop()


async def loop(
    scheduler: Scheduler,
    stop: asyncio.Event,
    snapshots: SnapshotWriter | None = None,
    views: QueueViewWriter | None = None,
) -> None:
    """Fold what arrived, then plan and carry out decisions; at least every tick, so silences are noticed.
    What reads every job (expiries, balancing, repairs) runs once a tick, not once a fetch.
    Between two rounds, when one is due, hand a snapshot to its writer and offer the queue view to its."""
    tick_ms = int(scheduler.settings.tick_seconds * 1000)
    swept = float("-inf")  # when expiries, balancing and repairs last read the whole queue
    while not stop.is_set():
        batch = await scheduler.consumer.getmany(timeout_ms=tick_ms, max_records=2000)
        if batch:
            scheduler.state.on_input(datetime.now(UTC))
        for tp, records in batch.items():
            for msg in records:
                await scheduler.apply(msg)
            if records:
                scheduler.positions[tp] = records[-1].offset + 1
        try:
            sweep = time.monotonic() - swept >= scheduler.settings.tick_seconds
            if sweep:
                swept = time.monotonic()
            for decision in plan(scheduler.state, datetime.now(UTC), sweep=sweep):
                await scheduler.execute(decision)
            if sweep:
                await scheduler.repair_records()
        except RetryableError as e:
            log.error("could not carry out a decision, will plan again: %s", e)
            await asyncio.sleep(1)
        scheduler.observe()
        if snapshots is not None and snapshots.due():
            snapshots.submit(await scheduler.snapshot())
        if views is not None:
            views.offer(scheduler.state)


def run() -> None:
    settings = SchedulerSettings()
    logs.observe("scheduler", settings)
    serve_metrics(settings.metrics_port)
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    run()
