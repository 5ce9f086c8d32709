"""The notifier against the real Kafka and Postgres, calling a real HTTP receiver on loopback.

Each test feeds its own uuid-named topics under its own consumer name; the notifier's tables live in a
scratch database migrated with alembic (dropped after the module), so the live stack is left alone. The
receiver checks every signature with the reference implementation (`standardwebhooks`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from standardwebhooks import Webhook, WebhookVerificationError

from schemas.dlq import DeadLetter
from schemas.envelope import encode_event
from schemas.events import (
    JobCancelled,
    JobDispatched,
    JobError,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    VideoResult,
    utcnow,
)
from schemas.jobs import Phase, WebhookEvent
from schemas.samples import resolved_request
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.routes import deliveries
from services.api.settings import ApiSettings
from services.common.db import make_engine
from services.common.settings import CommonSettings
from services.common.storage import Storage
from services.common.targets import static_results
from services.common.tenants import Caller, ensure_tenant, webhook_secrets
from services.notifier.main import consume, run_live
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store
from tests.unit.api.test_api_submit import CALLER, KEY, static_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
TopicFactory = Callable[..., Awaitable[str]]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
async def notifier_db(settings: CommonSettings) -> AsyncIterator[str]:
    """A scratch database at the newest migration, for the whole module."""
    url = make_url(settings.database_url.get_secret_value())
    name = f"reelstream_notifiertest_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(_dsn(url.render_as_string(hide_password=False)), timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"postgres is not reachable ({e!r}); start the stack with `make up`")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        scratch = url.set(database=name).render_as_string(hide_password=False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alembic", "upgrade", "head", cwd=REPO,
            env={**os.environ, "REELSTREAM_DATABASE_URL": scratch},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
        assert process.returncode == 0, f"alembic upgrade head failed:\n{output.decode()}"
        yield scratch
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _tenant_secrets(db: str, tenant: str) -> list[str]:
    engine = create_async_engine(db)
    try:
        async with AsyncSession(engine) as session, session.begin():
            await ensure_tenant(session, tenant)
        async with AsyncSession(engine) as session:
            return await webhook_secrets(session, tenant)
    finally:
        await engine.dispose()


async def _query(db: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_dsn(db))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@dataclass
class Receiver:
    """A webhook endpoint on loopback: verifies each call, fails the first `failures` attempts of each id."""

    secret: str
    failures: int = 0
    delay: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as e:
            self.unverified.append(str(e))
            return web.Response(status=400)
        msg_id = request.headers["webhook-id"]
        self.attempts[msg_id] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.attempts[msg_id] <= self.failures:
            return web.Response(status=500, text="not now")
        self.accepted[msg_id] += 1
        self.bodies[msg_id] = payload
        return web.Response(status=204)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        runners.append(runner)
        receiver.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    yield producer
    await producer.stop()


async def publish(producer: AIOKafkaProducer, topic: str, *events: JobEvent) -> None:
    for event in events:
        record = encode_event(event)
        await producer.send_and_wait(topic, record.value, key=record.key, headers=record.headers)


def notifier_settings(db: str, requested: str, events: str, dlq: str, **extra: Any) -> NotifierSettings:
    values: dict[str, Any] = {
        "database_url": db,
        "requested_topic": requested,
        "events_topic": events,
        "dlq_topic": dlq,
        "consumer_name": f"test-notifier-{uuid.uuid4().hex[:8]}",
        "poll_timeout_ms": 100,
        "assignment_refresh_seconds": 0.5,
        "retry_initial_seconds": 0.2,
        "retry_cap_seconds": 0.5,
        "give_up_after_seconds": 120,
        "sender_poll_seconds": 0.1,
        "stats_interval_seconds": 0.5,
        "request_timeout_seconds": 2,
        "allow_http": True,
        "allow_private_targets": True,
        **extra,
    }
    return NotifierSettings(**values)


@asynccontextmanager
async def running(
    settings: NotifierSettings, resolver: AbstractResolver | None = None
) -> AsyncIterator[None]:
    """The notifier (both loops) in this process until the block ends; then SIGTERM's path: `stop`."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_live(settings, stop, resolver))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def requested(job: uuid.UUID, tenant: str, url: str | None, **request: Any) -> JobRequested:
    resolved = resolved_request().model_copy(update={"webhook_url": url, **request})
    return JobRequested(job_id=job, producer="api", tenant=tenant, request=resolved, request_hash="0" * 64)


