"""Metrics every consumer shares: its lag per topic, and the dead letters it parks."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.common.kafka import dead_letter
from services.common.metrics import observe_lag


class Ends:
    """A consumer's last known end of each partition (None: not fetched yet)."""

    def __init__(self, ends: dict[TopicPartition, int | None]) -> None:
        self.ends = ends

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends.get(partition)


def lag(service: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value("reelstream_consumer_lag_records", {"service": service, "topic": topic})


def test_lag_is_summed_per_topic_and_an_unknown_end_counts_as_none() -> None:
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    consumer = Ends({a0: 10, a1: 7, b0: None})
    observe_lag("test-consumer", consumer, [(a0, 4), (a1, 7), (b0, 3)])
    assert lag("test-consumer", "a") == 6
    assert lag("test-consumer", "b") == 0
    observe_lag("test-consumer", Ends({a0: 10, a1: 7}), [(a0, 10), (a1, 9)])  # past the end it knew
    assert lag("test-consumer", "a") == 0


class Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})


def test_every_dead_letter_is_counted_by_consumer_and_source_topic() -> None:
    class Msg:
        topic, partition, offset, key, value, headers = "reelstream.jobs.events", 0, 3, b"k", b"x", ()

    labels = {"consumer": "test-dlq", "topic": "reelstream.jobs.events"}
    before = REGISTRY.get_sample_value("reelstream_dead_letters_total", labels) or 0.0
    producer = Producer()
    for _ in range(2):
        asyncio.run(dead_letter(producer, Msg(), "value is not JSON", "test-dlq"))  # type: ignore[arg-type]
    assert REGISTRY.get_sample_value("reelstream_dead_letters_total", labels) == before + 2
    assert [s["topic"] for s in producer.sent] == ["reelstream.dlq"] * 2
