"""Metrics every service shares: dead letters, and how far each consumer is behind its topics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

DEAD_LETTERS: Final = Counter(
    "reelstream_dead_letters_total",
    "Records put on the dead-letter topic, by the consumer that parked them and the topic they came from.",
    ["consumer", "topic"],
)
CONSUMER_LAG: Final = Gauge(
    "reelstream_consumer_lag_records",
    "Records between a consumer's position and the end of a topic (summed over its partitions).",
    ["service", "topic"],
)


class Positioned(Protocol):
    """What lag needs of a consumer (aiokafka's AIOKafkaConsumer)."""

    def highwater(self, partition: TopicPartition) -> int | None: ...


def observe_lag(service: str, consumer: Positioned, positions: Iterable[tuple[TopicPartition, int]]) -> None:
    """Set the lag of `service` per topic from the consumer's last known ends and `positions` (the next
    offset it will read of each partition). Partitions whose end is not known yet count as no lag."""
    lag: dict[str, int] = {}
    for tp, position in positions:
        end = consumer.highwater(tp)
        lag[tp.topic] = lag.get(tp.topic, 0) + (max(end - position, 0) if end is not None else 0)
    for topic, records in lag.items():
        CONSUMER_LAG.labels(service, topic).set(records)
