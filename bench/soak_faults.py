"""The soak's faults: kill -9 of a service, a restart of Kafka, Postgres or the S3 server, and poison.

After a kill the soak waits a moment, then does what an operator would: `infra/services.sh start` (and
`make up` after taking part of the stack away). The processes are found and killed with the helpers of
the chaos tests (tests/e2e/chaos.py), which check each pid's command line first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.soak_client import Api
from schemas.envelope import encode_event
from schemas.events import JobRequested
from schemas.jobs import JobRequest, resolve
from schemas.topics import DLQ, JOBS_REQUESTED
from services.common.readmodel import ConsumerOffset
from tests.e2e.chaos import (
    PROJECTOR_CONSUMER,
    SERVICES,
    SETTINGS,
    SLOTS,
    api_healthy,
    kill,
    pid_of,
    pids,
    stack_up,
    start_services,
    wait_until,
)

KINDS = (
    "kill-worker",
    "kill-scheduler",
    "kill-projector",
    "kill-api",
    "restart-kafka",
    "restart-postgres",
    "restart-s3",
    "poison",
)
# How a part of the stack is stopped: Postgres's fast shutdown is SIGINT (infra/lib/postgres.sh).
STOP_SIGNAL = {"kafka": signal.SIGTERM, "postgres": signal.SIGINT, "s3": signal.SIGTERM}
GRACE_SECONDS = 30  # a 503 this soon after a fault's recovery still counts as caused by it


@dataclass(frozen=True, slots=True)
class PlannedFault:
    gap: float  # seconds after the previous fault began
    kind: str
    target: str  # the service or stack part, or the poison variant
    downtime: float  # seconds between the kill and the restart


def plan_faults(seed: int, seconds: float, min_gap: float = 30, max_gap: float = 60) -> list[PlannedFault]:
    """The faults of a run, drawn from `seed` alone (more than fit: the run stops at its end)."""
    rng = random.Random(f"faults-{seed}")
    plan = []
    for _ in range(int(seconds // min_gap) + 1):
        kind = rng.choice(KINDS)
        if kind == "kill-worker":
            target = f"worker-{rng.randrange(SLOTS)}"
        elif kind == "poison":
            target = rng.choice(("not-json", "nul-prompt"))
        else:
            target = kind.split("-", 1)[1]
        plan.append(PlannedFault(rng.uniform(min_gap, max_gap), kind, target, rng.uniform(2, 8)))
    return plan


class FaultLog:
    """The faults injected so far; `now()` names the one under way or just recovered from."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.records: list[dict[str, Any]] = []
        self._current: str | None = None
        self._ended_at = -1e9

    def now(self) -> str | None:
        if self._current is not None:
            return self._current
        if self.records and time.monotonic() - self._ended_at < GRACE_SECONDS:
            return str(self.records[-1]["kind"])
        return None

    async def inject(self, fault: PlannedFault, api: Api) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": fault.kind,
            "target": fault.target,
            "at": time.monotonic() - self.t0,
            "problems": [],
            "notes": [],
        }
        self.records.append(record)
        self._current = fault.kind
        print(f"[{record['at']:6.1f}s] fault: {fault.kind} ({fault.target})", flush=True)
        try:
            if fault.kind == "poison":
                await poison(api, fault.target, record)
            elif fault.kind.startswith("kill-"):
                await kill_service(fault.target, fault.downtime, record)
            else:
                await restart_part(fault.target, fault.downtime, record)
        except (Exception, pytest.fail.Exception) as e:  # the soak goes on; the check reports it
            record["problems"].append(f"the fault itself failed: {type(e).__name__}: {str(e)[-800:]}")
            await restart_services(record)
        finally:
            self._current, self._ended_at = None, time.monotonic()
            record["recovered_s"] = round(self._ended_at - self.t0 - record["at"], 1)
            print(f"         recovered in {record['recovered_s']}s {record['notes'] or ''}", flush=True)
        return record


async def restart_services(record: dict[str, Any]) -> None:
    """`infra/services.sh start`, then the api's /healthz; a failure is a problem of the fault."""
    try:
        await start_services(timeout=240)
        await wait_until(api_healthy, 90, "the api answers /healthz with 200")
    except (AssertionError, pytest.fail.Exception) as e:
        record["problems"].append(f"the services did not come back: {str(e)[-800:]}")


