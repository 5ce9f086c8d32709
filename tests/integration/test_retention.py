"""Deletion and retention against the real Kafka, Postgres and S3: the projector removes a tombstoned
job's row and history, the sweeper expires old jobs (objects gone, tombstone on Kafka, row gone) and
empties once more the prefixes of jobs deleted lately; a replay agrees with the live read model.

Each test projects its own uuid-named topics into its own Postgres schema, like test_projector.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.envelope import decode_event
from schemas.events import (
    DeletionReason,
    EventType,
    JobDeleted,
    JobDispatched,
    JobEvent,
    JobRequested,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.samples import resolved_request
from services.common.db import make_engine
from services.common.kafka import Producer, make_producer, publish_event
from services.common.settings import CommonSettings
from services.common.storage import Storage, checkpoint_key, poster_key, video_key
from services.projector.consumer import Projection, open_clients
from services.projector.replay import compare, replay
from services.projector.retention import Sweeper
from services.projector.settings import ProjectorSettings
from services.projector.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings)
    try:
        async with engine.connect():
            pass
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"postgres is not reachable ({e!r}); start the stack with `make up`")
    yield engine
    await engine.dispose()


@pytest.fixture
async def stores(engine: AsyncEngine) -> AsyncIterator[Callable[[str], Awaitable[Store]]]:
    made: list[Store] = []

    async def create(kind: str) -> Store:
        store = Store(engine, f"test_retention_{kind}_{uuid.uuid4().hex[:12]}")
        await store.create_schema()
        made.append(store)
        return store

    yield create
    for store in made:
        await store.drop_schema()


@pytest.fixture
async def topics(new_topic: TopicFactory) -> ProjectorSettings:
    return ProjectorSettings(
        requested_topic=await new_topic(2),
        events_topic=await new_topic(2),
        consumer_name=f"test-retention-{uuid.uuid4().hex[:8]}",
        poll_timeout_ms=100,
        assignment_refresh_seconds=0.5,
        retention_days=1,
        deleted_grace_seconds=3,  # the second look comes 3 s after a delete
        deleted_recheck_window_seconds=60,
        sweep_interval_seconds=0.2,
        sweep_batch=2,  # several pages
    )


@pytest.fixture
async def producer(settings: CommonSettings) -> AsyncIterator[Producer]:
    producer = make_producer(settings, client_id="test-retention-producer")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def storage(settings: CommonSettings) -> AsyncIterator[Storage]:
    async with Storage(settings) as storage:
        yield storage


def finished_job(job_id: uuid.UUID, ended: datetime) -> tuple[JobRequested, list[JobEvent]]:
    """A job that succeeded at `ended`: its request and its jobs.events."""
    request = resolved_request()
    result = VideoResult(
        video_key=video_key(job_id, 1), poster_key=poster_key(job_id, 1), size_bytes=3, width=848,
        height=480, fps=30, frames=163, duration_seconds=163 / 30,
    )  # fmt: skip
    start = ended - timedelta(seconds=30)
    common = {"job_id": job_id, "tenant": "acme"}
    requested = JobRequested(
        **common, occurred_at=start, producer="api", request=request, request_hash="0" * 64
    )
    return requested, [
        JobDispatched(**common, occurred_at=start, producer="s", attempt=1, slot=0, request=request),
        JobStarted(**common, occurred_at=start, producer="w", attempt=1, slot=0, worker_id="w"),
        JobSucceeded(
            **common, occurred_at=ended, producer="w", attempt=1, result=result, generation_seconds=9
        ),
    ]  # fmt: skip


async def put_objects(storage: Storage, job_id: uuid.UUID) -> list[str]:
    keys = [video_key(job_id, 1), poster_key(job_id, 1), checkpoint_key(job_id, 1, 2)]
    for key in keys:
        await storage.put_bytes(key, b"abc", "application/octet-stream")
    return keys


async def count_objects(storage: Storage, job_id: uuid.UUID) -> int:
    async with storage.client() as s3:
        total = 0
        for prefix in (f"jobs/{job_id}/", f"checkpoints/{job_id}/"):
            page = await s3.list_objects_v2(Bucket=storage.bucket, Prefix=prefix)
            total += page.get("KeyCount", 0)
        return total


@asynccontextmanager
async def projecting(settings: ProjectorSettings, store: Store) -> AsyncIterator[None]:
    stop = asyncio.Event()
    async with open_clients(settings, dead_letters=True) as clients:
        task = asyncio.create_task(Projection(settings, store, clients).run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def tombstones_on(settings: ProjectorSettings, topic: str) -> list[JobDeleted]:
    """Every job.deleted on the topic, from its beginning."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found = []
        batch = await consumer.getmany(timeout_ms=2000)
        while batch:
            found += [decode_event(m.value) for records in batch.values() for m in records]
            batch = await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()
    return [event for event in found if isinstance(event, JobDeleted)]


