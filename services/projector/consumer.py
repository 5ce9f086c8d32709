"""The projector's Kafka side: manual assignment of every partition of both topics, positions taken from
`consumer_offsets`, and one Postgres transaction per `getmany` batch.

No consumer group: the offsets live in Postgres with the rows they produced (committing them to Kafka as
well would be a second store that can disagree). Poison records go to the DLQ before the transaction that
moves past them commits, so none is lost: those that are not valid events at once, those that Postgres
refuses (a NUL in a prompt) once a split of their batch has found them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from schemas.envelope import MalformedMessage, decode_event
from schemas.events import EventType, JobEvent
from services.common import consumer as common
from services.common import tracing
from services.common.consumer import Batch, Clients, fetch, run_assigned, seek_to_stored
from services.common.kafka import dead_letter, missed_deadline
from services.common.metrics import observe_lag
from services.common.runtime import collector_paused
from services.projector.errors import RecordRefused
from services.projector.settings import ProjectorSettings
from services.projector.store import BatchResult, Incoming, Store, unfit

log = logging.getLogger(__name__)

EVENTS_STORED = Counter(
    "reelstream_projector_events_stored_total", "Job events written to job_events.", ["applied"]
)
DEAD_LETTERED = Counter(
    "reelstream_projector_dead_lettered_total",
    "Records that were not valid events or that the read model refused, by topic.",
    ["topic"],
)
BATCH_SECONDS = Histogram("reelstream_projector_batch_seconds", "Time to apply one consumed batch.")
LAG = Gauge("reelstream_projector_lag_records", "Records between the position and the last known end.")
STALLED = Gauge(
    "reelstream_projector_stalled",
    "1 while the live loop has not got through a poll-and-apply for longer than stall_seconds.",
)

# A consumed record as the store gets it, with the record itself for the DLQ.
Pending = tuple[Incoming, ConsumerRecord[Any, Any]]


def decode(msg: ConsumerRecord[Any, Any], settings: ProjectorSettings) -> JobEvent | str:
    """The event in `msg`, or why it belongs on the DLQ.

    A job.requested that the broker appended after its `accept_by` is not a job (the api answered 503 for
    it): it goes to the DLQ too, so no row is ever created for it, live or in a replay.
    """
    try:
        event = decode_event(msg.value)
    except MalformedMessage as e:
        return str(e)
    is_request = event.type is EventType.REQUESTED
    if msg.topic == settings.requested_topic and not is_request:
        return f"{event.type.value} does not belong on {msg.topic}: only job.requested does"
    if msg.topic == settings.events_topic and is_request:
        # Its seq would collide with the request's seq 0; the api publishes requests to jobs.requested.
        return f"job.requested does not belong on {msg.topic}: it goes to {settings.requested_topic}"
    return unfit(event) or missed_deadline(event, msg) or event


@asynccontextmanager
async def open_clients(settings: ProjectorSettings, *, dead_letters: bool) -> AsyncIterator[Clients]:
    """Started Kafka clients, stopped on exit; the producer (for the DLQ) only when `dead_letters`."""
    client_id = f"{settings.consumer_name}-{settings.service_name}"
    async with common.open_clients(settings, client_id, dead_letters=dead_letters) as clients:
        yield clients


class Progress:
    """When the live loop last got through an iteration: it is stalled once that is `limit` seconds ago.

    Judged when asked (a metrics scrape), so a transaction that hangs shows as well as one that keeps
    failing; an idle loop still gets through an empty poll every `poll_timeout_ms`.
    """

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._last = clock()

    def mark(self) -> None:
        self._last = self._clock()

    def stalled(self) -> bool:
        return self._clock() - self._last > self._limit


_FREQUENT = frozenset(f"io.reelstream.{t}".encode() for t in (EventType.PROGRESS, EventType.PREVIEW))


def _awaited(msg: ConsumerRecord[Any, Any], events_topic: str) -> bool:
    """Whether someone waits for this record's projection: every job event but the frequent ones (by
    the `ce_type` header, so nothing is decoded twice). Job requests are not: a burst of submits is what
    batching is for, and a read of a new job waits for its row anyway."""
    if msg.topic != events_topic:
        return False
    kind = next((value for key, value in msg.headers or () if key == "ce_type"), None)
    return kind not in _FREQUENT


class Projection:
    """Consumes both topics into one `Store`: the live projector, or a replay bounded by end offsets."""

    def __init__(
        self, settings: ProjectorSettings, store: Store, clients: Clients, *, notify: bool = True
    ) -> None:
        self.settings = settings
        self.store = store
        self._clients = clients
        self._notify = notify
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.progress = Progress(settings.stall_seconds)
        self._gathered: Batch = {}  # fetched while the last batch's interval ran, applied next

    @property
    def topics(self) -> tuple[str, str]:
        return (self.settings.requested_topic, self.settings.events_topic)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._clients.consumer

    async def assign(self) -> bool:
        """Assign every partition of both topics; True when the assignment changed."""
        found = await common.discover(self._clients.admin, self.topics)
        if found == self.assigned:
            return False
        self._clients.consumer.assign(found)
        self.assigned = found
        await self.seek_to_stored()
        log.info("assigned partitions=%s", ",".join(f"{tp.topic}:{tp.partition}" for tp in found))
        return True

    async def seek_to_stored(self) -> None:
        """Put every partition at its next offset in `consumer_offsets`, or at the beginning."""
        stored = await self.store.load_offsets(self.settings.consumer_name)
        consumer = self._clients.consumer
        await seek_to_stored(consumer, self.assigned, stored)
        self._gathered = {}  # fetched before the seek: read again from the stored offsets
        self.positions = {tp: await consumer.position(tp) for tp in self.assigned}

    async def poll(self) -> Batch:
        """One `getmany`; broker trouble becomes `BrokerUnavailable`."""
        return await fetch(
            self._clients.consumer, self.settings.poll_timeout_ms, self.settings.batch_max_records
        )

    async def process(self, batch: Batch) -> BatchResult:
        """Dead-letter the poison records, then apply the batch and its offsets in one transaction.

        The cyclic collector is paused meanwhile: the batch's records, events and rows all die with it."""
        with collector_paused():
            return await self._process(batch)

    async def _process(self, batch: Batch) -> BatchResult:
        started = time.perf_counter()
        began = time.time_ns()
        pending: list[Pending] = []
        for tp, messages in batch.items():
            for msg in messages:
                decoded = decode(msg, self.settings)
                if isinstance(decoded, str):
                    await self._park(msg, decoded)
                    pending.append((Incoming(msg.topic, msg.partition, msg.offset, None), msg))
                else:
                    pending.append((Incoming(msg.topic, msg.partition, msg.offset, decoded), msg))
            if messages:
                self.positions[tp] = messages[-1].offset + 1
        result = await self._apply(pending)
        self._observe(result, time.perf_counter() - started)
        if self._clients.producer is not None:  # the live projector; a replay's spans would only repeat
            tracing.consumed_batch("projector", "apply", (msg for _, msg in pending), began)
        return result

    async def _apply(self, pending: Sequence[Pending]) -> BatchResult:
        """Apply `pending` in one transaction. When Postgres refuses it, apply each half on its own, down
        to the single records it refuses, which go to the DLQ while their offsets move on with the rest.

        The halves keep the batch's order and every half commits before the next starts, so each
        partition's offsets only ever move past records that were applied or parked.
        """
        batch = [incoming for incoming, _ in pending]
        try:
            return await self.store.apply_batch(self.settings.consumer_name, batch, notify=self._notify)
        except RecordRefused as e:
            if len(pending) > 1:
                log.warning("read model refused a batch records=%d error=%s; splitting it", len(pending), e)
                middle = len(pending) // 2
                return await self._apply(pending[:middle]) + await self._apply(pending[middle:])
            ((incoming, msg),) = pending
            if incoming.event is None:
                raise  # only offsets were written: the fault is not in the record
            await self._park(msg, str(e))
            return await self._apply([(replace(incoming, event=None), msg)])

    async def _park(self, msg: ConsumerRecord[Any, Any], reason: str) -> None:
        DEAD_LETTERED.labels(topic=msg.topic).inc()
        producer = self._clients.producer
        if producer is None:
            # A replay re-reads records the live projector dead-lettered already; parking them again
            # would only duplicate the DLQ.
            log.warning("skipping invalid record topic=%s offset=%s reason=%s", msg.topic, msg.offset, reason)
            return
        await dead_letter(producer, msg, reason, self.settings.consumer_name)

    def _observe(self, result: BatchResult, seconds: float) -> None:
        BATCH_SECONDS.observe(seconds)
        EVENTS_STORED.labels(applied="true").inc(result.applied)
        EVENTS_STORED.labels(applied="false").inc(result.stored - result.applied)
        consumer = self._clients.consumer
        ends = [(consumer.highwater(tp), self.positions.get(tp, 0)) for tp in self.assigned]
        LAG.set(sum(end - position for end, position in ends if end is not None))
        observe_lag(
            self.settings.consumer_name, consumer, ((tp, self.positions.get(tp, 0)) for tp in self.assigned)
        )

    async def _gather(self, stop: asyncio.Event, taken: float) -> Batch:
        """The records that arrive until `batch_interval_ms` after the last batch was taken, or until one
        a watcher waits for arrives (a job's start or end: anything but progress and previews), or a full
        batch. So batches grow with the load, while a job's end reaches its watchers at once."""
        gathered: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        count = 0
        while not stop.is_set() and count < self.settings.batch_max_records:
            rest = self.settings.batch_interval_ms / 1000 - (time.monotonic() - taken)
            if rest <= 0:
                break
            fetched = await fetch(
                self._clients.consumer, max(1, int(rest * 1000)), self.settings.batch_max_records - count
            )
            for tp, messages in fetched.items():
                gathered.setdefault(tp, []).extend(messages)
                count += len(messages)
            events = self.settings.events_topic
            if any(_awaited(msg, events) for messages in fetched.values() for msg in messages):
                break
        return gathered

    async def run(self, stop: asyncio.Event) -> None:
        """The live loop: until `stop`, poll, apply, and pick up new partitions now and then."""

        async def step() -> None:
            batch, self._gathered = self._gathered or await self.poll(), {}
            if batch:
                taken = time.monotonic()
                await self.process(batch)
                if sum(map(len, batch.values())) < self.settings.batch_max_records:
                    self._gathered = await self._gather(stop, taken)

        def restart() -> None:
            self.assigned, self._gathered = [], {}

        self.progress.mark()
        STALLED.set_function(lambda: float(self.progress.stalled()))
        await run_assigned(
            stop,
            self.settings,
            name="projection",
            assign=self.assign,
            assigned=lambda: bool(self.assigned),
            step=step,
            restart=restart,
            alive=self.progress.mark,
        )
