"""The alembic migrations on a scratch database: up, down, up again, and no drift from the models."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.readmodel import Base
from services.common.settings import CommonSettings
from services.common.tenants import Tenant  # noqa: F401  (its tables, and the keys', are in Base.metadata)
from services.common.webhooks import WebhookDelivery  # noqa: F401  (the notifier's tables)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "jobs", "job_events", "consumer_offsets", "tenants", "api_keys",
    "webhook_jobs", "webhook_parked", "webhook_deliveries", "webhook_attempts",
}  # fmt: skip


def _dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def scratch_url(settings: CommonSettings) -> AsyncIterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    url = make_url(settings.database_url.get_secret_value())
    name = f"reelstream_migtest_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(_dsn(url.render_as_string(hide_password=False)), timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"postgres is not reachable ({e!r}); start the stack with `make up`")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def alembic(url: str, *args: str) -> None:
    """Run the alembic CLI the way `make up` does, against `url`."""
    env = {**os.environ, "REELSTREAM_DATABASE_URL": url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, f"alembic {' '.join(args)} failed:\n{output.decode()}"


def _state(connection: Connection) -> tuple[set[str], list[Any]]:
    tables = set(inspect(connection).get_table_names())
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return tables, compare_metadata(context, Base.metadata)


async def inspect_database(url: str) -> tuple[set[str], list[Any]]:
    """The tables of the database and alembic's differences between it and the models."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_state)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_without_drift(scratch_url: str) -> None:
    await alembic(scratch_url, "upgrade", "head")
    tables, _ = await inspect_database(scratch_url)
    assert tables >= TABLES

    await alembic(scratch_url, "downgrade", "base")
    tables, _ = await inspect_database(scratch_url)
    assert not tables & TABLES

    await alembic(scratch_url, "upgrade", "head")
    tables, drift = await inspect_database(scratch_url)
    assert tables >= TABLES
    assert drift == [], f"the migrations and services/common/readmodel.py disagree: {drift}"


async def test_queued_at_is_filled_as_a_replay_would_fill_it(scratch_url: str) -> None:
    """0002 on a read model with history: acceptance time, or the last counted preemption."""
    await alembic(scratch_url, "upgrade", "0001")
    plain, preempted_job = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(_dsn(scratch_url))
    try:
        for job in (plain, preempted_job):
            await conn.execute(
                "INSERT INTO jobs (id, tenant, status, phase, progress, priority, model, request,"
                " request_hash, attempt, created_at, updated_at, last_seq) VALUES ($1, 't', 'queued',"
                " 'queued', 0, 'batch', 'm', '{}', 'h', 1, $2, $2, 0)",
                job,
                datetime(2026, 1, 5, 12, 0, tzinfo=UTC),
            )
        preempted = (
            "INSERT INTO job_events (event_id, job_id, seq, type, attempt, applied, occurred_at, payload)"
            " VALUES ($1, $2, $3, 'job.preempted', 1, $4, $5, '{}')"
        )
        at = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
        for seq, minute, applied in ((1, 1, True), (2, 3, True), (3, 9, False)):  # the last one is stale
            await conn.execute(
                preempted, uuid.uuid4(), preempted_job, seq, applied, at + timedelta(minutes=minute)
            )
    finally:
        await conn.close()

    await alembic(scratch_url, "upgrade", "head")

    conn = await asyncpg.connect(_dsn(scratch_url))
    try:
        rows = await conn.fetch("SELECT id, to_char(queued_at AT TIME ZONE 'UTC', 'HH24:MI') AS at FROM jobs")
    finally:
        await conn.close()
    assert {row["id"]: row["at"] for row in rows} == {plain: "12:00", preempted_job: "12:03"}
