"""The snapshot topic: writing the live scheduler's snapshots, reading the latest one at start.

The topic is compacted with one key, so its last record is the latest snapshot and compaction drops the
older ones. Both clients are the scheduler's own, with their delivery settings spelled out here: a
snapshot is a few MiB, far above what the shared clients are sized for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.common.kafka import Producer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.snapshot import SnapshotError, StateSnapshot, decode, encode

log = logging.getLogger("reelstream.scheduler.snapshot")
KEY: Final = b"scheduler"


def snapshot_producer(settings: SchedulerSettings) -> AIOKafkaProducer:
    """acks=all and idempotent: a snapshot acknowledged is on every in-sync replica, and a retried send
    is not written twice. Uncompressed: the bulk of a snapshot is random ids, which do not compress."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="reelstream-scheduler-snapshot",
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.snapshot_max_bytes,
        linger_ms=0,
        request_timeout_ms=int(settings.snapshot_timeout_seconds * 1000),
        retry_backoff_ms=200,
    )


def snapshot_consumer(settings: SchedulerSettings) -> AIOKafkaConsumer:
    """No group and no commits: it reads one record at a known offset. Fetch sizes fit the largest
    snapshot the producer may write."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="reelstream-scheduler-snapshot",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level="read_committed",
        max_partition_fetch_bytes=settings.snapshot_max_bytes,
        fetch_max_bytes=settings.snapshot_max_bytes,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 20_000),
    )


async def _read_last(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bytes | None:
    consumer.assign([tp])
    end = (await consumer.end_offsets([tp]))[tp]
    begin = (await consumer.beginning_offsets([tp]))[tp]
    if end <= begin:
        return None
    consumer.seek(tp, end - 1)
    record = await consumer.getone(tp)
    return record.value or b""


async def load_latest(settings: SchedulerSettings, topic: str) -> StateSnapshot | None:
    """The latest snapshot, or None (logged) when there is none or it cannot be read or decoded: the
    caller then replays every topic from its beginning, which is always correct, only slower."""
    consumer = snapshot_consumer(settings)
    started = time.monotonic()
    try:
        async with asyncio.timeout(settings.snapshot_timeout_seconds):
            await consumer.start()
            raw = await _read_last(consumer, TopicPartition(topic, 0))
    except (KafkaError, OSError, TimeoutError) as e:
        log.warning("could not read the snapshot topic %s, replaying in full: %r", topic, e)
        return None
    finally:
        await consumer.stop()
    if raw is None:
        log.info("no snapshot on %s yet, replaying in full", topic)
        return None
    try:
        snapshot = decode(raw)
    except SnapshotError as e:
        log.error("ignoring the latest snapshot, replaying in full: %s", e)
        return None
    log.info(
        "loaded the snapshot of %s (%d bytes, %d open jobs) in %.3f s",
        snapshot.taken_at.isoformat(),
        len(raw),
        len(snapshot.jobs),
        time.monotonic() - started,
    )
    return snapshot


class SnapshotWriter:
    """Writes snapshots in the background, one at a time, each within the timeout.

    The live loop encodes a snapshot between two rounds, where the state and the input positions agree,
    and hands the bytes over; sending them does not hold up dispatching. A snapshot that comes due while
    the previous one is still in flight is skipped, and one that fails is only logged: the next one, or
    at worst a full replay, stands in for it.
    """

    def __init__(self, settings: SchedulerSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        # Renewed when its sequence state breaks (a broker restart), as every producer here.
        self.producer = Producer(
            settings, "reelstream-scheduler-snapshot", lambda: snapshot_producer(settings)
        )
        self.in_flight: asyncio.Task[None] | None = None
        self.last_at = float("-inf")
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self.settings.snapshot_interval_seconds > 0

    def due(self) -> bool:
        """Due every interval since the last one began, the first right after the state is rebuilt."""
        idle = self.in_flight is None or self.in_flight.done()
        return (
            self.enabled
            and idle
            and time.monotonic() - self.last_at >= self.settings.snapshot_interval_seconds
        )

    async def start(self) -> None:
        if self.enabled:
            await self.producer.start()

    def submit(self, snapshot: StateSnapshot) -> None:
        self.last_at = time.monotonic()
        self.in_flight = asyncio.create_task(self.write(encode(snapshot), snapshot))

    async def write(self, raw: bytes, snapshot: StateSnapshot) -> None:
        if len(raw) > self.settings.snapshot_max_bytes:
            log.error(
                "snapshot of %d bytes exceeds snapshot_max_bytes=%d: not written",
                len(raw),
                self.settings.snapshot_max_bytes,
            )
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.snapshot_timeout_seconds):
                meta = await self.producer.send_and_wait(self.topic, value=raw, key=KEY)
        except (KafkaError, OSError, TimeoutError) as e:
            log.error("could not write a snapshot (%d bytes): %r", len(raw), e)
            return
        self.written += 1
        log.info(
            "wrote a snapshot at offset %d: %d bytes, %d open jobs, in %.3f s",
            meta.offset,
            len(raw),
            len(snapshot.jobs),
            time.monotonic() - started,
        )

    async def finish(self, final: StateSnapshot | None) -> None:
        """At shutdown: let the write in flight end (within its timeout), then write `final`."""
        if not self.enabled:
            return
        if self.in_flight is not None:
            await self.in_flight
        if final is not None:
            await self.write(encode(final), final)

    async def stop(self) -> None:
        if self.in_flight is not None and not self.in_flight.done():
            self.in_flight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.in_flight
        if self.enabled:
            await self.producer.stop()
