"""Which database errors mean Postgres went away (retry later) rather than refused the statement."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from services.common.db import connection_lost


class PgError(Exception):
    """Stands in for the driver's error as SQLAlchemy wraps it: it carries the SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str) -> DBAPIError:
    return DBAPIError("SELECT 1", None, PgError(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    ["57P01", "57P02", "57P03", "08006", "08003"],
    ids=["admin-shutdown", "crash-shutdown", "cannot-connect-now", "connection-failure", "no-connection"],
)
def test_a_terminated_backend_or_a_broken_connection_is_lost(sqlstate: str) -> None:
    assert connection_lost(wrapped(sqlstate))


@pytest.mark.parametrize("sqlstate", ["22P05", "23505", "42P01", "40001"])
def test_refused_data_a_missing_table_or_a_conflict_is_not(sqlstate: str) -> None:
    assert not connection_lost(wrapped(sqlstate))


def test_the_driver_level_connection_errors_are_lost_and_other_errors_are_not() -> None:
    assert connection_lost(OperationalError("SELECT 1", None, PgError("XX000")))
    assert connection_lost(ConnectionResetError())
    assert connection_lost(TimeoutError())
    assert not connection_lost(ValueError("bad"))


def test_the_drivers_own_errors_are_judged_by_their_sqlstate() -> None:
    """A COPY on the driver's connection raises asyncpg's errors unwrapped."""
    assert connection_lost(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert connection_lost(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"))
    assert not connection_lost(asyncpg.exceptions.UntranslatableCharacterError("\\u0000"))
    assert not connection_lost(asyncpg.exceptions.UniqueViolationError("duplicate key"))
