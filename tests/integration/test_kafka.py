"""The local Apache Kafka broker: durable produce, consumer groups, and the contract topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.topics import DLQ, JOBS_DISPATCH, WORKERS_HEARTBEAT, topic_specs
from services.common.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# The `new_topic` fixture of conftest.py: creates a uuid-named topic with N partitions.
TopicFactory = Callable[..., Awaitable[str]]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls `check` until it holds; fails naming `what` when it never does."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def durable_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"test-producer-{uuid.uuid4().hex[:8]}",
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=15_000,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def group_consumer(bootstrap: str, group_id: str, *topics: str) -> AIOKafkaConsumer:
    """A consumer that commits by hand and notices a departed member within about a second."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=f"test-consumer-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )


@dataclass
class Member:
    """One running group member: its consumer, a task that polls and commits, and what it received."""

    consumer: AIOKafkaConsumer
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)
            if batches:
                await self.consumer.commit()

    async def leave(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    def values(self) -> set[bytes]:
        return {r.value for r in self.records if r.value is not None}


async def test_idempotent_acks_all_round_trip(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = await new_topic(partitions=3)
    sent: dict[bytes, list[bytes]] = {}
    async with durable_producer(kafka_bootstrap) as producer:
        for i in range(30):
            key, value = f"job-{i % 5}".encode(), f"event-{i}".encode()
            metadata = await producer.send_and_wait(topic, value=value, key=key)
            assert metadata.offset >= 0
            sent.setdefault(key, []).append(value)

    member = Member(group_consumer(kafka_bootstrap, f"test-{uuid.uuid4().hex}", topic))
    await member.start()
    try:
        await eventually(lambda: len(member.records) >= 30, "30 records back")
    finally:
        await member.leave()

    received: dict[bytes, list[bytes]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for record in member.records:
        assert record.key is not None
        assert record.value is not None
        received.setdefault(record.key, []).append(record.value)
        partition_of.setdefault(record.key, set()).add(record.partition)
    # Exactly once from an idempotent producer, in order per key, and one partition per key.
    assert received == sent
    assert all(len(partitions) == 1 for partitions in partition_of.values())


async def test_group_splits_partitions_and_rebalances_when_a_member_leaves(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic(partitions=4)
    group = f"test-{uuid.uuid4().hex}"
    first = Member(group_consumer(kafka_bootstrap, group, topic))
    second = Member(group_consumer(kafka_bootstrap, group, topic))
    await first.start()
    try:
        await eventually(
            lambda: first.partitions() == {0, 1, 2, 3}, "the only member to own all 4 partitions"
        )
        await second.start()
        try:
            await eventually(
                lambda: (
                    len(first.partitions()) == 2
                    and len(second.partitions()) == 2
                    and first.partitions() | second.partitions() == {0, 1, 2, 3}
                ),
                "the two members to split the 4 partitions 2/2",
            )
            async with durable_producer(kafka_bootstrap) as producer:
                for i in range(40):
                    await producer.send_and_wait(topic, value=f"a-{i}".encode(), partition=i % 4)
            await eventually(
                lambda: len(first.records) + len(second.records) >= 40, "40 records in the group"
            )
            # Each member only ever sees the partitions it owns.
            assert {r.partition for r in first.records} == first.partitions()
            assert {r.partition for r in second.records} == second.partitions()
            assert first.values().isdisjoint(second.values())
        finally:
            await second.leave()

        await eventually(
            lambda: first.partitions() == {0, 1, 2, 3}, "the remaining member to take all 4 back"
        )
        async with durable_producer(kafka_bootstrap) as producer:
            for i in range(8):
                await producer.send_and_wait(topic, value=f"b-{i}".encode(), partition=i % 4)
        wanted = {f"b-{i}".encode() for i in range(8)}
        await eventually(lambda: wanted <= first.values(), "records of all 4 partitions after the rebalance")
    finally:
        await first.leave()


async def test_contract_topics_exist_with_their_layout(
    kafka_admin: AIOKafkaAdminClient, settings: CommonSettings
) -> None:
    specs = {spec.name: spec for spec in topic_specs()}
    described = await kafka_admin.describe_topics(list(specs))
    partitions = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    assert set(partitions) == set(specs), "run `make up` (infra/create_topics.py) to create the topics"
    # One partition per slot; partitions only grow, and a stack that once ran more slots keeps them.
    assert partitions[JOBS_DISPATCH] >= settings.gpu_slots
    for name, spec in specs.items():
        if spec.partitions is not None:
            assert partitions[name] >= spec.partitions

    configs = await topic_configs(kafka_admin, [WORKERS_HEARTBEAT, DLQ])
    assert configs[WORKERS_HEARTBEAT]["cleanup.policy"] == "compact"
    assert configs[DLQ]["retention.ms"] == "-1"


async def test_broker_never_creates_topics_on_its_own(kafka_admin: AIOKafkaAdminClient) -> None:
    (response,) = await kafka_admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
    (resource,) = response.resources
    values = {entry[0]: entry[1] for entry in resource[4]}
    assert values["auto.create.topics.enable"] == "false"
    assert values["offsets.topic.replication.factor"] == "1"


async def test_consumer_resumes_after_committed_offset(kafka_bootstrap: str, new_topic: TopicFactory) -> None:
    topic = await new_topic(partitions=1)
    group = f"test-{uuid.uuid4().hex}"
    async with durable_producer(kafka_bootstrap) as producer:
        for i in range(5):
            await producer.send_and_wait(topic, value=f"{i}".encode())

    consumer = group_consumer(kafka_bootstrap, group, topic)
    await consumer.start()
    try:
        first = await consumer.getone()
        await consumer.commit({TopicPartition(topic, first.partition): first.offset + 1})
    finally:
        await consumer.stop()

    # A restarted member of the same group continues after the committed record: at-least-once.
    consumer = group_consumer(kafka_bootstrap, group, topic)
    await consumer.start()
    try:
        second = await consumer.getone()
    finally:
        await consumer.stop()
    assert (first.value, second.value) == (b"0", b"1")


async def topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    result: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            result[name] = {entry[0]: entry[1] for entry in entries}
    return result
