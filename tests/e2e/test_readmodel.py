"""What the read model promises: poison records are parked, not lost; a replay rebuilds it exactly; ETAs."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import httpx
import pytest
from aiokafka import TopicPartition
from sqlalchemy import text

from schemas.dlq import DLQ_REASON, DLQ_SOURCE_TOPIC
from schemas.envelope import Record, header
from schemas.topics import DLQ, JOBS_REQUESTED
from services.common.db import make_engine
from services.common.kafka import make_consumer, make_producer, send
from services.common.settings import CommonSettings
from tests.e2e.conftest import ROOT, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_malformed_record_goes_to_the_dlq_and_projection_carries_on(client: httpx.AsyncClient) -> None:
    settings = CommonSettings()
    marker = f"not json {uuid.uuid4()}".encode()
    consumer = make_consumer(settings, group_id=None, client_id="e2e-dlq-reader")
    await consumer.start()
    producer = make_producer(settings, "e2e-poison")
    await producer.start()
    try:
        tp = TopicPartition(DLQ, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        start = await consumer.position(tp)
        await send(producer, JOBS_REQUESTED, Record(key=b"poison", value=marker, headers=[]))
        found = None
        async with asyncio.timeout(30):
            consumer.seek(tp, start)
            while found is None:
                batch = await consumer.getmany(tp, timeout_ms=500)
                found = next((m for m in batch.get(tp, []) if m.value == marker), None)
        assert header(found.headers, DLQ_SOURCE_TOPIC) == JOBS_REQUESTED
        assert "not JSON" in (header(found.headers, DLQ_REASON) or "")
    finally:
        await consumer.stop()
        await producer.stop()
    job = await submit(client)  # the projector moved past the poison record
    assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200


async def test_queued_job_has_a_position_and_an_eta(client: httpx.AsyncClient) -> None:
    await wait_terminal(client, (await submit(client, seed=21))["id"])  # something measured
    blockers = [await submit(client, width=256, height=256, num_frames=49, quality="high") for _ in range(3)]
    waiting = await submit(client)
    # The position comes from the scheduler's queue view, published within half a second of a change.
    async with asyncio.timeout(10):
        while (job := (await client.get(f"/v1/jobs/{waiting['id']}")).json())["queue_position"] is None:
            await asyncio.sleep(0.1)
    try:
        if job["status"] == "queued" and job["queue_position"] is not None:
            assert job["queue_position"] >= 1
            assert job["eta"]["wait_seconds"] > 0 and job["eta"]["run_seconds"] > 0
            assert job["eta"]["total_seconds"] == pytest.approx(
                job["eta"]["wait_seconds"] + job["eta"]["run_seconds"], abs=0.02
            )
        else:  # two slots and three blockers: it should still be waiting
            pytest.fail(f"expected a queued job, got {job['status']} at position {job['queue_position']}")
    finally:
        for other in [*blockers, waiting]:
            await client.post(f"/v1/jobs/{other['id']}/cancel")


async def test_replay_from_offset_zero_equals_the_live_read_model(client: httpx.AsyncClient) -> None:
    await wait_terminal(client, (await submit(client, seed=33))["id"])
    schema = f"replay_e2e_{uuid.uuid4().hex[:8]}"
    cli = str(ROOT / ".venv" / "bin" / "reelstream-projector")
    try:
        replay = subprocess.run(
            [cli, "replay", "--schema", schema],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr[-2000:]
        compare = subprocess.run(
            [cli, "compare", "--schema", schema],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert compare.returncode == 0, (compare.stdout + compare.stderr)[-2000:]
    finally:
        engine = make_engine(CommonSettings())
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
