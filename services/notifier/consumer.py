"""The notifier's Kafka side: every partition of `jobs.requested` and `jobs.events` by manual assignment,
positions kept in `consumer_offsets` (consumer `reelstream-notifier`) and written in the same transaction
as the deliveries they queue, so a crash anywhere redoes a batch without losing or doubling a delivery.

Delivery settings: `make_consumer` (auto-commit off, read_committed, explicit timeouts) with no group; the
offsets in Postgres are the only ones. The two topics are read independently, so a job's events may come
before its `job.requested` (catching up after downtime): they are parked until it comes.

A record that is not a valid event is skipped with a warning: the projector reads the same topics and puts
it on the DLQ already, once. A `job.requested` that missed its submit deadline is not a job (the projector
dead-letters it) and is skipped too; events of its job stay parked until a retried submit of the same
job comes, or until they are purged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Counter, Gauge

from schemas.envelope import MalformedMessage, decode_event
from schemas.events import EventType, JobEvent
from services.common import consumer as common
from services.common import tracing
from services.common.consumer import fetch, run_assigned, seek_to_stored, wait_or_stop
from services.common.kafka import missed_deadline
from services.common.metrics import observe_lag
from services.common.webhooks import TENANT_CHARS
from services.notifier.settings import NotifierSettings
from services.notifier.store import Incoming, Store

log = logging.getLogger(__name__)

RECORDS = Counter(
    "reelstream_notifier_records_total", "Records the notifier consumed, by what became of them.", ["result"]
)
QUEUED = Counter("reelstream_notifier_deliveries_queued_total", "Deliveries the consumer queued.")
LAG = Gauge("reelstream_notifier_lag_records", "Records between the consumer's position and the known end.")


def unfit(event: JobEvent) -> str | None:
    """Why `event` does not fit the notifier's tables (it would fail its batch on every retry), or None."""
    limit = TENANT_CHARS
    if event.tenant is not None and len(event.tenant) > limit:
        return f"tenant is longer than the {limit} characters the notifier stores"
    return None


def decode(msg: ConsumerRecord[Any, Any], settings: NotifierSettings) -> JobEvent | str:
    """The event in `msg`, or why it is skipped."""
    try:
        event = decode_event(msg.value)
    except MalformedMessage as e:
        return str(e)
    is_request = event.type is EventType.REQUESTED
    if (msg.topic == settings.requested_topic) != is_request:
        return f"{event.type.value} does not belong on {msg.topic}"
    # Values the tables cannot hold would fail every retry of the batch: skipped like the read model does.
    return unfit(event) or missed_deadline(event, msg) or event


@asynccontextmanager
async def open_clients(
    settings: NotifierSettings,
) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaAdminClient]]:
    """A started consumer and admin client, stopped on exit."""
    client_id = f"{settings.consumer_name}-{settings.service_name}"
    async with common.open_clients(settings, client_id) as clients:
        yield clients.consumer, clients.admin


class Subscriptions:
    """The consumer loop: poll, apply the batch with its offsets, wake the sender when it queued work."""

    def __init__(
        self,
        settings: NotifierSettings,
        store: Store,
        consumer: AIOKafkaConsumer,
        admin: AIOKafkaAdminClient,
        queued: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self._consumer = consumer
        self._admin = admin
        self._queued = queued
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.ready = asyncio.Event()

    async def assign(self) -> None:
        """Assign every partition of both topics, at the stored offsets (or the beginning)."""
        found = await common.discover(
            self._admin, (self.settings.requested_topic, self.settings.events_topic)
        )
        if found == self.assigned:
            return
        self._consumer.assign(found)
        self.assigned = found
        stored = await self.store.load_offsets(self.settings.consumer_name)
        await seek_to_stored(self._consumer, found, stored)
        log.info("assigned partitions=%s", ",".join(f"{tp.topic}:{tp.partition}" for tp in found))
        self.ready.set()

    async def poll_once(self) -> int:
        """One fetch and its transaction; returns the records consumed."""
        batch = await fetch(self._consumer, self.settings.poll_timeout_ms, self.settings.batch_max_records)
        records = [msg for messages in batch.values() for msg in messages]
        if not records:
            return 0
        began = time.time_ns()
        for tp, messages in batch.items():
            if messages:
                self.positions[tp] = messages[-1].offset + 1
        incoming = []
        for msg in records:
            decoded = decode(msg, self.settings)
            if isinstance(decoded, str):
                RECORDS.labels(result="skipped").inc()
                log.warning("skipping record topic=%s offset=%s reason=%s", msg.topic, msg.offset, decoded)
                decoded_event = None
            else:
                RECORDS.labels(result="read").inc()
                decoded_event = decoded
            incoming.append(Incoming(msg.topic, msg.partition, msg.offset, decoded_event))
        max_age = timedelta(seconds=self.settings.max_event_age_seconds)
        queued, too_old = await self.store.apply_batch(
            self.settings.consumer_name, incoming, datetime.now(UTC), max_age
        )
        if too_old:
            RECORDS.labels(result="too_old").inc(too_old)
        if queued:
            QUEUED.inc(queued)
            self._queued.set()
        self._observe_lag()
        tracing.consumed_batch("notifier", "queue", records, began)
        return len(records)

    def _observe_lag(self) -> None:
        ends = [(self._consumer.highwater(tp), self.positions.get(tp)) for tp in self.assigned]
        LAG.set(sum(max(end - at, 0) for end, at in ends if end is not None and at is not None))
        observe_lag(self.settings.consumer_name, self._consumer, self.positions.items())

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: poll and apply, picking up new partitions now and then; pauses on trouble."""

        def restart() -> None:
            self.assigned = []

        async def step() -> None:
            # While records keep coming, one transaction per `batch_interval_ms` at most: a transaction
            # costs about ten records, and a webhook need not leave within milliseconds.
            taken = time.monotonic()
            records = await self.poll_once()
            rest = self.settings.batch_interval_ms / 1000 - (time.monotonic() - taken)
            if 0 < records < self.settings.batch_max_records and rest > 0:
                await wait_or_stop(stop, rest)

        await run_assigned(
            stop,
            self.settings,
            name="notifier consumer",
            assign=self.assign,
            assigned=lambda: bool(self.assigned),
            step=step,
            restart=restart,
        )
