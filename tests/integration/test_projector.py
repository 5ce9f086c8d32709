"""The projector against the real Kafka and Postgres: live projection, DLQ, restarts, replay and compare.

Each test projects its own uuid-named topics into its own Postgres schema under its own consumer name, so
it neither sees nor disturbs the live read model in `public`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.dlq import DeadLetter
from schemas.envelope import Record, encode_event
from schemas.events import (
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import JobStatus, Phase
from schemas.samples import resolved_request
from schemas.topics import DLQ
from services.common.consumer import OFFSETS
from services.common.db import make_engine
from services.common.errors import DatabaseUnavailable
from services.common.kafka import make_producer, publish_event, send
from services.common.readmodel import NOTIFY_CHANNEL
from services.common.settings import CommonSettings
from services.projector.consumer import STALLED, Projection, open_clients
from services.projector.fold import EMPTY_HISTORY, admit_all, fold
from services.projector.replay import compare, replay
from services.projector.settings import ProjectorSettings
from services.projector.store import BatchResult, Incoming, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TopicFactory = Callable[..., Awaitable[str]]
Ends = dict[tuple[str, int], int]
JOB = uuid.UUID("3f0d8c1e-2a4b-4c6d-8e9f-0a1b2c3d4e5f")
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
E = TypeVar("E", bound=JobEvent)


def ev(kind: type[E], seconds: float, attempt: int = 1, **fields: Any) -> E:
    """An event of JOB at T0 + `seconds`."""
    at = T0 + timedelta(seconds=seconds)
    return kind(job_id=JOB, occurred_at=at, producer="test", attempt=attempt, **fields)


def requested() -> JobRequested:
    return ev(JobRequested, 0, 0, request=resolved_request(), tenant="t", request_hash="0" * 64)


def dispatched(attempt: int, seconds: float, slot: int = 1) -> JobDispatched:
    return ev(JobDispatched, seconds, attempt, slot=slot, request=resolved_request())


def started(attempt: int, seconds: float, slot: int = 1) -> JobStarted:
    return ev(JobStarted, seconds, attempt, slot=slot, worker_id=f"worker-{slot}")


def progress(attempt: int, seconds: float, step: int, total: int = 4) -> JobProgress:
    return ev(
        JobProgress,
        seconds,
        attempt,
        phase=Phase.DENOISING,
        progress=step / total,
        step=step,
        total_steps=total,
    )


def succeeded(attempt: int, seconds: float) -> JobSucceeded:
    result = VideoResult(
        video_key="v.mp4", poster_key=None, size_bytes=1, width=848, height=480, fps=30, frames=163,
        duration_seconds=5.433,
    )  # fmt: skip
    return ev(JobSucceeded, seconds, attempt, result=result, generation_seconds=1.0)


@pytest.fixture(scope="module")
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
async def new_store(engine: AsyncEngine) -> AsyncIterator[Callable[[str], Awaitable[Store]]]:
    """Creates uuid-named schemas with empty read-model tables, dropped after the test."""
    stores: list[Store] = []

    async def create(kind: str) -> Store:
        store = Store(engine, f"test_projector_{kind}_{uuid.uuid4().hex[:12]}")
        await store.create_schema()
        stores.append(store)
        return store

    yield create
    for store in stores:
        await store.drop_schema()


@pytest.fixture
async def topics(new_topic: TopicFactory) -> ProjectorSettings:
    """Settings projecting fresh topics (2 and 3 partitions) under a fresh consumer name."""
    return ProjectorSettings(
        requested_topic=await new_topic(2),
        events_topic=await new_topic(3),
        consumer_name=f"test-projector-{uuid.uuid4().hex[:8]}",
        poll_timeout_ms=100,
        batch_max_records=4,  # several batches per test
        assignment_refresh_seconds=0.5,
    )


@pytest.fixture
async def producer(settings: CommonSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings, client_id="test-projector-producer")
    await producer.start()
    yield producer
    await producer.stop()


async def produce(producer: AIOKafkaProducer, topic: str, events: Sequence[JobEvent], ends: Ends) -> None:
    for event in events:
        meta = await publish_event(producer, topic, event)
        ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)


async def produce_raw(producer: AIOKafkaProducer, topic: str, value: bytes, ends: Ends) -> None:
    meta = await send(producer, topic, Record(key=str(JOB).encode(), value=value, headers=[]))
    ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)


@asynccontextmanager
async def projector(settings: ProjectorSettings, store: Store) -> AsyncIterator[asyncio.Task[None]]:
    """The live loop in a task, stopped (and awaited) on exit."""
    stop = asyncio.Event()
    async with open_clients(settings, dead_letters=True) as clients:
        task = asyncio.create_task(Projection(settings, store, clients).run(stop))
        try:
            yield task
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)


async def wait_consumed(store: Store, settings: ProjectorSettings, ends: Ends, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while True:
        offsets = await store.load_offsets(settings.consumer_name)
        if all(offsets.get(tp, 0) >= end for tp, end in ends.items()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"projector did not reach {ends} in {timeout:.0f}s; it is at {offsets}")
        await asyncio.sleep(0.1)


async def dlq_end_offsets(settings: CommonSettings, admin: AIOKafkaAdminClient) -> dict[TopicPartition, int]:
    """Where the DLQ ends now: the test reads only what is parked after this."""
    described = {t["topic"]: t for t in await admin.describe_topics()}
    assert DLQ in described, f"{DLQ} is missing; `make up` creates it"
    tps = [TopicPartition(DLQ, p["partition"]) for p in described[DLQ]["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def dead_letters_from(
    settings: CommonSettings, start: dict[TopicPartition, int], sources: set[str], expected: int
) -> list[DeadLetter]:
    """The DLQ records parked after `start` whose source is one of `sources`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[DeadLetter] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + 20
        while len(found) < expected and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                letters = (DeadLetter.from_headers(m.headers) for m in msgs)
                found += [letter for letter in letters if letter.source_topic in sources]
    finally:
        await consumer.stop()
    return found


