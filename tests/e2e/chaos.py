"""Helpers of the chaos tests: kill and restart parts of the running system, watch Kafka directly, and
check the delivery guarantees afterwards.

Processes are found through the pid files of infra/ (`.run/<name>.pid`) and checked against their
command line before any signal is sent, so only this checkout's own processes are ever touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.envelope import MalformedMessage, decode_event, decode_heartbeat
from schemas.topics import JOBS_EVENTS, JOBS_REQUESTED, WORKERS_HEARTBEAT
from services.common.kafka import partitions_of
from services.common.readmodel import ConsumerOffset, Job, JobEventRow
from services.common.settings import CommonSettings
from services.common.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run"
LOGS = RUN / "logs"
SETTINGS = CommonSettings()
SLOTS = SETTINGS.gpu_slots
SERVICES = ("api", "scheduler", "projector", *(f"worker-{slot}" for slot in range(SLOTS)))
TERMINAL_TYPES = ("job.succeeded", "job.failed", "job.cancelled")
TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
PROJECTOR_CONSUMER = "reelstream-projector"
# A job long enough to be killed mid-denoise on the CPU: 8 steps, a checkpoint every 2.
LONG_JOB: dict[str, Any] = {"width": 256, "height": 256, "num_frames": 49, "quality": "high"}
# Bursts: small and quick, so that many jobs pass through dispatch and projection.
SHORT_JOB: dict[str, Any] = {"width": 96, "height": 64, "num_frames": 13, "quality": "low"}


# ---- processes ---------------------------------------------------------------------------------------


def marker(name: str) -> str:
    """What the command line of part `name` contains (the same markers infra/ uses)."""
    if name == "kafka":
        return f"{ROOT / '.cache' / 'kafka-libs'}/"
    if name == "s3":
        return f"{ROOT / '.cache' / 's3proxy-libs'}/"
    if name == "postgres":  # its data folder may live outside the checkout (infra/lib/postgres.sh)
        return "/postgres -D /"
    if name.startswith("worker-"):
        return f"services.worker.main {name}"
    return f"services.{name}.main"


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left by kill -9 counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_of(name: str) -> int | None:
    """The pid of part `name` if it runs and its command line still carries the part's marker."""
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if marker(name) in cmdline and alive(pid) else None


def pids(names: Iterable[str] = SERVICES) -> dict[str, int | None]:
    return {name: pid_of(name) for name in names}


async def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(every)


async def kill(name: str, sig: signal.Signals = signal.SIGKILL, timeout: float = 15) -> int:
    """Send `sig` to part `name` and wait until the process is gone; returns its pid."""
    pid = pid_of(name)
    if pid is None:
        pytest.fail(f"{name} is not running, so it cannot be killed (see {LOGS / name}.log)")
    os.kill(pid, sig)
    await wait_until(lambda: not alive(pid), timeout, f"{name} (pid {pid}) exits after {sig.name}")
    return pid


