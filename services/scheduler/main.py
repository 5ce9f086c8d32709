"""The scheduler process: rebuild state from the topics, then fold records and carry out decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge

from schemas.envelope import MalformedMessage, decode_event, decode_heartbeat
from schemas.events import (
    JobCancelled,
    JobDispatched,
    JobError,
    JobFailed,
    JobPreemptRequested,
    JobRetrying,
)
from schemas.topics import JOBS_CONTROL, JOBS_DISPATCH, JOBS_EVENTS, JOBS_REQUESTED, WORKERS_HEARTBEAT
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
from services.common.logging import configure
from services.common.runtime import retry, run_until_signalled, serve_metrics
from services.scheduler.plan import is_alive, plan
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Decision, Dispatch, Finish, Preempt, Retry, SchedulerState, Stage

log = logging.getLogger("reelstream.scheduler")
TOPICS = (JOBS_REQUESTED, JOBS_EVENTS, JOBS_CONTROL, JOBS_DISPATCH, WORKERS_HEARTBEAT)
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
    def __init__(self, settings: SchedulerSettings, producer: Producer, consumer: AIOKafkaConsumer) -> None:
        self.settings = settings
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

    async def apply(self, msg: ConsumerRecord[bytes, bytes]) -> None:
        """Fold one record into the state. Poison records are skipped (their owner dead-letters them), and
        so is a job.requested the broker appended after its `accept_by`: it is not a job (the projector
        dead-letters it)."""
        try:
            if msg.topic == WORKERS_HEARTBEAT:
                self.state.on_heartbeat(decode_heartbeat(msg.value))
                return
            event = decode_event(msg.value)
            if msg.topic == JOBS_REQUESTED and (late := missed_deadline(event, msg)) is not None:
                log.info("skipped job=%s offset=%s: %s", event.job_id, msg.offset, late)
                return
            if msg.topic == JOBS_DISPATCH:
                if isinstance(event, JobDispatched):
                    self.state.on_dispatch(event, msg.offset)
                return
            self.state.on_event(event)
        except MalformedMessage as e:
            if self.live and msg.topic in (JOBS_CONTROL, WORKERS_HEARTBEAT):
                await dead_letter(self.producer, msg, str(e), "reelstream-scheduler")
            else:
                log.debug("skipped malformed record topic=%s offset=%s", msg.topic, msg.offset)

    async def execute(self, decision: Decision) -> None:
        if isinstance(decision, Dispatch):
            await self._dispatch(decision)
        elif isinstance(decision, Retry):
            job = self.state.jobs[decision.job_id]
            retrying = decision_event(
                JobRetrying,
                decision.job_id,
                job.attempt,
                id_attempt=decision.next_attempt,
                reason=decision.reason,
                next_attempt=decision.next_attempt,
            )
            await self._publish(JOBS_EVENTS, retrying)
            # And to the slots: one that was only cut off (not dead) stops the stale attempt.
            await self._publish(JOBS_CONTROL, retrying)
            self.state.on_event(retrying)
            log.warning(
                "retrying job=%s next_attempt=%d reason=%s",
                decision.job_id,
                decision.next_attempt,
                decision.reason,
            )
        elif isinstance(decision, Preempt):
            asked = decision_event(
                JobPreemptRequested,
                decision.job_id,
                decision.attempt,
                at_step=decision.at_step,
                reason=decision.reason,
            )
            await self._publish(JOBS_CONTROL, asked)
            self.state.on_event(asked)
            log.info("asked job=%s attempt=%d back at step %d: %s", *dataclasses.astuple(decision))
        else:
            await self._finish(decision)
        DECISIONS.labels(type(decision).__name__.lower()).inc()

    async def _dispatch(self, d: Dispatch) -> None:
        event = decision_event(
            JobDispatched,
            d.job_id,
            d.attempt,
            slot=d.slot,
            request=d.request,
            resume_checkpoint=d.resume_checkpoint,
        )
        # Announce first, then hand the record to the slot: consumers of jobs.events then never see a
        # job.started before its job.dispatched. A crash in between is repaired by `repair_records`.
        await self._publish(JOBS_EVENTS, event)
        self.state.on_event(event)
        meta = await self._publish(JOBS_DISPATCH, event, partition=d.slot)
        self.state.on_dispatch(event, meta.offset)
        follows = f" after job={d.after}" if d.after else ""
        log.info("dispatched job=%s slot=%d attempt=%d%s", d.job_id, d.slot, d.attempt, follows)

    async def _finish(self, d: Finish) -> None:
        if d.cancelled:
            ended: JobCancelled | JobFailed = decision_event(
                JobCancelled, d.job_id, d.attempt, reason=d.reason
            )
        else:
            error = JobError(code=d.code, message=d.reason, retryable=False)
            ended = decision_event(JobFailed, d.job_id, d.attempt, error=error)
        await self._publish(JOBS_EVENTS, ended)
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
                meta = await self._publish(JOBS_DISPATCH, job.dispatch, partition=job.dispatch.slot)
                self.state.on_dispatch(job.dispatch, meta.offset)
                log.warning("re-sent the dispatch record of job=%s attempt=%d", job.job_id, job.attempt)

    def observe(self) -> None:
        now = datetime.now(UTC)
        for lane, keys in self.state.lanes.items():
            WAITING.labels(lane.value).set(len(keys))
        SLOTS_ALIVE.set(sum(1 for s in self.state.slots.values() if is_alive(self.state, s, now)))
        SLOTS_BUSY.set(len(self.state.assignments))


async def assign_all(settings: SchedulerSettings, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    """Read every partition of our topics ourselves: the scheduler is one active instance, not a group."""
    partitions = await partitions_of(settings, TOPICS)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return partitions


async def rebuild(scheduler: Scheduler, partitions: list[TopicPartition], stop: asyncio.Event) -> None:
    """Replay every topic up to the end offsets seen at start; no decision is made before that."""
    end = await scheduler.consumer.end_offsets(partitions)
    behind = {tp for tp, offset in end.items() if offset > 0}
    folded = 0
    while behind and not stop.is_set():
        batch = await scheduler.consumer.getmany(timeout_ms=500, max_records=5000)
        for records in batch.values():
            for msg in records:
                await scheduler.apply(msg)
            folded += len(records)
        for tp in list(behind):
            if await scheduler.consumer.position(tp) >= end[tp]:
                behind.discard(tp)
    log.info("rebuilt state from %d records: %d jobs open", folded, len(scheduler.state.jobs))


async def serve(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    producer = make_producer(settings, "reelstream-scheduler")
    consumer = make_consumer(settings, group_id=None, client_id="reelstream-scheduler")
    await producer.start()
    await consumer.start()
    try:
        scheduler = Scheduler(settings, producer, consumer)
        await rebuild(scheduler, await assign_all(settings, consumer), stop)
        scheduler.live = True
        await loop(scheduler, stop)
    finally:
        await consumer.stop()
        await producer.stop()


async def loop(scheduler: Scheduler, stop: asyncio.Event) -> None:
    """Fold what arrived, then plan and carry out decisions; at least every tick, so silences are noticed."""
    tick_ms = int(scheduler.settings.tick_seconds * 1000)
    while not stop.is_set():
        batch = await scheduler.consumer.getmany(timeout_ms=tick_ms, max_records=2000)
        if batch:
            scheduler.state.on_input(datetime.now(UTC))
        for records in batch.values():
            for msg in records:
                await scheduler.apply(msg)
        try:
            for decision in plan(scheduler.state, datetime.now(UTC)):
                await scheduler.execute(decision)
            await scheduler.repair_records()
        except RetryableError as e:
            log.error("could not carry out a decision, will plan again: %s", e)
            await asyncio.sleep(1)
        scheduler.observe()


def run() -> None:
    settings = SchedulerSettings()
    configure("scheduler", settings.log_level)
    serve_metrics(settings.metrics_port)
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    run()
