"""The Kafka baseline: workers in one consumer group read the requests directly, one topic per lane.

Each process takes one job at a time from its share of the partitions (Kafka's range assignment: one
partition of each lane's topic), always from the first `--topic` that has a record (interactive first),
runs it with the real `JobRunner` (the same simulated GPU, checkpoints, MP4 encode and S3 upload as a
reelstream slot) and commits the offset after the job (at-least-once). No scheduler: no work moves
between partitions, no look-ahead, no preemption, no recovery other than redelivery after a rebalance.
Events go to a bench-only topic.

    python -m bench.naive_worker --index 0 --topic I --topic B --events-topic E --group G --state-dir D
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from bench.fleet_worker import add_slot_options, generator_of, settings_of
from schemas.envelope import MalformedMessage, decode_event
from schemas.events import JobDispatched, JobEvent, JobRequested
from services.common.kafka import make_consumer, make_producer, publish_event
from services.common.logging import configure
from services.common.runtime import run_until_signalled
from services.common.storage import Storage
from services.worker.runner import JobRunner, Publish
from services.worker.settings import WorkerSettings

log = logging.getLogger("bench.naive")


class Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Writes this member's partitions to a file, so the benchmark starts once the group is settled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.path.write_text("[]")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.path.write_text(json.dumps(sorted([tp.topic, tp.partition] for tp in assigned)))


def make_runner(settings: WorkerSettings, args: argparse.Namespace, publish: Publish) -> JobRunner:
    return JobRunner(
        slot=settings.slot_id,
        generator=generator_of(args),
        store=Storage(settings),
        publish=publish,
        scratch_dir=settings.scratch_dir,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_min_seconds=settings.checkpoint_min_seconds,
        progress_interval=settings.progress_interval_seconds,
    )


async def next_batch(
    consumer: AIOKafkaConsumer, topics: Sequence[str], wait_s: float = 0.05
) -> dict[TopicPartition, list[Any]]:
    """At most one record, from the first of `topics` (in order) whose assigned partitions have one
    fetched; waits `wait_s` when none has."""
    assigned = consumer.assignment()
    for topic in topics:
        partitions = [tp for tp in assigned if tp.topic == topic]
        if partitions:
            batch = await consumer.getmany(*partitions, timeout_ms=0, max_records=1)
            if batch:
                return batch
    await asyncio.sleep(wait_s)
    return {}


async def consume(
    consumer: AIOKafkaConsumer, runner: JobRunner, stop: asyncio.Event, topics: Sequence[str]
) -> None:
    """One job at a time, interactive first; the offset is committed only after the job ended."""
    while not stop.is_set():
        batch = await next_batch(consumer, topics)
        for tp, records in batch.items():
            for msg in records:
                try:
                    event = decode_event(msg.value)
                except MalformedMessage as e:
                    log.warning("skipped unreadable record offset=%s: %s", msg.offset, e)
                    event = None
                if isinstance(event, JobRequested):
                    dispatch = JobDispatched(
                        job_id=event.job_id,
                        producer=runner.producer,
                        attempt=1,
                        slot=runner.slot,
                        request=event.request,
                    )
                    if await runner.run(dispatch) == "abandoned":
                        return  # shutting down: not committed, so the job is redelivered
                await consumer.commit({tp: msg.offset + 1})


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    settings = settings_of(args, "naive")
    producer = make_producer(settings, f"bench-naive-{args.index}")
    consumer = make_consumer(settings, group_id=args.group, client_id=f"bench-naive-{args.index}")
    await producer.start()
    await consumer.start()

    async def publish(event: JobEvent) -> object:
        return await publish_event(producer, args.events_topic, event)

    runner = make_runner(settings, args, publish)
    consumer.subscribe(args.topic, listener=Assignment(args.state_dir / f"naive-{args.index}.json"))
    drain = asyncio.create_task(_drain_on_stop(runner, stop))
    try:
        await consume(consumer, runner, stop, args.topic)
    finally:
        drain.cancel()
        await consumer.stop()
        await producer.stop()


async def _drain_on_stop(runner: JobRunner, stop: asyncio.Event) -> None:
    await stop.wait()
    runner.drain()


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--topic", action="append", required=True, help="a requests topic; first = first served")
    p.add_argument("--events-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    add_slot_options(p)
    args = p.parse_args(argv)
    args.slot = args.index
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    configure(f"naive-worker-{args.index}")
    run_until_signalled(lambda stop: serve(args, stop))


if __name__ == "__main__":
    main()
