"""One job, one trace: the api, the scheduler, a worker slot, the projector and the notifier in process, on
fresh topics of the real Kafka, the real S3, a scratch schema and a scratch database of the real Postgres,
with spans kept in memory.

The trace starts at the POST /v1/jobs span and goes on through `ce_traceparent` on every record: the
scheduler's decision (parented on the job.requested record it kept for the job), the worker's attempt
and its phases (on the dispatch record), and the projector and the notifier taking each event (on the
event's record).
Run with `-s` to see the trace printed as a tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import JobEvent, TenantLimits
from schemas.topics import SNAPSHOT_MAX_BYTES
from services.api import publisher as api_publisher
from services.api.auth import StaticKeys
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.settings import ApiSettings
from services.common import tracing
from services.common.db import make_engine
from services.common.kafka import make_consumer, make_producer, partitions_of, publish_event
from services.common.settings import CommonSettings
from services.common.storage import Storage
from services.common.tenants import Caller
from services.notifier.main import run_live as run_notifier
from services.projector.consumer import Projection, open_clients
from services.projector.settings import ProjectorSettings
from services.projector.store import Store
from services.scheduler import main as scheduler_main
from services.scheduler.settings import SchedulerSettings
from services.scheduler.topics import SchedulerTopics
from services.worker import slot as worker_slot
from services.worker.engine.simulated import SimulatedGenerator
from services.worker.main import start_dispatch
from services.worker.runner import JobRunner
from services.worker.settings import WorkerSettings
from services.worker.slot import Slot
from tests.integration.test_notifier import notifier_db, notifier_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TopicFactory = Callable[..., Awaitable[str]]
Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
KEY = "test-tracing-key"
CALLER = Caller(
    key_id=uuid.uuid4(),
    tenant="tracing",
    admin=False,
    limits=TenantLimits(),
    max_queued_jobs=100,
    submits_per_second=1000.0,
    reads_per_second=1000.0,
)
MODEL = "tiny-mochi"
# What the trace of a job that succeeds on its first attempt holds at least (with the simulated engine,
# which has no separate "loading" once loaded).
EXPECTED = {
    "POST /v1/jobs": "api",
    "publish job.requested": "api",
    "scheduler.queued": "scheduler",
    "scheduler.dispatch": "scheduler",
    "worker.attempt": "worker",
    "worker.encoding_prompt": "worker",
    "worker.denoising": "worker",
    "worker.checkpoint": "worker",
    "worker.decoding": "worker",
    "worker.encoding_video": "worker",
    "worker.uploading": "worker",
    "worker.publish job.succeeded": "worker",
    "projector.apply job.requested": "projector",
    "projector.apply job.dispatched": "projector",
    "projector.apply job.started": "projector",
    "projector.apply job.checkpointed": "projector",
    "projector.apply job.succeeded": "projector",
    "notifier.queue job.requested": "notifier",
    "notifier.queue job.succeeded": "notifier",
}
__all__ = ["notifier_db"]  # the notifier test's scratch database (at the newest migration), reused


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


@pytest.fixture
async def topics(new_topic: TopicFactory) -> SchedulerTopics:
    compact = {"cleanup.policy": "compact"}
    return SchedulerTopics(
        requested=await new_topic(2),
        events=await new_topic(2),
        control=await new_topic(1),
        dispatch=await new_topic(1),
        heartbeat=await new_topic(1, compact),
        snapshot=await new_topic(1, compact | {"max.message.bytes": str(SNAPSHOT_MAX_BYTES)}),
        queue=await new_topic(1, compact),
    )


@pytest.fixture
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[Store]:
    store = Store(engine, f"test_tracing_{uuid.uuid4().hex[:12]}")
    await store.create_schema()
    yield store
    await store.drop_schema()


@contextlib.asynccontextmanager
async def running(*loops: Loop) -> AsyncIterator[None]:
    """The loops in tasks until the block ends; then stopped, and their errors raised."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        yield
        for task in tasks:
            if task.done():
                task.result()  # a loop that died: its error, not a timeout further on
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


def scheduler_loop(settings: CommonSettings, topics: SchedulerTopics) -> Loop:
    scheduler_settings = SchedulerSettings(
        kafka_bootstrap=settings.kafka_bootstrap, gpu_slots=1, tick_seconds=0.1, queue_view_interval_seconds=0
    )
    return lambda stop: scheduler_main.serve(scheduler_settings, stop, topics)