async def sh(*argv: str, timeout: float) -> tuple[int, str]:
    """Run a command in the repository root; returns (exit status, stdout and stderr together)."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return 124, f"{' '.join(argv)}: still running after {timeout:.0f}s"
    return process.returncode or 0, out.decode(errors="replace")


async def start_services(timeout: float = 240) -> None:
    """`infra/services.sh start`: starts whatever service is down and waits until every one is ready."""
    rc, out = await sh("bash", "infra/services.sh", "start", timeout=timeout)
    assert rc == 0, f"infra/services.sh start failed (exit {rc}):\n{out[-3000:]}"


async def stack_up(timeout: float = 300) -> None:
    """`make up`: starts whatever part of the stack is down (idempotent)."""
    rc, out = await sh("make", "up", timeout=timeout)
    assert rc == 0, f"make up failed (exit {rc}):\n{out[-3000:]}"


def api_healthy() -> bool:
    try:
        return httpx.get("http://127.0.0.1:8000/healthz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


async def restore() -> None:
    """Put everything back as the tests found it: the stack up, every service running and ready."""
    if pid_of("kafka") is None:
        await stack_up()
    await start_services()
    await wait_until(api_healthy, 60, "the api answers /healthz with 200")


# ---- logs ----------------------------------------------------------------------------------------------


class LogMark:
    """Remembers where each service log ended, to show what the services wrote since."""

    def __init__(self) -> None:
        self._start = {name: self._size(name) for name in (*SERVICES, "kafka")}

    @staticmethod
    def _size(name: str) -> int:
        try:
            return (LOGS / f"{name}.log").stat().st_size
        except OSError:
            return 0

    def since(self, name: str) -> str:
        path = LOGS / f"{name}.log"
        try:
            with path.open("rb") as f:
                start = self._start.get(name, 0)
                f.seek(start if start <= path.stat().st_size else 0)  # rotated: read the new file whole
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def grep(self, name: str, *needles: str) -> list[str]:
        return [line for line in self.since(name).splitlines() if all(n in line for n in needles)]

    def problems(self, limit: int = 12) -> str:
        """The warnings, errors and tracebacks each service logged since the mark."""
        out = []
        for name in SERVICES:
            lines = [
                line
                for line in self.since(name).splitlines()
                if any(w in line for w in ("level=ERROR", "level=WARNING", "Traceback", "Error:", "ERROR"))
            ]
            if lines:
                out.append(f"--- {name} ({len(lines)} lines, last {min(limit, len(lines))}):")
                out += lines[-limit:]
        return "\n".join(out) or "(no warnings or errors logged)"


# ---- watching Kafka ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    topic: str
    partition: int
    offset: int
    event: Any  # a JobEvent: each test reads the fields of the types it waits for
    at: float  # time.monotonic() when the tap read it

    @property
    def type(self) -> str:
        return str(self.event.type.value) if self.topic != WORKERS_HEARTBEAT else "heartbeat"


class Tap:
    """Reads job events (or heartbeats) straight from Kafka, from the end offsets at start: faster than
    SSE (no projector in between), so a test can kill a process while a job is at a known step."""

    def __init__(self, *topics: str) -> None:
        self.topics = topics or (JOBS_EVENTS,)
        self.seen: list[Seen] = []
        self._changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tap:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=SETTINGS.kafka_bootstrap,
            group_id=None,
            client_id="reelstream-chaos-tap",
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        partitions = await partitions_of(SETTINGS, self.topics)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve the end offsets now, before the test produces anything
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(), name="chaos-tap")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except Exception:  # the broker restart test takes Kafka away under the tap
                await asyncio.sleep(0.5)
                continue
            fresh, now = [], time.monotonic()
            for tp, records in batch.items():
                for msg in records:
                    decode = decode_heartbeat if tp.topic == WORKERS_HEARTBEAT else decode_event
                    with contextlib.suppress(MalformedMessage):
                        fresh.append(Seen(tp.topic, tp.partition, msg.offset, decode(msg.value), now))
            if fresh:
                async with self._changed:
                    self.seen += fresh
                    self._changed.notify_all()

    def events(
        self,
        job_id: str | uuid.UUID | None = None,
        type: str | None = None,
        attempt: int | None = None,
        topic: str | None = None,
    ) -> list[Seen]:
        return [
            s
            for s in self.seen
            if (job_id is None or str(s.event.job_id) == str(job_id))
            and (type is None or s.type == type)
            and (attempt is None or s.event.attempt == attempt)
            and (topic is None or s.topic == topic)
        ]

    async def wait_for(self, predicate: Callable[[Seen], bool], timeout: float, what: str) -> Seen:
        """The first event (already seen or still to come) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            checked = 0
            while True:
                for s in self.seen[checked:]:
                    if predicate(s):
                        return s
                checked = len(self.seen)
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no Kafka event within {timeout:.0f}s: {what}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)


