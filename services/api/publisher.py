"""The api's Kafka side: a FastStream broker used only to publish, with durable delivery settings."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from schemas.envelope import encode_event
from schemas.events import JobEvent
from schemas.topics import JOBS_CONTROL, JOBS_REQUESTED
from services.api.settings import ApiSettings
from services.common.errors import BrokerUnavailable


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
    def __init__(self, broker: KafkaBroker, timeout_seconds: float) -> None:
        self._broker = broker
        self._timeout = timeout_seconds

    async def _publish(self, topic: str, event: JobEvent) -> None:
        record = encode_event(event)
        headers = {k: v.decode() for k, v in record.headers}
        try:
            async with asyncio.timeout(self._timeout):
                await self._broker.publish(record.value, topic, key=record.key, headers=headers)
        except (KafkaError, TimeoutError) as e:
            raise BrokerUnavailable(f"Kafka did not acknowledge {event.type} for job {event.job_id}") from e

    async def requested(self, event: JobEvent) -> None:
        await self._publish(JOBS_REQUESTED, event)

    async def control(self, event: JobEvent) -> None:
        await self._publish(JOBS_CONTROL, event)

    async def ping(self, seconds: float) -> bool:
        return bool(await self._broker.ping(seconds))
