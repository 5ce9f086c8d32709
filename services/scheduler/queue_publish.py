"""Publishes the queue view (`queue_view.py`) on `reelstream.scheduler.queue` for the api to read.

Between two planning rounds the loop asks `due()`; a view is computed at most every `interval` and sent
when the queue's order changed, or every `refresh` even if not (the estimates drift from what happened).
Sending happens in the background, one at a time, each within the timeout: a view that cannot be sent is
only logged, since the next one replaces it, and dispatching never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.queue import QUEUE_VIEW_KEY, QueueView
from schemas.topics import QUEUE_VIEW_MAX_BYTES
from services.common.kafka import Producer
from services.scheduler.queue_view import queue_view
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import SchedulerState

log = logging.getLogger(__name__)


def view_producer(settings: SchedulerSettings) -> AIOKafkaProducer:
    """acks=all and idempotent like every producer here; zstd, since a view of thousands of jobs repeats
    its field layout on every entry (gzip, at aiokafka's level 9, took a third of a busy scheduler's
    CPU with 8,000 jobs queued)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="reelstream-scheduler-queue",
        acks="all",
        enable_idempotence=True,
        compression_type="zstd",
        max_request_size=QUEUE_VIEW_MAX_BYTES,
        linger_ms=0,
        request_timeout_ms=int(settings.queue_view_timeout_seconds * 1000),
    )


def order_of(view: QueueView) -> tuple[tuple[uuid.UUID, ...], ...]:
    """What makes two views differ for a reader beyond the clock: who waits where, and who is held."""
    lanes = tuple(tuple(job_id for job_id, _, _ in jobs) for _, jobs in sorted(view.lanes.items()))
    return (*lanes, tuple(job_id for job_id, _, _ in view.held))


class QueueViewWriter:
    def __init__(self, settings: SchedulerSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        # Renewed when its sequence state breaks (a broker restart), as every producer here.
        self.producer = Producer(settings, "reelstream-scheduler-queue", lambda: view_producer(settings))
        self.in_flight: asyncio.Task[None] | None = None
        self.computed_at = float("-inf")
        self.sent_at = float("-inf")
        self.last_order: tuple[tuple[uuid.UUID, ...], ...] | None = None
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self.settings.queue_view_interval_seconds > 0

    async def start(self) -> None:
        if self.enabled:
            await self.producer.start()

    async def stop(self) -> None:
        if self.in_flight is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.in_flight, self.settings.queue_view_timeout_seconds)
        if self.enabled:
            await self.producer.stop()

    def offer(self, state: SchedulerState) -> None:
        """Compute the view if one is due and send it if it says something new."""
        now = time.monotonic()
        idle = self.in_flight is None or self.in_flight.done()
        if not self.enabled or not idle or now - self.computed_at < self.settings.queue_view_interval_seconds:
            return
        self.computed_at = now
        view = queue_view(state, datetime.now(UTC))
        order = order_of(view)
        if order == self.last_order and now - self.sent_at < self.settings.queue_view_refresh_seconds:
            return
        self.last_order, self.sent_at = order, now
        self.in_flight = asyncio.create_task(self.write(view.model_dump_json().encode()))

    async def write(self, raw: bytes) -> None:
        try:
            async with asyncio.timeout(self.settings.queue_view_timeout_seconds):
                await self.producer.send_and_wait(self.topic, value=raw, key=QUEUE_VIEW_KEY)
        except (KafkaError, OSError, TimeoutError) as e:
            log.warning("could not publish the queue view (%d bytes): %r", len(raw), e)
            self.last_order = None  # send the next one whatever it says
            return
        self.written += 1
