"""The api's Kafka side: a FastStream broker used only to publish, with durable delivery settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from opentelemetry.trace import SpanKind

from schemas.envelope import encode_event
from schemas.events import JobDeleted, JobEvent, JobRequested
from schemas.topics import JOBS_CONTROL, JOBS_EVENTS, JOBS_REQUESTED
from services.api.settings import ApiSettings
from services.common import tracing
from services.common.errors import BrokerUnavailable
from services.common.kafka import Renewing, append_time


def make_broker(settings: ApiSettings) -> KafkaBroker:
    """acks=all with idempotence: a 202 is only ever sent for a record every in-sync replica holds."""
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id="reelstream-api",
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        allow_auto_create_topics=False,
        linger_ms=1,
        graceful_timeout=10.0,
        logger=None,
    )


@dataclass(frozen=True, slots=True)
class Ack:
    """Kafka's acknowledgement of one record."""

    partition: int
    offset: int
    appended_at: datetime | None
    """The broker's append time (a LogAppendTime topic); None when the record carries the producer's time."""


class JobPublisher:
    """Publishes through the FastStream broker and returns Kafka's acknowledgement.

    Giving up on an ack does not take the record back: the producer keeps it and may deliver it once the
    broker returns. That is why a job request carries a deadline (`accept_by`) that its consumers judge by
    the broker's append time (see `services/api/submit.py`). After a failed or timed-out send the broker
    is renewed (`services.common.kafka.Renewing`), because aiokafka's idempotent sequence for that
    partition may now be broken.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self._broker = Renewing(
            "reelstream-api", lambda: make_broker(settings), KafkaBroker.connect, KafkaBroker.stop
        )
        # Cancels have no deadline: wait as long as the producer itself tries.
        self._control_wait = settings.kafka_request_timeout_ms / 1000 + 5

    async def connect(self) -> None:
        await self._broker.current.connect()

    async def stop(self) -> None:
        await self._broker.current.stop()

    async def _publish(self, topic: str, event: JobEvent, wait_seconds: float) -> Ack:
        record = encode_event(event)
        broker = self._broker.current
        attributes = {"messaging.destination.name": topic, "reelstream.job_id": str(event.job_id)}
        with tracing.span("api", f"publish {event.type}", kind=SpanKind.PRODUCER, attributes=attributes):
            # The record carries this span's context: the job's trace goes on from it in every consumer.
            headers = {k: v.decode() for k, v in tracing.inject(record.headers)}
            try:
                async with asyncio.timeout(wait_seconds):
                    # With confirmation (the default) FastStream returns aiokafka's RecordMetadata.
                    meta = await broker.publish(record.value, topic, key=record.key, headers=headers)
            except (KafkaError, TimeoutError) as e:
                await self._broker.renew(broker)
                what = f"{event.type} for job {event.job_id}"
                raise BrokerUnavailable(f"Kafka did not acknowledge {what}") from e
        return Ack(meta.partition, meta.offset, append_time(meta.timestamp, meta.timestamp_type))

    async def requested(self, event: JobRequested, wait_seconds: float) -> Ack:
        """Kafka's ack of a job request; `BrokerUnavailable` when none came within `wait_seconds`."""
        return await self._publish(JOBS_REQUESTED, event, wait_seconds)

    async def control(self, event: JobEvent) -> None:
        await self._publish(JOBS_CONTROL, event, self._control_wait)

    async def deleted(self, event: JobDeleted) -> None:
        """A deleted job's tombstone, for the projector and every downstream consumer of jobs.events."""
        await self._publish(JOBS_EVENTS, event, self._control_wait)

    async def ping(self, seconds: float) -> bool:
        return bool(await self._broker.current.ping(seconds))
