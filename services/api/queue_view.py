"""The scheduler's queue view, followed from its compacted topic: a job's position and ETA are a lookup.

One consumer per api process, no group: it reads the newest record at start and every record after,
and keeps the last one as a dict. A view older than `max_age` seconds (the scheduler away) gives no
positions rather than stale ones. The loop has a time-out on each fetch and stops with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.events import utcnow
from schemas.topics import QUEUE_VIEW_MAX_BYTES
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Eta:
    wait_seconds: float  # until the job starts on a GPU
    run_seconds: float  # from then until its GPU work is done


Place = tuple[int | None, Eta | None]
Entry = tuple[int | None, float | None, float | None]  # (position, wait seconds, run seconds)
Load = tuple[int, int, float]  # a tenant's (jobs waiting, slots held, GPU seconds used today)


def parse_view(raw: bytes) -> tuple[datetime, dict[str, Entry], dict[str, Load]]:
    """The view's time, its entries by job id (as text) and the tenants' loads. Parsed once, with orjson
    and no pydantic model: a view of 10,000 jobs is read every half second on the api's event loop, and
    validating each id would hold every request up for tens of milliseconds. The layout is
    `schemas.queue.QueueView`."""
    view = orjson.loads(raw)
    if view.get("schema_version") != 1:
        raise ValueError(f"queue view schema_version {view.get('schema_version')!r}, this api reads 1")
    places: dict[str, Entry] = {}
    for jobs in view["lanes"].values():
        places.update({job_id: (index, wait, run) for index, (job_id, wait, run) in enumerate(jobs, 1)})
    for job_id, wait, run in view.get("held", []):
        places[job_id] = (None, wait, run)
    tenants = {tenant: (int(q), int(r), float(g)) for tenant, (q, r, g) in view.get("tenants", {}).items()}
    return datetime.fromisoformat(view["generated_at"]), places, tenants


def place_of(entry: Entry, age: float) -> Place:
    """A job's position and ETA from its entry in a view `age` seconds old: the time since is spent
    from its wait first, then from its run."""
    position, wait, run = entry
    if wait is None or run is None:
        return position, None
    waited = min(age, wait)
    return position, Eta(wait_seconds=wait - waited, run_seconds=max(run - (age - waited), 0.0))


def view_consumer(settings: CommonSettings) -> AIOKafkaConsumer:
    """No group and no commits: every api process reads every view. Fetch sizes fit the largest view."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="reelstream-api-queue-view",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=QUEUE_VIEW_MAX_BYTES,
        fetch_max_bytes=QUEUE_VIEW_MAX_BYTES,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 20_000),
    )


class QueueViewFollower:
    """The latest queue view on this process, kept current by one background consumer."""

    def __init__(self, settings: CommonSettings, topic: str, max_age_seconds: float = 30.0) -> None:
        self._settings = settings
        self._topic = topic
        self._max_age = timedelta(seconds=max_age_seconds)
        self._generated_at: datetime | None = None
        self._places: dict[str, Entry] = {}
        self._tenants: dict[str, Load] = {}
        # Submits this process accepted, by tenant: (when, wall clock), for the ones the view lacks yet.
        self._accepted: dict[str, deque[datetime]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def take(self, raw: bytes) -> None:
        """Keep the view in `raw` (a `schemas.queue.QueueView` as JSON)."""
        self._generated_at, self._places, self._tenants = parse_view(raw)

    def accepted(self, tenant: str, at: datetime) -> None:
        """A submit of `tenant` this process accepted at `at`: counted as waiting until a view newer
        than it exists."""
        self._accepted.setdefault(tenant, deque(maxlen=100_000)).append(at)

    def load(self, tenant: str) -> Load | None:
        """The tenant's jobs waiting (this process's newer submits included), slots held and GPU
        seconds used today, as the latest view says; None when there is no view fresh enough."""
        if self._generated_at is None or utcnow() - self._generated_at > self._max_age:
            return None
        queued, running, gpu = self._tenants.get(tenant, (0, 0, 0.0))
        recent = self._accepted.get(tenant)
        while recent and recent[0] <= self._generated_at:
            recent.popleft()
        return queued + len(recent or ()), running, gpu

    def lookup(self, job_id: uuid.UUID) -> Place:
        """(position in its lane, ETA) of a waiting or held job; (None, None) when the view does not
        have it, or the view is too old to trust."""
        entry = self._places.get(str(job_id))
        if self._generated_at is None or entry is None:
            return None, None
        age = (utcnow() - self._generated_at).total_seconds()
        if timedelta(seconds=age) > self._max_age:
            return None, None
        return place_of(entry, max(age, 0.0))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow_forever(), name="queue-view")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow_forever(self) -> None:
        while not self._stop.is_set():
            consumer = view_consumer(self._settings)
            try:
                await consumer.start()
                await self._follow(consumer)
            except (KafkaError, OSError, TimeoutError) as e:
                log.warning("queue view: lost Kafka, will reconnect: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 2.0)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        partition = TopicPartition(self._topic, 0)
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        consumer.seek(partition, max(end - 1, 0))
        while not self._stop.is_set():
            batch = await consumer.getmany(partition, timeout_ms=1000)
            records = batch.get(partition, [])
            if not records:
                continue
            newest = records[-1]
            started = time.perf_counter()
            try:
                self.take(newest.value)
            except (ValueError, KeyError, TypeError) as e:
                log.warning(
                    "queue view at offset %s is not readable, kept the last one: %s", newest.offset, e
                )
                continue
            log.debug(
                "queue view at offset %s taken in %.1f ms",
                newest.offset,
                1000 * (time.perf_counter() - started),
            )
