"""The api's Kafka side: a FastStream broker used only to publish, with durable delivery settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from schemas.envelope import encode_event
from schemas.events import JobEvent
from schemas.topics import JOBS_CONTROL, JOBS_REQUESTED
from services.api.settings import ApiSettings
from services.common.errors import BrokerUnavailable

log = logging.getLogger(__name__)


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


class JobPublisher:
    """Publishes through the FastStream broker; waits for the producer's own verdict, never less.

    Giving up on the wait earlier than the producer gives up on the record would let a record we
    answered 503 for reach Kafka later (a job the client was told does not exist). So the wait outlasts
    the producer's request timeout, after which aiokafka has failed the record for good; then the
    broker is reconnected, because aiokafka's idempotent sequence for that partition is now broken.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._broker = make_broker(settings)
        self._wait = settings.kafka_request_timeout_ms / 1000 + 5
        self._reconnecting = asyncio.Lock()

    async def connect(self) -> None:
        await self._broker.connect()

    async def stop(self) -> None:
        await self._broker.stop()

    async def _publish(self, topic: str, event: JobEvent) -> None:
        record = encode_event(event)
        headers = {k: v.decode() for k, v in record.headers}
        broker = self._broker
        try:
            async with asyncio.timeout(self._wait):
                await broker.publish(record.value, topic, key=record.key, headers=headers)
        except (KafkaError, TimeoutError) as e:
            await self._reconnect(broker)
            raise BrokerUnavailable(f"Kafka did not acknowledge {event.type} for job {event.job_id}") from e

    async def _reconnect(self, broken: KafkaBroker) -> None:
        async with self._reconnecting:
            if self._broker is not broken:
                return
            fresh = make_broker(self._settings)
            try:
                await fresh.connect()
            except Exception as e:
                log.warning("Kafka still unreachable, keeping the old connection: %s", e)
                return
            self._broker = fresh
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await broken.stop()

    async def requested(self, event: JobEvent) -> None:
        await self._publish(JOBS_REQUESTED, event)

    async def control(self, event: JobEvent) -> None:
        await self._publish(JOBS_CONTROL, event)

    async def ping(self, seconds: float) -> bool:
        return bool(await self._broker.ping(seconds))