def ev(kind: type[Any], job: uuid.UUID, attempt: int = 1, **fields: Any) -> JobEvent:
    event: JobEvent = kind(job_id=job, producer="test", attempt=attempt, **fields)
    return event


def succeeded(job: uuid.UUID, attempt: int = 1) -> JobEvent:
    result = VideoResult(
        video_key=f"jobs/{job}/attempt-{attempt}/video.mp4", poster_key=None, size_bytes=1, width=256,
        height=256, fps=8, frames=9, duration_seconds=1.125,
    )  # fmt: skip
    return ev(JobSucceeded, job, attempt, result=result, generation_seconds=1.0)


def run_of(job: uuid.UUID, attempt: int = 1) -> list[JobEvent]:
    return [
        ev(JobDispatched, job, attempt, slot=0, request=resolved_request()),
        ev(JobStarted, job, attempt, slot=0, worker_id="worker-0"),
        ev(JobProgress, job, attempt, phase=Phase.DENOISING, progress=0.5, step=1, total_steps=2),
    ]


@pytest.fixture
async def topics(new_topic: TopicFactory) -> tuple[str, str, str]:
    """jobs.requested (LogAppendTime, as the real one), jobs.events and a DLQ of the test's own."""
    return (
        await new_topic(2, {"message.timestamp.type": "LogAppendTime"}),
        await new_topic(3),
        await new_topic(1),
    )


async def test_every_terminal_event_arrives_exactly_once_after_failed_attempts(
    notifier_db: str,
    topics: tuple[str, str, str],
    producer: AIOKafkaProducer,
    serve: Callable[[Receiver], Awaitable[Receiver]],
) -> None:
    requested_topic, events_topic, dlq = topics
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    (secret, *_) = await _tenant_secrets(notifier_db, tenant)
    receiver = await serve(Receiver(secret, failures=2))
    jobs = [uuid.uuid4() for _ in range(6)]
    ok, failed, cancelled, early, silent, late = jobs
    retried, progress_fan, ancient = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    terminal = {
        ok: succeeded(ok),
        failed: ev(JobFailed, failed, error=JobError(code="internal", message="boom")),
        cancelled: ev(JobCancelled, cancelled),
        early: succeeded(early),
        retried: succeeded(retried, attempt=2),
    }
    stale = succeeded(retried, attempt=1)
    history = succeeded(ancient).model_copy(update={"occurred_at": utcnow() - timedelta(days=2)})
    progress = run_of(progress_fan)
    too_late = requested(late, tenant, receiver.url).model_copy(
        update={"accept_by": utcnow() - timedelta(minutes=1)}
    )
    # The events of `early` come before its request; those of `late` belong to a submit that missed its
    # deadline; `silent` asked for no webhook.
    await publish(producer, events_topic, *run_of(early), terminal[early])
    await publish(
        producer,
        requested_topic,
        *(requested(job, tenant, receiver.url) for job in (ok, failed, cancelled, early, retried)),
        requested(silent, tenant, None),
        requested(ancient, tenant, receiver.url),
        requested(
            progress_fan, tenant, receiver.url, webhook_events=[WebhookEvent.STARTED, WebhookEvent.PROGRESS]
        ),
        too_late,
    )
    await publish(producer, events_topic, *run_of(ok), terminal[ok], *run_of(failed), terminal[failed])
    await publish(producer, events_topic, *run_of(cancelled), terminal[cancelled], *progress)
    await publish(producer, events_topic, *run_of(silent), succeeded(silent), *run_of(late), succeeded(late))
    # Older than max_event_age_seconds (a day): history, not news.
    await publish(
        producer,
        events_topic,
        history,
    )
    await publish(
        producer,
        events_topic,
        *run_of(retried, 1),
        ev(JobRetrying, retried, 1, reason="slot silent", next_attempt=2),
        *run_of(retried, 2),
        stale,  # the given-up attempt ends after all: not a webhook
        terminal[retried],
    )

    settings = notifier_settings(notifier_db, requested_topic, events_topic, dlq)
    wanted = {str(e.event_id) for e in terminal.values()} | {str(e.event_id) for e in progress[1:]}
    async with running(settings):
        await eventually(lambda: set(receiver.accepted) >= wanted, "every wanted event acknowledged")
        await asyncio.sleep(1.0)  # anything extra or repeated would arrive meanwhile

    assert receiver.unverified == []
    assert set(receiver.accepted) == wanted, "an unwanted event was sent (stale, filtered or no webhook)"
    assert str(history.event_id) not in receiver.attempts
    assert str(stale.event_id) not in receiver.attempts
    assert all(count == 1 for count in receiver.accepted.values()), receiver.accepted
    assert all(receiver.attempts[msg_id] == 3 for msg_id in wanted), receiver.attempts
    for job, event in terminal.items():
        body = receiver.bodies[str(event.event_id)]
        assert body["type"] == event.type.value
        assert body["data"]["job_id"] == str(job)
    assert receiver.bodies[str(terminal[retried].event_id)]["data"]["attempt"] == 2

    log = await _query(
        notifier_db,
        "SELECT d.id, d.status, a.number, a.outcome, a.status_code FROM webhook_deliveries d"
        " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.job_id = $1 ORDER BY a.number",
        ok,
    )
    assert [(r["number"], r["outcome"], r["status_code"]) for r in log] == [
        (1, "failed", 500), (2, "failed", 500), (3, "succeeded", 204),
    ]  # fmt: skip
    assert {r["status"] for r in log} == {"succeeded"}
    leftovers = await _query(notifier_db, "SELECT job_id FROM webhook_parked WHERE job_id = ANY($1)", jobs)
    assert {r["job_id"] for r in leftovers} == {late}  # kept until purged: no request ever came for it


