"""The one producer-renewal routine (services/common/kafka.py `Renewing`) on a real broker: the services'
`Producer` and the api's FastStream broker each get a fresh client that sends, and the old one is closed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream.kafka import KafkaBroker

from services.api.publisher import make_broker
from services.api.settings import ApiSettings
from services.common.kafka import Renewing, make_producer
from services.common.settings import CommonSettings

TopicFactory = Callable[..., Awaitable[str]]


async def test_a_renewed_service_producer_sends(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = await new_topic()
    producer = make_producer(CommonSettings(kafka_bootstrap=kafka_bootstrap), "test-renewal")
    await producer.start()
    try:
        before = await producer.send_and_wait(topic, b"before")
        broken = producer._client.current
        await producer._client.renew(broken)
        assert producer._client.current is not broken
        after = await producer.send_and_wait(topic, b"after")
    finally:
        await producer.stop()
    assert (before.offset, after.offset) == (0, 1)


async def test_a_renewed_api_broker_publishes(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = await new_topic()
    settings = ApiSettings(kafka_bootstrap=kafka_bootstrap)
    broker = Renewing("test-api", lambda: make_broker(settings), KafkaBroker.connect, KafkaBroker.stop)
    await broker.current.connect()
    try:
        broken = broker.current
        await broker.renew(broken)
        assert broker.current is not broken
        await broker.renew(broken)  # a second report about the same client renews nothing
        fresh = broker.current
        meta = await fresh.publish(b"x", topic, key=b"k")
    finally:
        await broker.current.stop()
    assert broker.current is fresh and meta.offset == 0
