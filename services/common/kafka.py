"""Kafka clients with delivery settings spelled out, plus the event publisher and the dead-letter path.

aiokafka defaults to acks=1 without idempotence and auto-commits offsets: none of that is acceptable here,
so every producer and consumer of reelstream is built by these two functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, KafkaTimeoutError, OutOfOrderSequenceNumber

from schemas.dlq import DeadLetter
from schemas.envelope import Record, encode_event, encode_heartbeat
from schemas.events import JobEvent, JobRequested, WorkerHeartbeat
from schemas.topics import DLQ
from services.common import tracing
from services.common.errors import BrokerUnavailable
from services.common.metrics import DEAD_LETTERS
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)

# aiokafka's `timestamp_type` of a record, or of a produce ack, whose timestamp the broker set when it
# appended the record (topic config message.timestamp.type=LogAppendTime); 0 is the producer's CreateTime.
LOG_APPEND_TIME: Final = 1


def append_time(timestamp_ms: int | None, timestamp_type: int | None) -> datetime | None:
    """The broker's append time of a consumed record or a produce ack; None for the producer's time."""
    if timestamp_type != LOG_APPEND_TIME or timestamp_ms is None or timestamp_ms < 0:
        return None
    seconds, millis = divmod(timestamp_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)


def missed_deadline(event: JobEvent, msg: ConsumerRecord[Any, Any]) -> str | None:
    """Why the record `msg` of `event` is not a job, or None: a job.requested the broker appended after its
    `accept_by`. Only the broker's append time is judged; a producer's CreateTime says nothing about it."""
    if not isinstance(event, JobRequested):
        return None
    appended = append_time(msg.timestamp, msg.timestamp_type)
    if appended is None or event.accept_by is None or not event.arrived_late(appended):
        return None
    late = (appended - event.accept_by).total_seconds()
    return (
        f"job.requested arrived after its submit deadline ({late:.3f} s late: appended"
        f" {appended.isoformat()}, accept_by {event.accept_by.isoformat()}); not a job"
    )


def _aiokafka_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    """Durable producer: a send is acknowledged only once every in-sync replica has it."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        retry_backoff_ms=200,
    )


Client = TypeVar("Client")


class Renewing(Generic[Client]):
    """One Kafka producing client, replaced by a fresh one after a send that may have broken it: the one
    renewal routine, for the services' `Producer` and the api's FastStream broker (`api/publisher.py`).

    `make` builds a client, `start` connects it, `stop` closes it. `renew(broken)` does nothing when a
    concurrent failed send already replaced `broken`; when the fresh client cannot connect, the current
    one is kept (and renewed again after the next failure). The replaced client is closed afterwards,
    outside the lock, within 5 s, its errors ignored.
    """

    def __init__(
        self,
        name: str,
        make: Callable[[], Client],
        start: Callable[[Client], Awaitable[Any]],
        stop: Callable[[Client], Awaitable[Any]],
    ) -> None:
        self._name = name
        self._make, self._start, self._stop = make, start, stop
        self.current: Client = make()
        self._lock = asyncio.Lock()

    async def renew(self, broken: Client) -> None:
        async with self._lock:
            if self.current is not broken:
                return  # another send already renewed it
            log.warning("renewing the Kafka producer %s after a failed send", self._name)
            fresh = self._make()
            try:
                await self._start(fresh)
            except Exception as e:
                log.warning("Kafka still unreachable, keeping the %s producer: %s", self._name, e)
                return
            self.current = fresh
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._stop(broken)


class Producer:
    """The acks=all idempotent producer every service uses, renewed when its sequence state breaks.

    aiokafka 0.14 can fail a batch after it got a sequence number (a partition without a leader while a
    broker restarts); every later send to that partition then fails with OutOfOrderSequenceNumber, for
    ever. A fresh producer gets a new producer id and starts its sequences over, so on a timeout or that
    error the failed send is reported (the caller retries) and the next one goes through a new producer.
    """

    def __init__(
        self,
        settings: CommonSettings,
        client_id: str,
        factory: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        """`factory` makes the underlying producer (and each renewal) where one needs other settings
        than `_aiokafka_producer`'s (compression, request size)."""
        make = factory or (lambda: _aiokafka_producer(settings, client_id))
        self._client = Renewing(client_id, make, AIOKafkaProducer.start, AIOKafkaProducer.stop)

    async def start(self) -> None:
        await self._client.current.start()

    async def stop(self) -> None:
        await self._client.current.stop()

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self._client.current.partitions_for(topic)
        return partitions

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        producer = self._client.current
        try:
            return await producer.send_and_wait(
                topic, value=value, key=key, partition=partition, headers=headers
            )
        except (OutOfOrderSequenceNumber, KafkaTimeoutError):
            await self._client.renew(producer)
            raise


def make_producer(settings: CommonSettings, client_id: str) -> Producer:
    return Producer(settings, client_id)


def make_consumer(
    settings: CommonSettings,
    *,
    group_id: str | None,
    client_id: str,
    topics: Sequence[str] = (),
    auto_offset_reset: str = "earliest",
    max_poll_interval_ms: int = 300_000,
) -> AIOKafkaConsumer:
    """At-least-once consumer: offsets are committed by our code only after the effect is durable."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level="read_committed",
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=15_000,
        heartbeat_interval_ms=3_000,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 20_000),
        metadata_max_age_ms=30_000,
        # Progress must reach SSE clients fast: an idle fetch returns within 100 ms (aiokafka: 500).
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )


async def send(producer: Producer, topic: str, record: Record, partition: int | None = None) -> Any:
    """Send and wait for the broker's acknowledgement; broker trouble becomes `BrokerUnavailable`.
    The current trace context goes with the record (`ce_traceparent`, `ce_tracestate`)."""
    headers = tracing.inject(record.headers)
    try:
        return await producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=headers, partition=partition
        )
    except KafkaError as e:
        raise BrokerUnavailable(f"Kafka did not acknowledge a record on {topic}: {e}") from e


async def publish_event(producer: Producer, topic: str, event: JobEvent, partition: int | None = None) -> Any:
    return await send(producer, topic, encode_event(event), partition)


async def publish_heartbeat(producer: Producer, topic: str, beat: WorkerHeartbeat) -> Any:
    return await send(producer, topic, encode_heartbeat(beat))


async def dead_letter(producer: Producer, msg: ConsumerRecord[Any, Any], reason: str, consumer: str) -> None:
    """Put a poison record on the DLQ with its reason, so the consumer can move past it losing nothing."""
    letter = DeadLetter(
        original_headers=tuple(msg.headers or ()),
        reason=reason,
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
        consumer=consumer,
    )
    log.warning(
        "dead-lettered topic=%s partition=%s offset=%s reason=%s",
        msg.topic,
        msg.partition,
        msg.offset,
        reason,
    )
    record = Record(key=msg.key or b"", value=msg.value or b"", headers=letter.headers())
    # Outside any span: the letter keeps the trace context of the record it parks.
    with tracing.attached(tracing.extract(msg.headers)):
        await send(producer, DLQ, record)
    DEAD_LETTERS.labels(consumer, msg.topic).inc()


async def partitions_of(settings: CommonSettings, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics`, for consumers that assign partitions themselves. Missing topic: error."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"reelstream-{settings.service_name}-admin",
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"] != 0 or not topic["partitions"]:
            raise BrokerUnavailable(
                f"topic {topic['topic']} is missing (error {topic['error_code']}): run `make up`"
            )
        found += sorted(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
    return found