async def test_the_sweeper_expires_old_jobs_and_the_projector_forgets_them(
    topics: ProjectorSettings,
    producer: Producer,
    storage: Storage,
    stores: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    settings, live = topics, await stores("live")
    now = datetime.now(UTC)
    old = [uuid.uuid4() for _ in range(3)]  # three expired jobs: two pages of sweep_batch=2
    recent = uuid.uuid4()
    for job_id, ended in [*((j, now - timedelta(days=2)) for j in old), (recent, now - timedelta(hours=1))]:
        request, events = finished_job(job_id, ended)
        await publish_event(producer, settings.requested_topic, request)
        for event in events:
            await publish_event(producer, settings.events_topic, event)
        await put_objects(storage, job_id)
    try:
        async with projecting(settings, live):

            async def jobs() -> set[uuid.UUID]:
                return set((await live.snapshot()).jobs)

            async def all_projected() -> bool:
                return await jobs() == {*old, recent}

            await eventually(all_projected, "projecting the four jobs")
            sweeper = Sweeper(settings, engine, storage, producer, schema=live.schema)
            result = await sweeper.sweep()
            swept = time.monotonic()
            assert (result.expired, result.objects_deleted, result.rechecked) == (3, 9, 0)
            assert [await count_objects(storage, j) for j in old] == [0, 0, 0]
            assert await count_objects(storage, recent) == 3

            async def only_recent_left() -> bool:
                return await jobs() == {recent}

            await eventually(only_recent_left, "the projector removing the expired rows")
            snapshot = await live.snapshot()
            # Of each expired job only its tombstone stays (it fences off whatever comes later).
            kept = sorted(
                (row["job_id"], row["type"]) for row in snapshot.events.values() if row["job_id"] in old
            )
            assert kept == sorted((j, EventType.DELETED.value) for j in old)
            assert len([row for row in snapshot.events.values() if row["job_id"] == recent]) == 4

            # A slot that still ran a job writes after its delete: the next sweep empties the prefix again.
            await storage.put_bytes(video_key(old[0], 2), b"late", "video/mp4")
            await asyncio.sleep(max(0.0, swept + settings.deleted_grace_seconds - time.monotonic()))
            again = await sweeper.sweep()
            assert (again.expired, again.rechecked, again.leftovers) == (0, 3, 1)
            assert await count_objects(storage, old[0]) == 0
            assert (await sweeper.sweep()).rechecked == 0  # each tombstone gets its second look once

            # A late event of a deleted job changes nothing.
            late = JobDeleted(job_id=old[1], producer="api", attempt=1, tenant="acme")
            await publish_event(producer, settings.events_topic, late)
            await asyncio.sleep(1)
            assert await jobs() == {recent}
    finally:
        await storage.delete_job_objects(recent)

    tombstones = await tombstones_on(settings, settings.events_topic)
    expired = [t for t in tombstones if t.reason is DeletionReason.RETENTION]
    assert sorted(t.job_id for t in expired) == sorted(old)
    assert all(t.tenant == "acme" and t.objects_deleted == 3 and t.producer == "projector" for t in expired)

    replayed = await stores("replay")
    await replay(settings, engine, replayed.schema or "", asyncio.Event())
    report = await compare(engine, replayed.schema or "", live_schema=live.schema)
    assert report.differences == []


async def test_without_retention_nothing_expires_and_the_loop_stops_when_told(
    topics: ProjectorSettings,
    producer: Producer,
    storage: Storage,
    stores: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    settings = topics.model_copy(update={"retention_days": None})
    live = await stores("off")
    sweeper = Sweeper(settings, engine, storage, producer, schema=live.schema)
    assert (await sweeper.sweep()).expired == 0
    stop = asyncio.Event()
    task = asyncio.create_task(sweeper.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