async def kill_service(name: str, downtime: float, record: dict[str, Any]) -> None:
    if pid_of(name) is None:
        record["notes"].append(f"{name} was not running")
    else:
        record["pid"] = await kill(name)
    await asyncio.sleep(downtime)
    await restart_services(record)


async def restart_part(part: str, downtime: float, record: dict[str, Any]) -> None:
    """Stop one part of the stack as its own stop does, wait, `make up`; services that exited meanwhile
    are noted (they should reconnect by themselves) and started again."""
    before = pids()
    try:
        record["pid"] = await kill(part, STOP_SIGNAL[part], timeout=90)
    except pytest.fail.Exception as e:
        record["problems"].append(f"could not stop {part}: {e}")
    await asyncio.sleep(downtime)
    try:
        await stack_up(timeout=300)
    except AssertionError as e:
        record["problems"].append(f"make up failed after stopping {part}: {str(e)[-800:]}")
        return
    after = pids()
    exited = [name for name in SERVICES if before[name] is not None and after[name] != before[name]]
    if exited:
        record["exited"] = exited
        record["notes"].append(f"services exited while {part} was away: {exited}")
    await restart_services(record)


def poison_record(variant: str) -> tuple[bytes, bytes, list[tuple[str, bytes]], str | None]:
    """(key, value, headers, job id) of a record no consumer may take as a job: bytes that are not JSON,
    or a well-formed job.requested whose prompt holds a NUL (the api would answer 422 for it)."""
    marker = uuid.uuid4()
    if variant == "not-json":
        return f"soak-poison-{marker}".encode(), f"\x00soak poison {marker}".encode(), [], None
    clean = resolve(JobRequest(prompt="soak poison", model="tiny-mochi", quality="low", width=64, height=64))
    request = clean.model_copy(update={"prompt": f"soak poison \x00 {marker}"})
    event = JobRequested(job_id=marker, producer="soak", request=request, request_hash="0" * 64)
    record = encode_event(event)
    return record.key, record.value, list(record.headers), str(marker)


async def poison(api: Api, variant: str, record: dict[str, Any]) -> None:
    """A NUL prompt over HTTP must be a 422; a poison record on jobs.requested must reach the DLQ and the
    projector must move past it."""
    body = {"prompt": f"soak poison \x00 {uuid.uuid4()}", "model": "tiny-mochi", "quality": "low"}
    response = await api.request("POST", "POST /v1/jobs", "/v1/jobs", json=body)
    record["http_status"] = response.status_code if response is not None else "no answer"
    if response is not None and response.status_code != 422:
        record["problems"].append(f"a NUL prompt was answered {response.status_code}: {response.text[:300]}")
    key, value, headers, job_id = poison_record(variant)
    record["poison_job"] = job_id
    try:
        async with asyncio.timeout(90):
            partition, offset = await _produce_and_find_in_dlq(key, value, headers)
            record["poison_record"] = f"{JOBS_REQUESTED}:{partition}@{offset}"
            await _projector_past(partition, offset)
    except TimeoutError:
        record["problems"].append(
            f"poison record ({variant}) not on the DLQ or not passed by the projector within 90 s "
            f"({record.get('poison_record', 'not found on the DLQ')})"
        )


async def _produce_and_find_in_dlq(
    key: bytes, value: bytes, headers: list[tuple[str, bytes]]
) -> tuple[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=SETTINGS.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=SETTINGS.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id="soak-poison",
    )
    await consumer.start()
    await producer.start()
    try:
        tp = TopicPartition(DLQ, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        sent = await producer.send_and_wait(JOBS_REQUESTED, value=value, key=key, headers=headers)
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500)
            if any(m.value == value for m in batch.get(tp, [])):
                return sent.partition, sent.offset
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        with contextlib.suppress(Exception):
            await consumer.stop()


async def _projector_past(partition: int, offset: int) -> None:
    """Wait until the projector's stored offset on that partition of jobs.requested is past `offset`."""
    engine = create_async_engine(SETTINGS.database_url.get_secret_value())
    query = select(ConsumerOffset.next_offset).where(
        ConsumerOffset.consumer == PROJECTOR_CONSUMER,
        ConsumerOffset.topic == JOBS_REQUESTED,
        ConsumerOffset.partition == partition,
    )
    try:
        while True:
            async with engine.connect() as conn:
                stored = (await conn.execute(query)).scalar_one_or_none()
            if stored is not None and stored > offset:
                return
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()
