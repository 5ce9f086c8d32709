"""The broker's append time, on which the submit deadline rests (`JobRequested.accept_by`).

reelstream.jobs.requested keeps LogAppendTime, so the timestamp in the ack the api gets (aiokafka's
RecordMetadata, also through FastStream's `KafkaBroker.publish`) and in the record every consumer reads is
the broker's own clock at the append, never the producer's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import RecordMetadata

from schemas.topics import JOBS_REQUESTED, TopicSpec, topic_specs
from services.api.publisher import make_broker
from services.api.settings import ApiSettings
from services.common.kafka import LOG_APPEND_TIME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# The `new_topic` fixture of conftest.py: creates a uuid-named topic with N partitions and some configs.
TopicFactory = Callable[..., Awaitable[str]]
CREATE_TOPICS = Path(__file__).resolve().parents[2] / "infra" / "create_topics.py"
REQUESTED = next(spec for spec in topic_specs() if spec.name == JOBS_REQUESTED)
HOUR_MS = 3_600_000


async def timestamp_type_of(admin: AIOKafkaAdminClient, topic: str, expected: str) -> str:
    """The topic's `message.timestamp.type`, asked again for a while until it is `expected`: a topic
    created or altered a moment ago may not show (its config) on the broker that answers yet."""
    deadline = time.monotonic() + 15
    while True:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (resource,) = response.resources
        found = {entry[0]: entry[1] for entry in resource[4]}.get("message.timestamp.type", "")
        if found == expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_the_requested_topic_keeps_the_brokers_append_time(kafka_admin: AIOKafkaAdminClient) -> None:
    assert REQUESTED.configs["message.timestamp.type"] == "LogAppendTime"
    assert await timestamp_type_of(kafka_admin, JOBS_REQUESTED, "LogAppendTime") == "LogAppendTime", (
        "run `make up` (infra/create_topics.py sets the config on existing topics too)"
    )


async def read_one(bootstrap: str, topic: str, offset: int) -> tuple[int, int]:
    """(timestamp, timestamp_type) of the record at `offset` of partition 0."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        msg = await consumer.getone()
        return msg.timestamp, msg.timestamp_type
    finally:
        await consumer.stop()


async def test_the_ack_and_the_record_carry_the_append_time_not_the_producers(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=1, configs=REQUESTED.configs)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        before = int(time.time() * 1000)
        # The producer claims an hour ago; with LogAppendTime the broker overwrites it.
        meta = await producer.send_and_wait(topic, b"x", timestamp_ms=before - HOUR_MS)
        after = int(time.time() * 1000)
    finally:
        await producer.stop()
    assert meta.timestamp_type == LOG_APPEND_TIME
    # One machine: the broker's clock is this clock (a little slack for millisecond rounding).
    assert before - 5 <= meta.timestamp <= after + 5
    assert await read_one(kafka_bootstrap, topic, meta.offset) == (meta.timestamp, LOG_APPEND_TIME)


async def test_faststream_publish_returns_the_record_metadata(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    """The api publishes with FastStream: its `publish` must return aiokafka's RecordMetadata."""
    topic = await new_topic(partitions=1, configs=REQUESTED.configs)
    broker = make_broker(ApiSettings(kafka_bootstrap=kafka_bootstrap))
    await broker.connect()
    try:
        before = int(time.time() * 1000)
        meta = await broker.publish(b"x", topic, key=b"k", headers={"ce_id": str(uuid.uuid4())})
        after = int(time.time() * 1000)
    finally:
        await broker.stop()
    assert isinstance(meta, RecordMetadata)
    assert meta.timestamp_type == LOG_APPEND_TIME and before - 5 <= meta.timestamp <= after + 5
    assert await read_one(kafka_bootstrap, topic, meta.offset) == (meta.timestamp, LOG_APPEND_TIME)


def create_topics_module() -> ModuleType:
    """infra/create_topics.py is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("create_topics", CREATE_TOPICS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_create_topics_sets_the_append_time_on_a_topic_that_exists(
    kafka_admin: AIOKafkaAdminClient, new_topic: TopicFactory
) -> None:
    create_topics = create_topics_module()
    topic = await new_topic(partitions=1)
    assert await timestamp_type_of(kafka_admin, topic, "CreateTime") == "CreateTime"
    spec = TopicSpec(topic, "job id", 1, False, "a stack created before the config", REQUESTED.configs)
    await create_topics.apply_configs(kafka_admin, [spec], create_topics.TopicSettings())
    assert await timestamp_type_of(kafka_admin, topic, "LogAppendTime") == "LogAppendTime"