async def listen(database_url: str, received: list[str]) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    await conn.add_listener(NOTIFY_CHANNEL, lambda *args: received.append(args[-1]))
    return conn


def lifecycle_with_noise() -> tuple[list[JobEvent], JobRequested]:
    """jobs.events of one job with a redelivery and a stale-attempt event, and its request."""
    started_1, progress_2 = started(1, 2), progress(2, 7, 2)
    done = succeeded(2, 9)
    events: list[JobEvent] = [
        dispatched(1, 1),
        started_1,
        ev(JobRetrying, 3, 1, reason="slot lost", next_attempt=2),
        dispatched(2, 4, slot=4),
        started(2, 5, slot=4),
        progress(1, 6, 3),  # stale: attempt 1 after attempt 2 was dispatched
        progress_2,
        started_1,  # redelivered
        ev(JobCheckpointed, 8, 2, step=2, total_steps=4, checkpoint_key="ck/1"),
        done,
        done,  # redelivered
    ]
    return events, requested()


EXPECTED_ROWS = [
    (0, "job.requested", True),
    (1, "job.dispatched", True),
    (2, "job.started", True),
    (3, "job.retrying", True),
    (4, "job.dispatched", True),
    (5, "job.started", True),
    (6, "job.progress", False),  # the stale attempt
    (7, "job.progress", True),
    (8, "job.checkpointed", True),
    (9, "job.succeeded", True),
]


async def produce_scenario(
    producer: AIOKafkaProducer, settings: ProjectorSettings
) -> tuple[list[JobEvent], JobRequested, Ends]:
    """The noisy lifecycle, most of it before the request, plus two records for the DLQ."""
    events, request = lifecycle_with_noise()
    ends: Ends = {}
    await produce(producer, settings.events_topic, events[:6], ends)
    await produce_raw(producer, settings.events_topic, b"\xff this is not json", ends)
    await produce(producer, settings.requested_topic, [request], ends)
    await produce(producer, settings.requested_topic, [progress(2, 1, 1)], ends)  # wrong topic for it
    await produce(producer, settings.events_topic, events[6:], ends)
    return events, request, ends