class TableResolver(AbstractResolver):
    """Names from a fixed table: the answer a DNS server under a client's control could give."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return static_results(host, port, self.table[host])

    async def close(self) -> None:
        pass


async def test_private_targets_are_refused_dead_at_once_and_dead_lettered(
    notifier_db: str,
    topics: tuple[str, str, str],
    producer: AIOKafkaProducer,
    serve: Callable[[Receiver], Awaitable[Receiver]],
    kafka_bootstrap: str,
) -> None:
    requested_topic, events_topic, dlq = topics
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    (secret, *_) = await _tenant_secrets(notifier_db, tenant)
    receiver = await serve(Receiver(secret))
    port = receiver.url.split(":")[2].split("/")[0]
    targets = {
        uuid.uuid4(): receiver.url,  # a real server on loopback: never called
        uuid.uuid4(): f"http://localhost:{port}/hook",  # a name resolving to loopback
        uuid.uuid4(): "http://169.254.169.254/latest/meta-data/",
        uuid.uuid4(): "http://internal.example/hook",  # resolves to 10.0.0.5
        uuid.uuid4(): "http://[::ffff:127.0.0.1]:9/hook",
    }
    await publish(producer, requested_topic, *(requested(job, tenant, url) for job, url in targets.items()))
    ends = {job: succeeded(job) for job in targets}
    await publish(producer, events_topic, *ends.values())

    settings = notifier_settings(notifier_db, requested_topic, events_topic, dlq, allow_private_targets=False)
    resolver = TableResolver({"internal.example": ["10.0.0.5"], "localhost": ["127.0.0.1", "::1"]})
    async with running(settings, resolver):

        async def all_dead() -> bool:
            rows = await _query(
                notifier_db, "SELECT status FROM webhook_deliveries WHERE job_id = ANY($1)", list(targets)
            )
            return len(rows) == len(targets) and all(r["status"] == "dead" for r in rows)

        await eventually(all_dead, "every delivery to a private target dead")

        async def all_dead_lettered() -> bool:
            rows = await _query(
                notifier_db,
                "SELECT 1 FROM webhook_deliveries WHERE job_id = ANY($1) AND dead_lettered_at IS NOT NULL",
                list(targets),
            )
            return len(rows) == len(targets)

        await eventually(all_dead_lettered, "every dead delivery dead-lettered")
        letters = await _dead_letters(kafka_bootstrap, dlq, len(targets))

    assert receiver.attempts == Counter(), "a refused target was called"
    rows = await _query(
        notifier_db,
        "SELECT d.job_id, d.attempts, d.dead_reason, a.outcome, a.error FROM webhook_deliveries d"
        " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.job_id = ANY($1)",
        list(targets),
    )
    assert len(rows) == len(targets), "a refused target was tried more than once"
    assert {r["outcome"] for r in rows} == {"refused"}
    reasons = {r["job_id"]: r["dead_reason"] for r in rows}
    assert all(reason.startswith("target refused") for reason in reasons.values()), reasons
    assert "link-local" in "".join(r for j, r in reasons.items() if "169.254" in targets[j])
    assert "10.0.0.5 is a private address" in "".join(
        r for j, r in reasons.items() if "internal" in targets[j]
    )
    assert "loopback" in "".join(r for j, r in reasons.items() if "localhost" in targets[j])
    assert {letter.source_topic for letter in letters} == {events_topic}
    assert {letter.consumer for letter in letters} == {settings.consumer_name}
    assert all("target refused" in letter.reason for letter in letters)


async def _dead_letters(bootstrap: str, topic: str, count: int) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < count:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    letters += [DeadLetter.from_headers(m.headers) for m in messages]
    finally:
        await consumer.stop()
    return letters


async def test_kill_9_mid_delivery_loses_nothing(
    notifier_db: str,
    topics: tuple[str, str, str],
    producer: AIOKafkaProducer,
    serve: Callable[[Receiver], Awaitable[Receiver]],
    tmp_path: Path,
) -> None:
    requested_topic, events_topic, dlq = topics
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    (secret, *_) = await _tenant_secrets(notifier_db, tenant)
    receiver = await serve(Receiver(secret, failures=1, delay=0.05))
    jobs = [uuid.uuid4() for _ in range(60)]
    ends = {job: succeeded(job) for job in jobs}
    await publish(producer, requested_topic, *(requested(job, tenant, receiver.url) for job in jobs))
    # A claim of the killed process lapses 1 s after the attempt's timeout, then its delivery is redone.
    settings = notifier_settings(
        notifier_db, requested_topic, events_topic, dlq, max_in_flight=4, lease_margin_seconds=1
    )
    env = {**os.environ, **_env_of(settings)}
    log = tmp_path / "notifier.log"

    async def start() -> asyncio.subprocess.Process:
        with log.open("ab") as out:
            return await asyncio.create_subprocess_exec(
                str(REPO / ".venv" / "bin" / "reelstream-notifier"), env=env, stdout=out, stderr=out
            )

    first = await start()
    try:
        # Half the events before the kill, half while it is down.
        await publish(producer, events_topic, *(ends[job] for job in jobs[:30]))
        await eventually(lambda: len(receiver.accepted) >= 5, "some deliveries before the kill", 60)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), timeout=10)
        done_before = len(receiver.accepted)
        await publish(producer, events_topic, *(ends[job] for job in jobs[30:]))
    finally:
        if first.returncode is None:
            first.kill()
    second = await start()
    try:
        wanted = {str(e.event_id) for e in ends.values()}
        await eventually(
            lambda: set(receiver.accepted) >= wanted, "every event delivered after a restart", 90
        )

        async def all_recorded() -> bool:
            rows = await _query(
                notifier_db,
                "SELECT 1 FROM webhook_deliveries WHERE job_id = ANY($1) AND status = 'succeeded'",
                jobs,
            )
            return len(rows) == len(jobs)

        await eventually(all_recorded, "every delivery recorded as delivered", 60)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if second.returncode is None:
            second.kill()

    assert done_before < len(jobs), "the kill came after everything was delivered: nothing was tested"
    assert receiver.unverified == []
    assert set(receiver.accepted) == wanted
    # At least once: a delivery in flight at the kill may come twice, nothing else.
    assert sum(receiver.accepted.values()) - len(wanted) <= settings.max_in_flight
    rows = await _query(
        notifier_db,
        "SELECT status, count(*) AS n FROM webhook_deliveries WHERE job_id = ANY($1) GROUP BY 1",
        jobs,
    )
    assert {r["status"]: r["n"] for r in rows} == {"succeeded": len(jobs)}


def _env_of(settings: NotifierSettings) -> dict[str, str]:
    """REELSTREAM_* variables that make a notifier process use `settings`."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"REELSTREAM_{name.upper()}"] = json.dumps(raw) if isinstance(raw, (list, dict)) else str(raw)
    return env


