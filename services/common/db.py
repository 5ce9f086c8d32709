"""The Postgres engine and session factory (SQLAlchemy 2 async on asyncpg)."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import orjson
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
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
    if isinstance(error, asyncpg.PostgresError):  # from the driver itself, as a COPY raises them
        return str(error.sqlstate).startswith(_LOST_SQLSTATES)
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return error.connection_invalidated or (
        isinstance(sqlstate, str) and sqlstate.startswith(_LOST_SQLSTATES)
    )


def make_engine(settings: CommonSettings, *, pre_ping: bool = True) -> AsyncEngine:
    """The engine of one service; its connections show as `service_name` in `pg_stat_activity`.

    A connection Postgres has closed (a restart, `pg_terminate_backend`: asyncpg sees the socket end) is
    never handed out: the pool replaces it on checkout, at no cost. `pre_ping` adds a round trip per
    checkout that also finds a connection whose socket still looks open but whose server is gone (a
    network cut). The api does without it: the ping was a third of a read's database time.
    """
    engine = create_async_engine(
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
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_connection: Any, record: object, proxy: object) -> None:
    """The pool's checkout hook: a `DisconnectionError` makes it drop this connection and check out
    another (a new one when none is left), so a request never starts on a connection known dead."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if isinstance(driver, asyncpg.Connection) and driver.is_closed():
        raise DisconnectionError("Postgres closed this pooled connection")


def make_read_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads only: each statement runs on its own (autocommit), without the BEGIN and the
    ROLLBACK around it, two round trips fewer per request. A statement still sees one snapshot; a
    session that writes must use `make_sessions`."""
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