def projector_loop(settings: CommonSettings, topics: SchedulerTopics, store: Store) -> Loop:
    projector_settings = ProjectorSettings(
        kafka_bootstrap=settings.kafka_bootstrap,
        requested_topic=topics.requested,
        events_topic=topics.events,
        consumer_name=f"test-tracing-{uuid.uuid4().hex[:8]}",
        poll_timeout_ms=100,
        assignment_refresh_seconds=0.5,
    )

    async def run(stop: asyncio.Event) -> None:
        async with open_clients(projector_settings, dead_letters=True) as clients:
            await Projection(projector_settings, store, clients).run(stop)

    return run


def worker_loop(settings: CommonSettings, topics: SchedulerTopics, scratch: Path) -> Loop:
    """Slot 0 as `services.worker.main.serve` wires it, on the test's topics, with the simulated engine."""
    worker_settings = WorkerSettings(
        kafka_bootstrap=settings.kafka_bootstrap,
        slot=0,
        model=MODEL,
        checkpoint_every=2,
        checkpoint_min_seconds=0,
        heartbeat_seconds=0.5,
        progress_interval_seconds=0.05,
        scratch_dir=scratch,
    )

    async def run(stop: asyncio.Event) -> None:
        producer = make_producer(worker_settings, "test-tracing-worker")
        await producer.start()
        control = make_consumer(worker_settings, group_id=None, client_id="test-tracing-control")
        await control.start()
        control.assign(await partitions_of(worker_settings, [topics.control]))
        dispatch, tp = await start_dispatch(
            worker_settings, topic=topics.dispatch, group=f"test-tracing-{uuid.uuid4().hex}"
        )
        storage = Storage(worker_settings)

        async def publish(event: JobEvent) -> object:
            return await publish_event(producer, topics.events, event)

        generator = SimulatedGenerator(MODEL, seconds_per_step=0.03, encode_prompt_seconds=0.02)
        generator.load()
        runner = JobRunner(
            slot=0,
            generator=generator,
            store=storage,
            publish=publish,
            scratch_dir=scratch,
            checkpoint_every=2,
            checkpoint_min_seconds=0,
            progress_interval=0.05,
        )
        try:
            await Slot(worker_settings, producer, runner).operate(dispatch, tp, control, stop)
        finally:
            await dispatch.stop()
            await control.stop()
            await producer.stop()
            await storage.close()

    return run


def notifier_loop(database: str, topics: SchedulerTopics) -> Loop:
    settings = notifier_settings(database, topics.requested, topics.events, topics.control)
    return lambda stop: run_notifier(settings, stop)


@contextlib.asynccontextmanager
async def api(topics: SchedulerTopics) -> AsyncIterator[httpx.AsyncClient]:
    """The api app in process with a real publisher (to the test's requested topic) and a static key."""
    settings = ApiSettings()
    publisher = JobPublisher(settings)
    await publisher.connect()
    app = create_app(settings)
    db = make_engine(settings)
    app.state.reelstream = app_state(
        settings,
        db,
        publisher,
        cast(Storage, None),
        JobNotifier(settings.database_url.get_secret_value()),
        keys=StaticKeys({KEY: CALLER}),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {KEY}"}
        ) as client:
            yield client
    finally:
        await publisher.stop()
        await db.dispose()