# ---- waiting for jobs ----------------------------------------------------------------------------------


async def statuses(client: httpx.AsyncClient, job_ids: Iterable[str]) -> dict[str, str]:
    out = {}
    for job_id in job_ids:
        response = await client.get(f"/v1/jobs/{job_id}")
        out[job_id] = response.json()["status"] if response.is_success else f"HTTP {response.status_code}"
    return out


async def wait_all_terminal(
    client: httpx.AsyncClient, job_ids: list[str], timeout: float, logs: LogMark | None = None
) -> dict[str, str]:
    """Poll the api until every job is terminal; the failure names the jobs still open, which services
    run, and what they logged."""
    deadline = time.monotonic() + timeout
    current: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            current = await statuses(client, job_ids)
            if all(s in TERMINAL_STATUSES for s in current.values()):
                return current
        await asyncio.sleep(0.5)
    open_jobs = {j: s for j, s in current.items() if s not in TERMINAL_STATUSES}
    pytest.fail(
        f"{len(open_jobs)} of {len(job_ids)} jobs not terminal after {timeout:.0f}s: {open_jobs}\n"
        f"processes: {pids()} kafka={pid_of('kafka')}\n{logs.problems() if logs else ''}"
    )


# ---- the delivery guarantees ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the read model says about one job after the checks passed."""

    status: str
    attempt: int
    slot: int | None
    result: dict[str, Any] | None
    events: list[dict[str, Any]]  # every job_events row, by seq

    def applied(self, type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["applied"] and (type is None or e["type"] == type)]


async def read_model(job_ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, Any], dict[uuid.UUID, list[Any]]]:
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    try:
        async with engine.connect() as conn:
            jobs = {row.id: row for row in (await conn.execute(select(Job).where(Job.id.in_(job_ids))))}
            rows = await conn.execute(
                select(JobEventRow).where(JobEventRow.job_id.in_(job_ids)).order_by(JobEventRow.seq)
            )
            events: dict[uuid.UUID, list[Any]] = {job_id: [] for job_id in job_ids}
            for row in rows:
                events[row.job_id].append(row)
    finally:
        await engine.dispose()
    return jobs, events


async def object_keys(prefix: str) -> list[str]:
    keys: list[str] = []
    async with Storage(SETTINGS) as storage, storage.client() as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=storage.bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


