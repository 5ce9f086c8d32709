"""The consumer plumbing the projector and the notifier share (services/common/consumer.py), on fakes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from services.common.consumer import discover, fetch, run_assigned, seek_to_stored, wait_or_stop
from services.common.errors import BrokerUnavailable
from services.common.settings import JobTopicsReaderSettings


class FakeConsumer:
    def __init__(self, fail: bool = False) -> None:
        self.seeks: dict[TopicPartition, int] = {}
        self.from_start: list[TopicPartition] = []
        self.fail = fail

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.from_start += tps

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if self.fail:
            raise KafkaConnectionError("broker gone")
        return {}


class FakeAdmin:
    async def describe_topics(self) -> list[dict[str, Any]]:
        return [
            {"topic": "b", "error_code": 0, "partitions": [{"partition": 1}, {"partition": 0}]},
            {"topic": "a", "error_code": 0, "partitions": [{"partition": 0}]},
            {"topic": "other", "error_code": 0, "partitions": [{"partition": 0}]},
            {"topic": "c", "error_code": 3, "partitions": []},
        ]


async def test_partitions_of_the_wanted_topics_that_exist_in_order() -> None:
    found = await discover(cast(AIOKafkaAdminClient, FakeAdmin()), ["a", "b", "c"])
    assert found == [TopicPartition("a", 0), TopicPartition("b", 0), TopicPartition("b", 1)]


async def test_stored_offsets_are_sought_and_the_rest_start_at_the_beginning() -> None:
    consumer = FakeConsumer()
    a0, a1 = TopicPartition("a", 0), TopicPartition("a", 1)
    await seek_to_stored(cast(AIOKafkaConsumer, consumer), [a0, a1], {("a", 0): 42})
    assert consumer.seeks == {a0: 42} and consumer.from_start == [a1]


async def test_a_failed_fetch_is_broker_unavailable() -> None:
    assert await fetch(cast(AIOKafkaConsumer, FakeConsumer()), 10, 5) == {}
    with pytest.raises(BrokerUnavailable, match="fetch failed"):
        await fetch(cast(AIOKafkaConsumer, FakeConsumer(fail=True)), 10, 5)


async def test_wait_or_stop_wakes_on_stop() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    began = time.monotonic()
    await wait_or_stop(stop, 10)
    assert time.monotonic() - began < 5
    await wait_or_stop(asyncio.Event(), 0.01)  # no stop: returns after the time


async def test_the_loop_pauses_on_trouble_assigns_again_and_stops() -> None:
    settings = JobTopicsReaderSettings(poll_timeout_ms=10, assignment_refresh_seconds=60, retry_max_seconds=1)
    stop = asyncio.Event()
    calls: list[str] = []
    state = {"assigned": False, "fail": True}

    async def assign() -> None:
        calls.append("assign")
        state["assigned"] = True

    async def step() -> None:
        calls.append("step")
        if state["fail"]:
            state["fail"] = False
            raise BrokerUnavailable("fetch failed")
        stop.set()

    def restart() -> None:
        calls.append("restart")
        state["assigned"] = False

    await asyncio.wait_for(
        run_assigned(
            stop,
            settings,
            name="test",
            assign=assign,
            assigned=lambda: state["assigned"],
            step=step,
            restart=restart,
            alive=lambda: calls.append("alive"),
        ),
        timeout=10,
    )
    # The failed round restarts from a fresh assignment (seeking to the stored offsets again).
    assert calls == ["assign", "step", "restart", "assign", "step", "alive"]