async def _insert_job(db: str, job: uuid.UUID, tenant: str) -> None:
    """The job's read-model row, as the projector would write it (the api finds jobs there)."""
    conn = await asyncpg.connect(_dsn(db))
    try:
        await conn.execute(
            "INSERT INTO jobs (id, tenant, status, phase, progress, priority, model, request, request_hash,"
            " attempt, created_at, queued_at, updated_at, last_seq) VALUES ($1, $2, 'succeeded', 'succeeded',"
            " 1, 'batch', 'tiny-mochi', '{}', 'h', 1, now(), now(), now(), 2)",
            job,
            tenant,
        )
    finally:
        await conn.close()


def api_client(db: str, key: str, extra_keys: Mapping[str, Caller]) -> httpx.AsyncClient:
    """The api in process on the scratch database, with the delivery routes, keys given up front."""
    settings = ApiSettings(database_url=db)
    app = create_app(settings)
    app.include_router(deliveries.router)
    app.state.reelstream = app_state(
        settings,
        make_engine(settings),
        cast(JobPublisher, None),
        cast(Storage, None),
        JobNotifier(settings.database_url.get_secret_value()),
        keys=static_keys(**extra_keys),
    )
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers)


async def test_the_delivery_log_and_a_redelivery_of_a_dead_delivery_over_the_api(
    notifier_db: str,
    topics: tuple[str, str, str],
    producer: AIOKafkaProducer,
    serve: Callable[[Receiver], Awaitable[Receiver]],
) -> None:
    requested_topic, events_topic, dlq = topics
    tenant = CALLER.tenant
    (secret, *_) = await _tenant_secrets(notifier_db, tenant)
    receiver = await serve(Receiver(secret, failures=1000))
    job = uuid.uuid4()
    end = succeeded(job)
    await _insert_job(notifier_db, job, tenant)
    await publish(producer, requested_topic, requested(job, tenant, receiver.url))
    await publish(producer, events_topic, end)
    settings = notifier_settings(
        notifier_db, requested_topic, events_topic, dlq, give_up_after_seconds=0.6, retry_cap_seconds=0.2
    )
    async with running(settings):

        async def dead() -> bool:
            rows = await _query(notifier_db, "SELECT status FROM webhook_deliveries WHERE job_id = $1", job)
            return [r["status"] for r in rows] == ["dead"]

        await eventually(dead, "the delivery dead after its retry window")

    other = dataclasses.replace(CALLER, key_id=uuid.uuid4(), tenant="someone-else")
    async with api_client(notifier_db, KEY, {"rs_other": other}) as api:
        listed = await api.get(f"/v1/jobs/{job}/deliveries")
        assert listed.status_code == 200, listed.text
        (delivery,) = listed.json()["data"]
        assert delivery["id"] == str(end.event_id)
        assert delivery["status"] == "dead"
        assert delivery["event_type"] == "job.succeeded"
        assert delivery["dead_reason"].startswith("HTTP 500")
        numbers = [a["number"] for a in delivery["attempts"]]
        assert numbers == sorted(numbers, reverse=True)
        assert len(numbers) == delivery["attempt_count"] >= 2
        assert {(a["outcome"], a["status_code"]) for a in delivery["attempts"]} == {("failed", 500)}

        foreign = await api.get(f"/v1/jobs/{job}/deliveries", headers={"Authorization": "Bearer rs_other"})
        assert foreign.status_code == 404
        assert foreign.headers["content-type"] == "application/problem+json"
        missing = await api.post(f"/v1/jobs/{job}/deliveries/{uuid.uuid4()}/redeliver")
        assert missing.status_code == 404
        assert missing.json()["title"] == "Delivery not found"
        garbage = await api.post(f"/v1/jobs/{job}/deliveries/not-a-uuid/redeliver")
        assert garbage.status_code == 422

        again = await api.post(f"/v1/jobs/{job}/deliveries/{end.event_id}/redeliver")
        assert again.status_code == 202, again.text
        assert again.json()["status"] == "pending"
        assert again.json()["dead_reason"] is None

    receiver.failures = 0
    async with running(settings):
        await eventually(lambda: receiver.accepted[str(end.event_id)] == 1, "the redelivery acknowledged")
        await eventually(lambda: _delivery_status(notifier_db, job, "succeeded"), "the redelivery recorded")

    async with api_client(notifier_db, KEY, {}) as api:
        (delivery,) = (await api.get(f"/v1/jobs/{job}/deliveries")).json()["data"]
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"][0]["outcome"] == "succeeded"
    assert delivery["attempts"][0]["status_code"] == 204
    assert delivery["attempts"][0]["number"] == delivery["attempt_count"]