def assert_job_row(job: dict[str, Any], events: list[JobEvent], request: JobRequested) -> None:
    assert (job["status"], job["attempt"], job["slot"], job["progress"]) == ("succeeded", 2, 4, 1.0)
    assert job["result"] == events[-1].model_dump(mode="json")["result"]
    assert job["checkpoint_key"] == "ck/1"
    assert (job["created_at"], job["finished_at"]) == (request.occurred_at, events[-1].occurred_at)
    assert (job["updated_at"], job["last_seq"]) == (events[-1].occurred_at, 9)


async def assert_replay_equals(
    settings: ProjectorSettings, engine: AsyncEngine, live: Store, replayed: Store, records: int
) -> None:
    summary = await replay(settings, engine, replayed.schema or "", asyncio.Event())
    assert (summary.records, summary.stored) == (records, len(EXPECTED_ROWS))
    report = await compare(engine, replayed.schema or "", live_schema=live.schema)
    assert report.differences == []
    assert (report.jobs_compared, report.events_compared) == (1, len(EXPECTED_ROWS))


async def test_projects_a_job_and_replays_to_the_same_rows(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
    database_url: str,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings, live = topics, await new_store("live")
    dlq_start = await dlq_end_offsets(settings, kafka_admin)
    events, request, ends = await produce_scenario(producer, settings)
    notified: list[str] = []
    listener = await listen(database_url, notified)
    try:
        async with projector(settings, live):
            await wait_consumed(live, settings, ends)
        await asyncio.sleep(0.2)  # NOTIFYs travel after the commit
    finally:
        await listener.close()

    snapshot = await live.snapshot()
    assert_job_row(snapshot.jobs[JOB], events, request)
    rows = sorted(snapshot.events.values(), key=lambda row: row["seq"])
    assert [(row["seq"], row["type"], row["applied"]) for row in rows] == EXPECTED_ROWS
    assert str(JOB) in notified
    assert await live.load_offsets(settings.consumer_name) == ends
    sources = {settings.events_topic, settings.requested_topic}
    letters = await dead_letters_from(settings, dlq_start, sources, 2)
    assert sorted(letter.source_topic for letter in letters) == sorted(sources)
    assert all(letter.reason and letter.consumer == settings.consumer_name for letter in letters)

    await assert_replay_equals(settings, engine, live, await new_store("replay"), sum(ends.values()))


async def test_event_payloads_are_stored_as_the_events_json_objects(
    new_store: Callable[[str], Awaitable[Store]], engine: AsyncEngine
) -> None:
    """The payload is bound as pydantic's JSON text: Postgres must store it as an object, not a string."""
    store = await new_store("payload")
    prompt = 'a heron at dawn, 夜明け, "quoted" \\ and \u2028'
    asked = resolved_request().model_copy(update={"prompt": prompt})
    request = requested().model_copy(update={"request": asked})
    events: list[JobEvent] = [request, dispatched(1, 1), progress(1, 2, 1)]
    batch = [Incoming("jobs.events", 0, offset, event) for offset, event in enumerate(events)]
    await store.apply_batch("test-payload", batch, notify=False)
    query = text(f'SELECT event_id, jsonb_typeof(payload) AS kind, payload FROM "{store.schema}".job_events')
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    stored = {row["event_id"]: (row["kind"], row["payload"]) for row in rows}
    assert stored == {event.event_id: ("object", event.model_dump(mode="json")) for event in events}
    assert stored[request.event_id][1]["request"]["prompt"] == prompt


async def test_an_event_id_stored_already_or_twice_in_a_batch_is_left_out_as_before(
    new_store: Callable[[str], Awaitable[Store]], engine: AsyncEngine
) -> None:
    """The COPY keeps what ON CONFLICT (event_id) DO NOTHING did for an id another job used: the first
    row stays, the batch commits, the second job's row is still projected."""
    store = await new_store("ids")
    first = requested()
    other = uuid.uuid4()
    reused = first.model_copy(update={"job_id": other})  # a second job's request under the same event id
    twice = [progress(1, 3, 1), progress(1, 4, 2)]
    twice[1] = twice[1].model_copy(update={"job_id": other, "event_id": twice[0].event_id})
    batches = [[first], [reused, dispatched(1, 1), *twice]]
    for number, events in enumerate(batches):
        batch = [Incoming("jobs.events", 0, 10 * number + i, event) for i, event in enumerate(events)]
        await store.apply_batch("test-ids", batch, notify=False)
    query = text(f'SELECT event_id, job_id FROM "{store.schema}".job_events')
    async with engine.connect() as conn:
        rows = dict((await conn.execute(query)).all())
    assert rows[first.event_id] == JOB
    # The store writes a batch's rows job by job, in the order of each job's first event: `other`'s first.
    assert rows[twice[0].event_id] == other
    assert len(rows) == 3  # first's request, the dispatch, one of the two progress events
    assert (await store.load_offsets("test-ids"))[("jobs.events", 0)] == 14


async def test_a_job_batch_by_batch_folds_the_same_whether_its_events_are_known_or_read(
    new_store: Callable[[str], Awaitable[Store]], engine: AsyncEngine
) -> None:
    """Each batch refolds the job from all its rows. A store takes the events of the rows it wrote or read
    from memory (`KnownEvents`), and a second store on the same schema, which knows none of them, writes
    batches in between: every row and the job's row still come out as in one batch, redeliveries and the
    stale attempt included."""
    events, request = lifecycle_with_noise()
    events = [request, *events]
    first = await new_store("known")
    second = Store(engine, first.schema)
    for offset, event in enumerate(events):
        store = second if offset % 3 == 2 else first
        await store.apply_batch("test-known", [Incoming("jobs.events", 0, offset, event)], notify=False)
    snapshot = await first.snapshot()
    assert_job_row(snapshot.jobs[JOB], events[1:], request)
    rows = sorted(snapshot.events.values(), key=lambda row: row["seq"])
    assert [(row["seq"], row["type"], row["applied"]) for row in rows] == EXPECTED_ROWS
    assert len(first.known) == len(EXPECTED_ROWS)  # its own rows, and the second store's it read back

    at_once = await new_store("at_once")
    batch = [Incoming("jobs.events", 0, offset, event) for offset, event in enumerate(events)]
    await at_once.apply_batch("test-known", batch, notify=False)
    report = await compare(engine, at_once.schema or "", live_schema=first.schema)
    assert report.differences == []
    assert (report.jobs_compared, report.events_compared) == (1, len(EXPECTED_ROWS))


async def test_a_row_the_store_wrote_is_not_read_back(
    new_store: Callable[[str], Awaitable[Store]], engine: AsyncEngine
) -> None:
    """A running job's later batches read which rows it has, but not the payloads of rows this store
    wrote: a payload changed behind its back (rows are never updated) does not reach its fold, while a
    store that knows nothing reads it."""
    store = await new_store("unread")
    head = [requested(), dispatched(1, 1), started(1, 2)]
    await store.apply_batch(
        "test-unread", [Incoming("jobs.events", 0, i, e) for i, e in enumerate(head)], notify=False
    )
    table = f'"{store.schema}".job_events'
    forged = text(f"UPDATE {table} SET payload = jsonb_set(payload, '{{slot}}', '7') WHERE seq = 2")
    async with engine.begin() as conn:
        await conn.execute(forged)
    step = progress(1, 3, 1)
    await store.apply_batch("test-unread", [Incoming("jobs.events", 0, 3, step)], notify=False)
    assert (await store.snapshot()).jobs[JOB]["slot"] == 1

    stranger = Store(engine, store.schema)
    await stranger.apply_batch(
        "test-unread", [Incoming("jobs.events", 0, 4, progress(1, 4, 2))], notify=False
    )
    assert (await stranger.snapshot()).jobs[JOB]["slot"] == 7


async def kill_after_first_commit(settings: ProjectorSettings, store: Store) -> None:
    """Run the loop and cancel it (no clean stop) once it has committed a batch, maybe mid-transaction."""
    async with open_clients(settings, dead_letters=True) as clients:
        task = asyncio.create_task(Projection(settings, store, clients).run(asyncio.Event()))
        while not await store.load_offsets(settings.consumer_name):
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_restarts_and_redelivery_change_nothing(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    settings, live = topics, await new_store("restart")
    request = requested()
    events: list[JobEvent] = [dispatched(1, 1), started(1, 2)]
    events += [progress(1, 3 + step, step, total=40) for step in range(1, 41)]
    events.append(succeeded(1, 50))
    ends: Ends = {}
    await produce(producer, settings.requested_topic, [request], ends)
    await produce(producer, settings.events_topic, events, ends)

    await kill_after_first_commit(settings, live)
    partial = await live.snapshot()
    assert 0 < len(partial.events) < len(events) + 1

    async with projector(settings, live):
        await wait_consumed(live, settings, ends)
    first = await live.snapshot()
    expected_rows, expected_job = _pure([request, *events])
    assert sorted((row["seq"], row["event_id"]) for row in first.events.values()) == expected_rows
    assert first.jobs[JOB] == expected_job
    assert expected_job["status"] == JobStatus.SUCCEEDED.value

    # Offsets lost: everything is read again, and nothing changes.
    async with engine.begin() as conn:
        await conn.execute(
            delete(OFFSETS).where(OFFSETS.c.consumer == settings.consumer_name),
            execution_options={"schema_translate_map": {None: live.schema}},
        )
    async with projector(settings, live):
        await wait_consumed(live, settings, ends)
    assert await live.snapshot() == first


def _pure(events: Sequence[JobEvent]) -> tuple[list[tuple[int, uuid.UUID]], dict[str, Any]]:
    """What the pure rules say the rows must be: (seq, event id) pairs and the jobs row."""
    rows, _ = admit_all(EMPTY_HISTORY, events)
    view = fold(rows)
    assert view is not None
    job = {**asdict(view), "status": view.status.value, "phase": view.phase.value}
    return sorted((row.seq, row.event.event_id) for row in rows), job


async def test_picks_up_partitions_added_while_running(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings, live = topics, await new_store("grow")
    ends: Ends = {}
    await produce(producer, settings.requested_topic, [requested()], ends)
    async with projector(settings, live):
        await wait_consumed(live, settings, ends)
        await kafka_admin.create_partitions({settings.events_topic: NewPartitions(total_count=4)})
        added = dispatched(1, 1)
        meta = await publish_to_partition(settings, settings.events_topic, 3, added)
        ends[(settings.events_topic, meta.partition)] = meta.offset + 1
        await wait_consumed(live, settings, ends)
    job = (await live.snapshot()).jobs[JOB]
    assert (job["attempt"], job["dispatched_at"]) == (1, added.occurred_at)


async def publish_to_partition(settings: CommonSettings, topic: str, partition: int, event: JobEvent) -> Any:
    """Publish to a partition that was just added (a fresh producer, once its metadata shows it)."""
    deadline = time.monotonic() + 20
    while True:
        producer = make_producer(settings, client_id="test-projector-grow")
        await producer.start()
        try:
            if partition in await producer.partitions_for(topic):
                return await publish_event(producer, topic, event, partition=partition)
        finally:
            await producer.stop()
        if time.monotonic() > deadline:
            pytest.fail(f"partition {partition} of {topic} never appeared")
        await asyncio.sleep(0.3)


async def test_waits_out_an_unreachable_database(
    topics: ProjectorSettings, producer: AIOKafkaProducer
) -> None:
    settings = topics.model_copy(update={"retry_max_seconds": 0.5})
    await produce(producer, settings.requested_topic, [requested()], {})
    url = make_url(settings.database_url.get_secret_value()).set(port=1)
    unreachable = create_async_engine(url, connect_args={"timeout": 2})
    try:
        async with projector(settings, Store(unreachable)) as task:
            await asyncio.sleep(2)
            assert not task.done(), "the loop must keep retrying, not crash"
    finally:
        await unreachable.dispose()


class CountingStore(Store):
    """A real store that remembers the size of each batch it applied."""

    def __init__(self, engine: AsyncEngine, schema: str | None) -> None:
        super().__init__(engine, schema)
        self.batches: list[int] = []

    async def apply_batch(self, consumer: str, batch: Sequence[Incoming], *, notify: bool) -> BatchResult:
        self.batches.append(len(batch))
        return await super().apply_batch(consumer, batch, notify=notify)


async def test_batches_grow_with_the_load_instead_of_the_transactions(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    settings = topics.model_copy(update={"batch_max_records": 500, "batch_interval_ms": 300})
    store = CountingStore(engine, (await new_store("paced")).schema)
    ends: Ends = {}
    async with projector(settings, store):
        await produce(producer, settings.requested_topic, [requested()], ends)
        await wait_consumed(store, settings, ends)
        assert store.batches == [1], "a record after a quiet spell is applied on its own, at once"
        began = time.monotonic()
        for step in range(1, 31):  # a steady stream, one record about every 20 ms
            await produce(producer, settings.events_topic, [progress(1, step, step, total=30)], ends)
            await asyncio.sleep(0.02)
        produced_for = time.monotonic() - began
        await wait_consumed(store, settings, ends)
    job = (await store.snapshot()).jobs[JOB]
    assert (job["step"], job["last_seq"]) == (30, 30)
    paced = store.batches[1:]
    assert sum(paced) == 30
    # One transaction per 300 ms while the stream lasts, plus the first record and the remainder.
    assert len(paced) <= produced_for / 0.3 + 2, f"{len(paced)} transactions in {produced_for:.1f}s: {paced}"


async def test_a_jobs_start_and_end_are_applied_at_once_not_after_the_batch_interval(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    """Progress gathers for the interval; an event a watcher waits for (a start, an end) ends the gather,
    and goes in one transaction with the progress gathered before it."""
    settings = topics.model_copy(update={"batch_max_records": 500, "batch_interval_ms": 2000})
    store = CountingStore(engine, (await new_store("awaited")).schema)
    ends: Ends = {}
    async with projector(settings, store):
        await produce(producer, settings.requested_topic, [requested()], ends)
        await wait_consumed(store, settings, ends)
        await produce(producer, settings.events_topic, [dispatched(1, 1)], ends)
        await wait_consumed(store, settings, ends)  # a 2-second gather begins
        await produce(producer, settings.events_topic, [started(1, 2), progress(1, 3, 1)], ends)
        await asyncio.sleep(0.2)
        sent = time.monotonic()
        await produce(producer, settings.events_topic, [succeeded(1, 4)], ends)
        await wait_consumed(store, settings, ends, timeout=10)
        took = time.monotonic() - sent
    job = (await store.snapshot()).jobs[JOB]
    assert job["status"] == JobStatus.SUCCEEDED
    assert took < 1.0, f"the end waited {took:.2f} s: the rest of the 2-second interval"
    assert store.batches[:2] == [1, 1] and sum(store.batches[2:]) == 3, store.batches


async def test_carries_on_after_postgres_closes_its_connections(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    engine: AsyncEngine,
) -> None:
    """What a Postgres restart or failover does to the live projector's pool, which has no pre-ping."""
    name = f"test-projector-{uuid.uuid4().hex[:8]}"
    settings = topics.model_copy(update={"service_name": name, "retry_max_seconds": 0.5})
    own = make_engine(settings, pre_ping=False)
    checked = await new_store("reconnect")  # the test reads through its own pool
    ends: Ends = {}
    try:
        async with projector(settings, Store(own, checked.schema)):
            await produce(producer, settings.requested_topic, [requested()], ends)
            await wait_consumed(checked, settings, ends)
            async with engine.connect() as conn:
                closed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = :name"
                    ),
                    {"name": name},
                )
            assert closed, "the projector's pooled connection shows under its service name"
            await produce(producer, settings.events_topic, [dispatched(1, 1)], ends)
            await wait_consumed(checked, settings, ends)
    finally:
        await own.dispose()
    assert (await checked.snapshot()).jobs[JOB]["attempt"] == 1


async def test_a_backend_terminated_during_a_transaction_is_a_retryable_outage(
    topics: ProjectorSettings, new_store: Callable[[str], Awaitable[Store]], engine: AsyncEngine
) -> None:
    """A failover mid-query reaches asyncpg as AdminShutdownError (SQLSTATE 57P01), not as a connection
    error: it must still read as Postgres gone (retry later), never as data the read model refused."""
    name = f"test-projector-{uuid.uuid4().hex[:8]}"
    own = make_engine(topics.model_copy(update={"service_name": name}), pre_ping=False)
    checked = await new_store("terminated")
    store = Store(own, checked.schema)

    async def terminate_once_running() -> None:
        for _ in range(100):
            async with engine.connect() as conn:
                closed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = :name AND state = 'active'"
                    ),
                    {"name": name},
                )
            if closed:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the sleeping transaction never showed in pg_stat_activity")

    try:
        killer = asyncio.create_task(terminate_once_running())
        with pytest.raises(DatabaseUnavailable):
            async with store._transaction() as conn:
                await conn.execute(text("SELECT pg_sleep(30)"))
        await killer
    finally:
        await own.dispose()


def poisoned_request(job_id: uuid.UUID, poison: Callable[[dict[str, Any]], None]) -> bytes:
    """A valid job.requested of `job_id` as JSON, with `poison` applied to its envelope: bytes that decode
    to an event but that Postgres cannot store."""
    event = requested().model_copy(update={"job_id": job_id, "event_id": uuid.uuid4()})
    envelope = json.loads(encode_event(event).value)
    poison(envelope)
    return json.dumps(envelope).encode()


def nul_in_idempotency_key(envelope: dict[str, Any]) -> None:
    envelope["idempotency_key"] = "key\u0000one"  # text cannot hold NUL


def nul_in_producer(envelope: dict[str, Any]) -> None:
    envelope["producer"] = "api\u0000"  # nor can jsonb (job_events.payload)


async def test_dead_letters_the_records_postgres_refuses_and_projects_the_rest(
    topics: ProjectorSettings,
    producer: AIOKafkaProducer,
    new_store: Callable[[str], Awaitable[Store]],
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    # One batch for all three records, so that the refused ones have to be found in it.
    settings = topics.model_copy(update={"batch_max_records": 500, "batch_interval_ms": 300})
    live = await new_store("refused")
    dlq_start = await dlq_end_offsets(settings, kafka_admin)
    refused = {uuid.uuid4(): nul_in_idempotency_key, uuid.uuid4(): nul_in_producer}
    ends: Ends = {}
    for job_id, poison in refused.items():
        await produce_raw(producer, settings.requested_topic, poisoned_request(job_id, poison), ends)
    await produce(producer, settings.requested_topic, [requested()], ends)
    async with projector(settings, live) as task:
        await wait_consumed(live, settings, ends)
        later = dispatched(1, 1)
        await produce(producer, settings.events_topic, [later], ends)
        await wait_consumed(live, settings, ends)
        assert not task.done()

    snapshot = await live.snapshot()
    assert set(snapshot.jobs) == {JOB}, "the refused jobs have no row; the good one has"
    assert snapshot.jobs[JOB]["dispatched_at"] == later.occurred_at, "and the projection kept going"
    letters = await dead_letters_from(settings, dlq_start, {settings.requested_topic}, len(refused))
    print(*(f"dead-lettered offset {letter.source_offset}: {letter.reason}" for letter in letters), sep="\n")
    assert len(letters) == len(refused)
    for letter in letters:
        assert "the read model refused it" in letter.reason
        assert "unsupported Unicode escape sequence" in letter.reason
        assert letter.consumer == settings.consumer_name


async def test_reports_stalled_while_the_database_is_unreachable(
    topics: ProjectorSettings, producer: AIOKafkaProducer, new_store: Callable[[str], Awaitable[Store]]
) -> None:
    settings = topics.model_copy(update={"retry_max_seconds": 0.5, "stall_seconds": 1.0})
    await produce(producer, settings.requested_topic, [requested()], {})
    async with projector(settings, await new_store("healthy")):
        await asyncio.sleep(1.5)
        assert STALLED.collect()[0].samples[0].value == 0
    url = make_url(settings.database_url.get_secret_value()).set(port=1)
    unreachable = create_async_engine(url, connect_args={"timeout": 2})
    try:
        async with projector(settings, Store(unreachable)):
            await asyncio.sleep(0.5)
            assert STALLED.collect()[0].samples[0].value == 0, "a first failure is not a stall yet"
            await asyncio.sleep(1.5)
            assert STALLED.collect()[0].samples[0].value == 1
    finally:
        await unreachable.dispose()
