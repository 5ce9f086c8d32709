"""The scheduler's snapshot on the real Kafka: a restart from it agrees with a full replay of fresh topics."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest
from aiokafka import AIOKafkaProducer

from schemas.topics import SNAPSHOT_MAX_BYTES
from services.common.settings import CommonSettings
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import KEY, load_latest
from services.scheduler.topics import SchedulerTopics

TopicFactory = Callable[[int, Mapping[str, str] | None], Awaitable[str]]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return importlib.import_module("bench.scheduler_restart")


@pytest.fixture
async def topics(new_topic: TopicFactory, bench: ModuleType) -> SchedulerTopics:
    compact = {"cleanup.policy": "compact"}
    return SchedulerTopics(
        requested=await new_topic(3, None),
        events=await new_topic(3, None),
        control=await new_topic(3, None),
        dispatch=await new_topic(bench.SLOTS, None),
        heartbeat=await new_topic(3, compact),
        snapshot=await new_topic(1, compact | {"max.message.bytes": str(SNAPSHOT_MAX_BYTES)}),
    )


def scheduler_settings(settings: CommonSettings, bench: ModuleType, **changes: object) -> SchedulerSettings:
    return SchedulerSettings(kafka_bootstrap=settings.kafka_bootstrap, gpu_slots=bench.SLOTS, **changes)


async def test_a_restart_from_the_snapshot_agrees_with_a_full_replay(
    settings: CommonSettings, topics: SchedulerTopics, bench: ModuleType
) -> None:
    base = scheduler_settings(settings, bench)
    full = base.model_copy(update={"snapshot_restore": False})
    writer = bench.Writer(settings.kafka_bootstrap, topics)
    await writer.producer.start()
    try:
        await bench.write_history(writer, 3_000, datetime.now(UTC) - timedelta(hours=1), 60)
        _, first, used = await bench.restart(full, topics)  # then writes the snapshot, as at shutdown
        assert not used
        await bench.write_tail(writer, 400)
    finally:
        await writer.producer.stop()

    _, from_snapshot, used = await bench.restart(base, topics)
    _, replayed, _ = await bench.restart(full, topics)

    assert used
    assert bench.summary(from_snapshot.state) == bench.summary(replayed.state)
    assert len(replayed.state.done) > len(first.state.done)  # the tail was folded on top
    assert replayed.state.jobs, "the history leaves open jobs"


async def test_an_undecodable_snapshot_means_a_full_replay(
    settings: CommonSettings, topics: SchedulerTopics, bench: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(topics.snapshot, value=b'{"schema_version": 99}', key=KEY)
    finally:
        await producer.stop()
    base = scheduler_settings(settings, bench)

    assert await load_latest(base, topics.snapshot) is None
    assert "replaying in full" in caplog.text
    _, _, used = await bench.restart(base, topics)
    assert not used


async def test_no_snapshot_yet_means_a_full_replay(
    settings: CommonSettings, topics: SchedulerTopics, bench: ModuleType
) -> None:
    assert await load_latest(scheduler_settings(settings, bench), topics.snapshot) is None