async def _delivery_status(db: str, job: uuid.UUID, status: str) -> bool:
    rows = await _query(db, "SELECT status FROM webhook_deliveries WHERE job_id = $1", job)
    return [r["status"] for r in rows] == [status]


async def test_old_deliveries_and_jobs_are_purged_pending_and_unlettered_dead_ones_stay(
    notifier_db: str,
) -> None:
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    ids = {
        name: uuid.uuid4() for name in ("delivered", "pending", "dead_unlettered", "dead_lettered", "recent")
    }
    conn = await asyncpg.connect(_dsn(notifier_db))
    try:
        for name, delivery in ids.items():
            status = name.split("_")[0] if name != "recent" else "succeeded"
            status = {"delivered": "succeeded"}.get(status, status)
            created = utcnow() if name == "recent" else long_ago
            await conn.execute(
                "INSERT INTO webhook_deliveries (id, job_id, tenant, url, event_type, occurred_at, payload,"
                " source_topic, source_partition, source_offset, status, attempts, failures, created_at,"
                " retry_since, next_attempt_at, dead_lettered_at) VALUES ($1, $2, 't', 'https://x.example/',"
                " 'job.succeeded', $3, '{}', 'topic', 0, 0, $4, 1, 0, $3, $3, $3, $5)",
                delivery, uuid.uuid4(), created, status, created if name == "dead_lettered" else None,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, number, started_at, duration_ms, outcome)"
                " VALUES ($1, 1, $2, 1.0, 'failed')",
                delivery, created,
            )  # fmt: skip
    finally:
        await conn.close()

    old_job, new_job = uuid.uuid4(), uuid.uuid4()
    for job, at in ((old_job, long_ago), (new_job, utcnow())):
        await _query(
            notifier_db,
            "INSERT INTO webhook_jobs (job_id, requested, events, attempt, terminal, updated_at)"
            " VALUES ($1, true, '[]', 1, true, $2)",
            job,
            at,
        )
    engine = create_async_engine(notifier_db)
    try:
        purged = await Store(engine).purge_deliveries(long_ago + timedelta(days=1))
        forgotten = await Store(engine).purge_jobs(long_ago + timedelta(days=1))
    finally:
        await engine.dispose()

    assert forgotten == 1
    kept = await _query(
        notifier_db, "SELECT job_id FROM webhook_jobs WHERE job_id = ANY($1)", [old_job, new_job]
    )
    assert [r["job_id"] for r in kept] == [new_job]

    assert purged == 2
    left = await _query(
        notifier_db, "SELECT id FROM webhook_deliveries WHERE id = ANY($1)", list(ids.values())
    )
    assert {r["id"] for r in left} == {ids["pending"], ids["dead_unlettered"], ids["recent"]}
    attempts = await _query(
        notifier_db,
        "SELECT delivery_id FROM webhook_attempts WHERE delivery_id = ANY($1)",
        list(ids.values()),
    )
    assert {r["delivery_id"] for r in attempts} == {r["id"] for r in left}
    await _query(notifier_db, "DELETE FROM webhook_deliveries WHERE id = ANY($1)", list(ids.values()))