async def delivery_problems(
    client: httpx.AsyncClient,
    job_ids: list[str],
    *,
    expect: str = "succeeded",
    timeout: float = 120,
) -> tuple[list[str], dict[str, Outcome]]:
    """Everything that breaks the delivery guarantees for these jobs (empty: none) and what each job
    became: every accepted job ends in exactly one terminal state (`expect`), each success has exactly
    one MP4 that the api serves, no checkpoint is left behind, and the read model equals a replay."""
    try:
        await wait_all_terminal(client, job_ids, timeout)
    except pytest.fail.Exception as e:
        return [str(e)], {}
    ids = [uuid.UUID(j) for j in job_ids]
    jobs, events = await read_model(ids)
    problems: list[str] = []
    outcomes: dict[str, Outcome] = {}
    for job_id in ids:
        job, rows = jobs.get(job_id), events[job_id]
        if job is None:
            problems.append(f"{job_id}: no jobs row")
            continue
        terminals = [r for r in rows if r.applied and r.type in TERMINAL_TYPES]
        if len(terminals) != 1:
            problems.append(
                f"{job_id}: {len(terminals)} applied terminal events {[r.type for r in terminals]}"
            )
        elif terminals[0].type != f"job.{job.status}":
            problems.append(f"{job_id}: status {job.status} but the terminal event is {terminals[0].type}")
        elif job.attempt != terminals[0].attempt:
            dispatched = [r.attempt for r in rows if r.type == "job.dispatched"]
            problems.append(
                f"{job_id}: the row says attempt {job.attempt} but attempt {terminals[0].attempt} ended the "
                f"job (job.dispatched on jobs.events for attempts {dispatched})"
            )
        if job.status != expect:
            problems.append(f"{job_id}: {job.status} (expected {expect}), error={job.error}")
        seqs = [r.seq for r in rows]
        if seqs != list(range(len(seqs))):
            problems.append(f"{job_id}: job_events seqs are not 0..n without gaps: {seqs}")
        videos = [k for k in await object_keys(f"jobs/{job_id}/") if k.endswith("/video.mp4")]
        if job.status == "succeeded":
            wanted = f"jobs/{job_id}/attempt-{terminals[0].attempt if terminals else '?'}/video.mp4"
            if videos != [wanted]:
                problems.append(f"{job_id}: MP4 objects {videos}, expected exactly [{wanted}]")
            if (job.result or {}).get("video_key") != wanted:
                problems.append(f"{job_id}: result names {(job.result or {}).get('video_key')}, not {wanted}")
            problems += await _served(client, str(job_id), job.result or {})
        elif videos:
            problems.append(f"{job_id}: {job.status} but MP4 objects exist: {videos}")
        outcomes[str(job_id)] = Outcome(
            status=job.status,
            attempt=job.attempt,
            slot=job.slot,
            result=job.result,
            events=[
                {
                    "seq": r.seq,
                    "type": r.type,
                    "attempt": r.attempt,
                    "applied": r.applied,
                    "payload": r.payload,
                }
                for r in rows
            ],
        )
    problems += await _checkpoints_left(ids)
    problems += await replay_differences()
    return problems, outcomes


async def check_delivery(
    client: httpx.AsyncClient,
    job_ids: list[str],
    logs: LogMark,
    *,
    expect: str = "succeeded",
    timeout: float = 120,
) -> dict[str, Outcome]:
    """`delivery_problems`, asserted to be none."""
    problems, outcomes = await delivery_problems(client, job_ids, expect=expect, timeout=timeout)
    assert not problems, "delivery guarantees broken:\n" + "\n".join(problems) + "\n" + logs.problems()
    return outcomes


async def _served(client: httpx.AsyncClient, job_id: str, result: dict[str, Any]) -> list[str]:
    link = await client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "false"})
    if link.status_code != 200:
        return [f"{job_id}: GET /result answered {link.status_code}: {link.text[:200]}"]
    async with httpx.AsyncClient(timeout=30) as plain:
        video = await plain.get(link.json()["url"])
    if video.status_code != 200 or len(video.content) != result.get("size_bytes"):
        return [
            f"{job_id}: the presigned URL gave {video.status_code}, {len(video.content)} bytes, not {result}"
        ]
    return []


async def _checkpoints_left(ids: list[uuid.UUID], timeout: float = 30) -> list[str]:
    """Workers delete a job's checkpoints right after its terminal event, so allow them a moment."""
    deadline = time.monotonic() + timeout
    while True:
        left = {str(j): keys for j in ids if (keys := await object_keys(f"checkpoints/{j}/"))}
        if not left or time.monotonic() >= deadline:
            return [f"checkpoints left {timeout:.0f}s after the jobs ended: {left}"] if left else []
        await asyncio.sleep(0.5)


