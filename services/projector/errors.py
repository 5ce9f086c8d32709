"""The projector's own error: a record the read model refuses, as against Postgres being unavailable."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from services.common.errors import PermanentError

# SQLSTATE classes of errors that the data of a statement causes: 22 data exception (a NUL in text or
# JSONB, a number out of range), 23 integrity constraint violation. Retrying such a statement fails alike.
_REFUSED_CLASSES = frozenset({"22", "23"})


class RecordRefused(PermanentError):
    """Postgres refused what a batch writes: some record in it cannot be stored, however often retried."""


def refusal(error: DBAPIError) -> RecordRefused | None:
    """`error` as a `RecordRefused`, naming the database's reason; None when the data did not cause it."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    if not isinstance(sqlstate, str) or sqlstate[:2] not in _REFUSED_CLASSES:
        return None
    cause = error.orig.__cause__ if error.orig is not None else None
    detail = getattr(cause, "detail", None)
    reason = f"the read model refused it (SQLSTATE {sqlstate}): {str(error.orig).strip()}"
    return RecordRefused(f"{reason} ({detail})" if detail else reason)
