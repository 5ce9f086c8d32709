"""The projector's own error: a record the read model refuses, as against Postgres being unavailable."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError

from services.common.errors import PermanentError

# SQLSTATE classes of errors that the data of a statement causes: 22 data exception (a NUL in text or
# JSONB, a number out of range), 23 integrity constraint violation. Retrying such a statement fails alike.
_REFUSED_CLASSES = frozenset({"22", "23"})


class RecordRefused(PermanentError):
    """Postgres refused what a batch writes: some record in it cannot be stored, however often retried."""


def refusal(error: DBAPIError | asyncpg.PostgresError) -> RecordRefused | None:
    """`error` as a `RecordRefused`, naming the database's reason; None when the data did not cause it.
    The error is SQLAlchemy's, or the driver's own (a COPY on the driver's connection raises those)."""
    if isinstance(error, DBAPIError):
        orig, cause, message = error.orig, getattr(error.orig, "__cause__", None), str(error.orig)
    else:  # its str() appends the detail already
        orig, cause, message = error, error, str(error.args[0] if error.args else error)
    sqlstate = getattr(orig, "sqlstate", None)
    if not isinstance(sqlstate, str) or sqlstate[:2] not in _REFUSED_CLASSES:
        return None
    detail = getattr(cause, "detail", None)
    reason = f"the read model refused it (SQLSTATE {sqlstate}): {message.strip()}"
    return RecordRefused(f"{reason} ({detail})" if detail else reason)
