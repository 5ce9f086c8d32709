"""The Postgres engine and session factory (SQLAlchemy 2 async on asyncpg)."""

from __future__ import annotations

from typing import Final

import asyncpg
import orjson
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.common.settings import CommonSettings

# What a transaction raises when Postgres is unreachable or dropped the connection: the caller retries
# later (as `DatabaseUnavailable`), the same rows may well go through then.
CONNECTION_LOST: Final = (
    OperationalError,
    InterfaceError,
    asyncpg.PostgresConnectionError,
    OSError,
    TimeoutError,
)
# SQLSTATE classes that mean the connection, not the statement, failed: 08 connection exception, 57P
# operator intervention (a terminated backend, a server shutting down or still starting).
_LOST_SQLSTATES: Final = ("08", "57P")


def connection_lost(error: BaseException) -> bool:
    """Whether `error` means Postgres went away rather than refused the statement. Beyond
    `CONNECTION_LOST`: a backend terminated during a query (`pg_terminate_backend`, a failover) arrives
    as a plain `DBAPIError` whose SQLSTATE is 57P01, not as a connection error."""
    if isinstance(error, CONNECTION_LOST):
        return True
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return error.connection_invalidated or (
        isinstance(sqlstate, str) and sqlstate.startswith(_LOST_SQLSTATES)
    )


def make_engine(settings: CommonSettings, *, pre_ping: bool = True) -> AsyncEngine:
    """The engine of one service; its connections show as `service_name` in `pg_stat_activity`.

    `pre_ping` tests each connection with a round trip when it leaves the pool, so a request does not fail
    on a connection Postgres closed meanwhile. A caller that retries every failed transaction anyway
    can do without it.
    """
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        pool_pre_ping=pre_ping,
        pool_timeout=10,
        # JSONB columns (a job's request and result, each event's payload) decode with orjson: a list of
        # 20 jobs spent a tenth of its time in the standard json module.
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": 10,
            "command_timeout": 30,
            "server_settings": {"application_name": settings.service_name},
        },
    )


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