async def test_a_slow_receiver_with_a_backlog_does_not_hold_back_another(
    notifier_db: str,
    topics: tuple[str, str, str],
    producer: AIOKafkaProducer,
    serve: Callable[[Receiver], Awaitable[Receiver]],
) -> None:
    requested_topic, events_topic, dlq = topics
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    (secret, *_) = await _tenant_secrets(notifier_db, tenant)
    slow = await serve(Receiver(secret, delay=1.5))
    fast = await serve(Receiver(secret))
    slow_jobs = [uuid.uuid4() for _ in range(12)]
    fast_jobs = [uuid.uuid4() for _ in range(4)]
    await publish(producer, requested_topic, *(requested(job, tenant, slow.url) for job in slow_jobs))
    await publish(producer, requested_topic, *(requested(job, tenant, fast.url) for job in fast_jobs))
    # The slow receiver's backlog is due first.
    await publish(producer, events_topic, *(succeeded(job) for job in slow_jobs))
    await publish(producer, events_topic, *(succeeded(job) for job in fast_jobs))
    settings = notifier_settings(
        notifier_db, requested_topic, events_topic, dlq, max_in_flight=4, max_in_flight_per_target=2,
        request_timeout_seconds=5,
    )  # fmt: skip
    async with running(settings):
        await eventually(lambda: len(fast.accepted) == len(fast_jobs), "the fast receiver served", 30)
        slow_done = len(slow.accepted)
        await eventually(lambda: len(slow.accepted) == len(slow_jobs), "the slow receiver served", 60)

    # Alone the slow backlog takes 12 x 1.5 s / 2 at a time = 9 s; the fast one was done within its first
    # rounds, not after it.
    assert slow_done <= 4, f"the fast receiver waited for {slow_done} slow deliveries"
    assert max(slow.attempts.values()) == 1


