"""The worker process of one GPU slot: its settings, model, Kafka and S3 clients, signals, and run.

The slot's loops are in `slot.py`, one attempt's flow in `runner.py`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from datetime import UTC, datetime, timedelta

import torch
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import JobEvent
from schemas.topics import JOBS_CONTROL, JOBS_DISPATCH, JOBS_EVENTS
from services.common.kafka import make_consumer, make_producer, partitions_of, publish_event
from services.common.logging import observe
from services.common.runtime import run_until_signalled, serve_metrics
from services.common.storage import Storage
from services.worker.engine import GenerationError, Generator, build_generator
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings
from services.worker.slot import GROUP, Slot
from services.worker.telemetry import watch_gpu

log = logging.getLogger("reelstream.worker")

# The generation thread feeds the GPU between steps. Woken by a finished step, it waits for the
# interpreter lock until its holder (the event loop storing the last job's video, an encode) gives it
# up, at the latest after the switch interval: with Python's 5 ms the GPU may wait that long.
GIL_SWITCH_SECONDS = 0.001


class JobsLeftOpen(Exception):
    """The worker stopped with jobs whose last event Kafka never took: exit non-zero, so the next
    process of the slot comes with a new boot id and the scheduler recovers them."""


async def start_control(settings: WorkerSettings) -> AIOKafkaConsumer:
    """Every partition of jobs.control, from `control_lookback_seconds` ago, so no recent cancel is missed."""
    consumer = make_consumer(
        settings, group_id=None, client_id=f"reelstream-worker-{settings.slot_id}-control"
    )
    await consumer.start()
    partitions = await partitions_of(settings, [JOBS_CONTROL])
    consumer.assign(partitions)
    since = int((datetime.now(UTC) - timedelta(seconds=settings.control_lookback_seconds)).timestamp() * 1000)
    offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
    for tp, found in offsets.items():
        if found is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, found.offset)
    return consumer


async def start_dispatch(
    settings: WorkerSettings, topic: str = JOBS_DISPATCH, group: str = GROUP
) -> tuple[AIOKafkaConsumer, TopicPartition]:
    """The slot's partition of `topic` (tests name their own topic and group)."""
    consumer = make_consumer(
        settings,
        group_id=group,
        client_id=f"reelstream-worker-{settings.slot_id}",
        auto_offset_reset="latest",
    )
    await consumer.start()
    tp = TopicPartition(topic, settings.slot_id)
    consumer.assign([tp])
    return consumer, tp


def load_generator(settings: WorkerSettings) -> Generator:
    """Load the model before touching Kafka: a worker without its model must not look alive."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    generator = build_generator(settings.model, settings.engine())
    generator.load()
    return generator


async def serve(
    settings: WorkerSettings,
    stop: asyncio.Event,
    generator: Generator | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Run this slot until `stop`. `generator` replaces the catalog's (benchmarks inject a simulated one);
    `ready` is set while the slot may be sent jobs. Raises `JobsLeftOpen` when it stops leaving jobs
    without their last event."""
    if generator is None:
        generator = await asyncio.to_thread(load_generator, settings)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    producer = make_producer(settings, f"reelstream-worker-{settings.slot_id}")
    await producer.start()
    control = await start_control(settings)
    dispatch, tp = await start_dispatch(settings)

    async def publish(event: JobEvent) -> object:
        return await publish_event(producer, JOBS_EVENTS, event)

    storage = Storage(settings)
    runner = JobRunner(
        slot=settings.slot_id,
        generator=generator,
        store=storage,
        publish=publish,
        scratch_dir=settings.scratch_dir,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_min_seconds=settings.checkpoint_min_seconds,
        progress_interval=settings.progress_interval_seconds,
        upload_retry_seconds=settings.upload_retry_seconds,
        preview_every=settings.preview_every_steps,
        preview_min_seconds=settings.preview_min_seconds,
    )
    slot = Slot(settings, producer, runner, ready)
    try:
        await slot.operate(dispatch, tp, control, stop)
    finally:
        await dispatch.stop()
        await control.stop()
        await producer.stop()
        await storage.close()
    if unfinished := slot.unfinished():
        raise JobsLeftOpen(", ".join(unfinished))


def run() -> None:
    settings = WorkerSettings()
    observe(f"worker-{settings.slot_id}", settings)
    ready = threading.Event()
    if settings.metrics_port is not None:
        watch_gpu()
    serve_metrics(settings.metrics_port, ready=ready.is_set)
    try:
        run_until_signalled(lambda stop: serve(settings, stop, ready=ready))
    except GenerationError as e:
        log.error("worker cannot start: %s", e.message)
        sys.exit(2)
    except JobsLeftOpen as e:
        log.error("stopped leaving jobs without their last event (the scheduler recovers them): %s", e)
        sys.exit(3)


if __name__ == "__main__":
    run()