async def projector_caught_up(timeout: float = 60) -> None:
    """Wait until the live projector's offsets in Postgres reach the end of both topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=SETTINGS.kafka_bootstrap, client_id="reelstream-chaos-ends")
    await consumer.start()
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    try:
        partitions = await partitions_of(SETTINGS, (JOBS_REQUESTED, JOBS_EVENTS))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)

        async def behind() -> dict[str, int]:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(ConsumerOffset).where(ConsumerOffset.consumer == PROJECTOR_CONSUMER)
                )
                stored = {(r.topic, r.partition): r.next_offset for r in rows}
            return {
                f"{tp.topic}:{tp.partition}": end - stored.get((tp.topic, tp.partition), 0)
                for tp, end in ends.items()
                if stored.get((tp.topic, tp.partition), 0) < end
            }

        lag: dict[str, int] = {}

        async def caught_up() -> bool:
            nonlocal lag
            lag = await behind()
            return not lag

        deadline = time.monotonic() + timeout
        while not await caught_up():
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"the projector is still behind after {timeout:.0f}s (records per partition): {lag}"
                )
            await asyncio.sleep(0.25)
    finally:
        await engine.dispose()
        await consumer.stop()


async def replay_differences(prefix: str = "chaos") -> list[str]:
    """The read model equals a replay of the topics: `reelstream-projector replay` into a scratch schema
    (`<prefix>_<hex>`), then `compare` (exit 0), then the schema is dropped. Returns what differs (empty:
    equal)."""
    started = time.monotonic()
    try:
        await projector_caught_up()
    except pytest.fail.Exception as e:
        return [str(e)]
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    cli = str(ROOT / ".venv" / "bin" / "reelstream-projector")
    try:
        rc, out = await sh(cli, "replay", "--schema", schema, timeout=180)
        if rc != 0:
            return [f"replay --schema {schema} failed (exit {rc}):\n{out[-3000:]}"]
        rc, out = await sh(cli, "compare", "--schema", schema, timeout=120)
        if rc != 0:
            return [f"the read model differs from a replay (compare exit {rc}):\n{out[-4000:]}"]
        took = time.monotonic() - started
        print(f"replay equals the read model ({took:.1f}s): {out.strip().splitlines()[-1]}")
        return []
    finally:
        engine = create_async_engine(SETTINGS.database_url.get_secret_value())
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            await engine.dispose()


async def jobs_with_prompt(prompt: str) -> dict[str, str]:
    """Job id -> status of every job in the read model whose request has exactly this prompt."""
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(Job.id, Job.status).where(Job.request["prompt"].astext == prompt)
            )
            return {str(job_id): status for job_id, status in rows}
    finally:
        await engine.dispose()


async def wait_slots_idle(timeout: float = 60) -> set[int]:
    """Wait until the newest heartbeat of every slot says idle; returns the slots that never did."""
    async with Tap(WORKERS_HEARTBEAT) as tap:
        deadline = time.monotonic() + timeout
        while True:
            latest = {s.event.slot: s.event.state.value for s in tap.seen}
            busy = {slot for slot in range(SLOTS) if latest.get(slot) != "idle"}
            if not busy or time.monotonic() >= deadline:
                return busy
            await asyncio.sleep(0.2)


def dispatches_to_dead_slot(tap: Tap, job_id: str, slot: int, killed_at: float, old_boot: Any) -> list[str]:
    """Dispatches of `job_id` to `slot` made after its worker was killed and before a new worker process
    of that slot had sent a heartbeat (the tap must read jobs.events and the heartbeats)."""
    back = [
        s.at
        for s in tap.events(topic=WORKERS_HEARTBEAT)
        if s.event.slot == slot and s.at > killed_at and s.event.boot_id != old_boot
    ]
    back_at = min(back, default=float("inf"))
    return [
        f"attempt {s.event.attempt} {s.at - killed_at:.1f}s after the kill"
        for s in tap.events(job_id, "job.dispatched", topic=JOBS_EVENTS)
        if s.event.slot == slot and killed_at < s.at < back_at
    ]


async def silent_slots(timeout: float = 30) -> set[int]:
    """The slots that publish no heartbeat to Kafka within `timeout` (workers beat every second)."""
    async with Tap(WORKERS_HEARTBEAT) as tap:
        deadline = time.monotonic() + timeout
        while True:
            silent = set(range(SLOTS)) - {s.event.slot for s in tap.seen}
            if not silent or time.monotonic() >= deadline:
                return silent
            await asyncio.sleep(0.2)