def tree(spans: Sequence[ReadableSpan]) -> str:
    """The trace as an indented tree: name, service, duration and start offset from the root."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(s)
    t0 = min(s.start_time or 0 for s in spans)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            start, end = (s.start_time or 0) - t0, (s.end_time or 0) - (s.start_time or 0)
            service = str((s.attributes or {}).get("reelstream.service", "?"))
            lines.append(
                f"{'  ' * depth}{s.name:<{44 - 2 * depth}} {service:<10} +{start / 1e6:8.1f} ms"
                f" {end / 1e6:8.1f} ms  span={s.context.span_id:016x}"
                f" parent={s.parent.span_id if s.parent else 0:016x}"
            )
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def wait_for_span(exporter: InMemorySpanExporter, name: str, seconds: float = 90) -> None:
    async with asyncio.timeout(seconds):
        while not any(s.name == name for s in exporter.get_finished_spans()):
            await asyncio.sleep(0.2)


def attribute(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


async def test_one_connected_trace_per_job_across_every_service(
    settings: CommonSettings,
    topics: SchedulerTopics,
    store: Store,
    notifier_db: str,
    spans: InMemorySpanExporter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the test's topics: the stack's own scheduler and workers must neither see nor feed this job.
    monkeypatch.setattr(api_publisher, "JOBS_REQUESTED", topics.requested)
    monkeypatch.setattr(worker_slot, "WORKERS_HEARTBEAT", topics.heartbeat)
    monkeypatch.setattr(worker_slot, "JOBS_EVENTS", topics.events)
    storage = Storage(settings)
    async with (
        running(
            scheduler_loop(settings, topics),
            worker_loop(settings, topics, tmp_path),
            projector_loop(settings, topics, store),
            notifier_loop(notifier_db, topics),
        ),
        api(topics) as client,
    ):
        response = await client.post(
            "/v1/jobs",
            json={"prompt": "a lighthouse in fog", "model": MODEL},
            headers={"X-Request-ID": "trace-test-1"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["X-Request-ID"] == "trace-test-1"
        job_id = response.json()["id"]
        await wait_for_span(spans, "projector.apply job.succeeded")
        await wait_for_span(spans, "notifier.queue job.succeeded")
    try:
        await storage.delete_prefix(f"jobs/{job_id}/")
    finally:
        await storage.close()

    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == "POST /v1/jobs"]
    trace_id = root.context.trace_id
    ours = [s for s in finished if s.context.trace_id == trace_id]
    print(f"\ntrace {trace_id:032x} of job {job_id}: {len(ours)} spans\n{tree(ours)}")

    # One trace per job: every span that names the job is in it.
    named = [s for s in finished if attribute(s, "reelstream.job_id") == job_id]
    assert named and {s.context.trace_id for s in named} == {trace_id}
    # Every step of the job is in it, from the service it belongs to.
    found = {s.name: str(attribute(s, "reelstream.service")) for s in ours}
    missing = {name: service for name, service in EXPECTED.items() if found.get(name) != service}
    assert not missing, f"not in the trace (or from another service): {missing}\n{tree(ours)}"
    # Connected: one root, and every other span's parent is in the trace.
    ids = {s.context.span_id for s in ours}
    roots = [s for s in ours if s.parent is None or s.parent.span_id not in ids]
    assert roots == [root], [r.name for r in roots]

    def one(name: str) -> ReadableSpan:
        (span,) = [s for s in ours if s.name == name]
        return span

    def parent_of(name: str) -> str:
        parent = one(name).parent
        assert parent is not None
        return next(s.name for s in ours if s.context.span_id == parent.span_id)

    # The hops over Kafka: each consumer's span is a child of the span that published the record.
    assert parent_of("publish job.requested") == "POST /v1/jobs"
    assert parent_of("scheduler.dispatch") == "publish job.requested"  # kept with the job
    assert parent_of("worker.attempt") == "scheduler.dispatch"  # the dispatch record
    assert parent_of("projector.apply job.requested") == "publish job.requested"
    assert parent_of("projector.apply job.dispatched") == "scheduler.dispatch"
    assert parent_of("projector.apply job.succeeded") == "worker.publish job.succeeded"
    assert parent_of("notifier.queue job.succeeded") == "worker.publish job.succeeded"
    assert parent_of("worker.publish job.succeeded") == "worker.attempt"
    for phase in ("encoding_prompt", "denoising", "decoding", "encoding_video", "uploading"):
        assert parent_of(f"worker.{phase}") == "worker.attempt"
    checkpoints = [s for s in ours if s.name == "worker.checkpoint"]
    assert checkpoints and all(
        s.parent is not None and s.parent.span_id == one("worker.denoising").context.span_id
        for s in checkpoints
    )
    attempt = one("worker.attempt")
    assert attribute(attempt, "reelstream.outcome") == "succeeded"
    assert attribute(attempt, "reelstream.attempt") == 1
    # Phases follow each other inside the attempt.
    order = [one(f"worker.{p}") for p in ("encoding_prompt", "denoising", "decoding")]
    assert all((a.end_time or 0) <= (b.start_time or 0) for a, b in itertools.pairwise(order))
    assert (attempt.start_time or 0) <= (order[0].start_time or 0)