class CountingStore(Store):
    """The real store, counting its transactions (one per applied batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    async def apply_batch(
        self, consumer: str, batch: Any, now: datetime, max_age: Any = None
    ) -> tuple[int, int]:
        self.batches.append(len(batch))
        return await super().apply_batch(consumer, batch, now, max_age)


async def test_a_burst_grows_the_batches_not_the_transactions(
    notifier_db: str, topics: tuple[str, str, str], producer: AIOKafkaProducer
) -> None:
    requested_topic, events_topic, dlq = topics
    settings = notifier_settings(notifier_db, requested_topic, events_topic, dlq, batch_interval_ms=300)
    engine = make_engine(settings)
    store = CountingStore(engine)
    stop = asyncio.Event()
    task = asyncio.create_task(consume(settings, store, asyncio.Event(), stop))
    try:
        await publish(producer, requested_topic, requested(uuid.uuid4(), "acme", None))
        await eventually(lambda: sum(store.batches) == 1, "the first request")
        assert store.batches == [1], "a record after a quiet spell is applied on its own, at once"
        began = asyncio.get_running_loop().time()
        for _ in range(30):  # a steady stream of submits, one about every 20 ms
            await publish(producer, requested_topic, requested(uuid.uuid4(), "acme", None))
            await asyncio.sleep(0.02)
        took = asyncio.get_running_loop().time() - began
        await eventually(lambda: sum(store.batches) == 31, "every request")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await engine.dispose()
    paced = store.batches[1:]
    assert len(paced) <= took / 0.3 + 2, f"{len(paced)} transactions in {took:.1f}s: {paced}"
