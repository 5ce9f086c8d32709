"""The worker's dispatch consumer against the local Kafka: a slot never reads past a job sent to it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.worker.main import start_dispatch
from services.worker.settings import WorkerSettings
from services.worker.slot import fix_position

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TopicFactory = Callable[..., Awaitable[str]]


@contextlib.asynccontextmanager
async def slot_consumer(topic: str, group: str) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
    consumer, tp = await start_dispatch(WorkerSettings(slot=1), topic=topic, group=group)
    try:
        yield consumer, tp
    finally:
        await consumer.stop()


async def read_one(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, bytes | None]:
    for _ in range(40):
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
        if batch.get(tp):
            msg = batch[tp][0]
            return msg.offset, msg.value
    pytest.fail("the slot read nothing")


async def test_a_record_sent_after_the_slot_announced_itself_is_read_even_after_a_restart(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """A fresh group (no committed offset): the position is fixed and committed before the first
    heartbeat, so the job sent on that heartbeat is read, by this process or by the slot's next one."""
    topic, group = await new_topic(partitions=2), f"test-worker-{uuid.uuid4().hex}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"sent before the slot ever ran", partition=1)
        async with slot_consumer(topic, group) as (consumer, tp):
            position = await fix_position(consumer, tp)  # the first heartbeat reports this
            assert position == 1 and await consumer.committed(tp) == 1
        # The scheduler hears the slot and sends it a job, while the slot's process restarts.
        await producer.send_and_wait(topic, b"the job", partition=1)
        async with slot_consumer(topic, group) as (consumer, tp):
            assert await fix_position(consumer, tp) == 1
            assert await read_one(consumer, tp) == (1, b"the job")
    finally:
        await producer.stop()
