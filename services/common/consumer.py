"""Consuming by manual assignment with the offsets in Postgres: the plumbing the projector and the notifier
share (each keeps its own loop, decoding and transaction).

No consumer group: a consumer is assigned every partition of its topics (`discover`), placed at the
offsets its service stored beside the rows they produced (`seek_to_stored`), and fetches with `fetch`;
broker trouble becomes `BrokerUnavailable`, so the service's loop pauses and starts over from Postgres.
In the transaction that applies a batch, `unapplied` drops the records below the stored offsets (applied
already) and `advance_offsets` moves the offsets past the rest, in `consumer_offsets`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import BrokerUnavailable, RetryableError
from services.common.kafka import Producer, make_consumer, make_producer
from services.common.readmodel import Base, ConsumerOffset
from services.common.settings import CommonSettings, JobTopicsReaderSettings

log = logging.getLogger(__name__)

Batch = Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]

OFFSETS = Base.metadata.tables[ConsumerOffset.__tablename__]
_SELECT_OFFSETS = select(OFFSETS.c.topic, OFFSETS.c.partition, OFFSETS.c.next_offset).where(
    OFFSETS.c.consumer == bindparam("consumer")
)
_upsert = insert(OFFSETS)
_UPSERT_OFFSETS = _upsert.on_conflict_do_update(
    index_elements=["consumer", "topic", "partition"], set_={"next_offset": _upsert.excluded.next_offset}
)


class Positioned(Protocol):
    """A consumed record as a service's store gets it: where it stands in its partition."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


Record = TypeVar("Record", bound=Positioned)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, waking early when `stop` is set."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def run_assigned(
    stop: asyncio.Event,
    settings: JobTopicsReaderSettings,
    *,
    name: str,
    assign: Callable[[], Awaitable[object]],
    assigned: Callable[[], bool],
    step: Callable[[], Awaitable[object]],
    restart: Callable[[], None],
    alive: Callable[[], None] = lambda: None,
) -> None:
    """A service's consuming loop, until `stop`: `assign` (every `assignment_refresh_seconds`, to pick
    up new partitions), wait a poll timeout while nothing is `assigned`, else `step` (poll and apply one
    batch); `alive` after each round that got through. A `RetryableError` pauses the loop (0.2 s,
    doubling up to `retry_max_seconds`) and calls `restart`: the consumer moved past the failed batch,
    so the next round assigns again and seeks back to the offsets in Postgres."""
    backoff = 0.2
    next_refresh = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_refresh:
                await assign()
                next_refresh = time.monotonic() + settings.assignment_refresh_seconds
            if not assigned():
                await wait_or_stop(stop, settings.poll_timeout_ms / 1000)
                alive()  # no topic yet: nothing waits
                continue
            await step()
            backoff = 0.2
            alive()
        except RetryableError as e:
            log.warning("%s paused error=%s retry_in=%.1fs", name, e, backoff)
            await wait_or_stop(stop, backoff)
            backoff = min(backoff * 2, settings.retry_max_seconds)
            next_refresh = 0.0
            restart()


async def discover(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of those `topics` that exist (a missing topic is picked up by a later refresh)."""
    wanted = set(topics)
    try:
        # Describing all topics, not the wanted ones by name, so that the broker never auto-creates them.
        described = await admin.describe_topics()
    except KafkaError as e:
        raise BrokerUnavailable(f"cannot read topic metadata: {e}") from e
    return sorted(
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["topic"] in wanted and t["error_code"] == 0
        for p in t["partitions"]
    )


@dataclass(slots=True)
class Clients:
    consumer: AIOKafkaConsumer
    admin: AIOKafkaAdminClient
    producer: Producer | None


@asynccontextmanager
async def open_clients(
    settings: CommonSettings, client_id: str, *, dead_letters: bool = False
) -> AsyncIterator[Clients]:
    """A started admin client and consumer (no group), and a producer for the DLQ only when
    `dead_letters`; all stopped on exit. Connection trouble is `BrokerUnavailable`."""
    async with AsyncExitStack() as stack:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{client_id}-admin",
            request_timeout_ms=settings.kafka_request_timeout_ms,
        )
        consumer = make_consumer(settings, group_id=None, client_id=client_id)
        producer = make_producer(settings, client_id=f"{client_id}-dlq") if dead_letters else None
        try:
            for client in (admin, consumer, producer):
                if client is not None:
                    # Registered before start: a client whose start failed half-way still has connections.
                    stack.push_async_callback(client.close if client is admin else client.stop)
                    await client.start()
        except KafkaError as e:
            raise BrokerUnavailable(f"cannot connect to Kafka at {settings.kafka_bootstrap}: {e}") from e
        yield Clients(consumer, admin, producer)


async def seek_to_stored(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], stored: Mapping[tuple[str, int], int]
) -> None:
    """Put each of the assigned `partitions` at its stored next offset, or at the beginning."""
    fresh = []
    for tp in partitions:
        if (tp.topic, tp.partition) in stored:
            consumer.seek(tp, stored[(tp.topic, tp.partition)])
        else:
            fresh.append(tp)
    if fresh:
        await consumer.seek_to_beginning(*fresh)


async def fetch(consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int) -> Batch:
    """One `getmany`; broker trouble becomes `BrokerUnavailable`."""
    try:
        batch: Batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as e:
        raise BrokerUnavailable(f"fetch failed: {e}") from e
    return batch


async def stored_offsets(conn: AsyncConnection, consumer: str) -> dict[tuple[str, int], int]:
    """`consumer`'s next offset to read per (topic, partition), as stored in `consumer_offsets`."""
    result = await conn.execute(_SELECT_OFFSETS, {"consumer": consumer})
    return {(topic, partition): offset for topic, partition, offset in result.all()}


async def unapplied(conn: AsyncConnection, consumer: str, batch: Sequence[Record]) -> list[Record]:
    """The records of `batch` at or past `consumer`'s stored offsets: those below were applied already
    (an earlier run, or another instance with the same consumer name), so a redelivery changes nothing."""
    done = await stored_offsets(conn, consumer)
    return [r for r in batch if r.offset >= done.get((r.topic, r.partition), 0)]


async def advance_offsets(conn: AsyncConnection, consumer: str, records: Iterable[Positioned]) -> None:
    """Move `consumer`'s stored offsets past `records`, in the transaction that applied them."""
    nexts: dict[tuple[str, int], int] = {}
    for r in records:
        nexts[(r.topic, r.partition)] = max(nexts.get((r.topic, r.partition), 0), r.offset + 1)
    if nexts:
        rows = [
            {"consumer": consumer, "topic": t, "partition": p, "next_offset": o}
            for (t, p), o in nexts.items()
        ]
        await conn.execute(_UPSERT_OFFSETS, rows)
