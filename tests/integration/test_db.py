"""The engine's pool against a real Postgres: dead connections are refused at checkout without a ping,
and read sessions run each statement on its own (no transaction around it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.common.db import make_engine, make_read_sessions, make_sessions
from services.common.settings import CommonSettings


async def test_a_connection_postgres_terminated_is_replaced_at_checkout_without_a_ping(
    settings: CommonSettings,
) -> None:
    name = f"test-db-{uuid.uuid4().hex[:8]}"
    engine = make_engine(settings.model_copy(update={"service_name": name}), pre_ping=False)
    other = make_engine(settings)
    try:
        async with engine.connect() as conn:
            first = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            pooled = (await conn.get_raw_connection()).driver_connection
        async with other.connect() as admin:  # the pooled connection is idle now: end it server-side
            assert (await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})).scalar()
        async with asyncio.timeout(5):  # asyncpg sees the socket end as soon as the loop reads it
            while not pooled.is_closed():
                await asyncio.sleep(0.01)
        async with engine.connect() as conn:
            second = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert second != first, "a new connection, not the terminated one"
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_connection_terminated_while_checked_out_fails_its_next_statement(
    settings: CommonSettings,
) -> None:
    """What the checkout hook saves a request from: a statement on a connection Postgres ended fails."""
    engine = make_engine(settings, pre_ping=False)
    other = make_engine(settings)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await conn.commit()
            async with other.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await asyncio.sleep(0.2)
            assert raw.driver_connection is not None and raw.driver_connection.is_closed()
            with pytest.raises(DBAPIError):
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
        await other.dispose()


async def test_read_sessions_run_without_a_transaction_and_write_sessions_with_one(
    settings: CommonSettings,
) -> None:
    engine = make_engine(settings, pre_ping=False)
    try:
        async with make_read_sessions(engine)() as session:
            first = (await session.execute(text("SELECT txid_current_if_assigned(), now()"))).one()
            await asyncio.sleep(0.01)
            second = (await session.execute(text("SELECT now()"))).scalar_one()
            assert second > first[1], "now() is the transaction's start: each read is its own"
        async with make_sessions(engine)() as session:
            first_now = (await session.execute(text("SELECT now()"))).scalar_one()
            await asyncio.sleep(0.01)
            assert (await session.execute(text("SELECT now()"))).scalar_one() == first_now
    finally:
        await engine.dispose()
