"""Read-model queries of the api (the projector is the only writer)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import ColumnElement, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import ApiError
from services.common.readmodel import JOBS, JobEventRow, JobRow


class BadCursor(ApiError):
    status = 400
    title = "Invalid cursor"


def encode_cursor(job: JobRow) -> str:
    raw = json.dumps([job.created_at.isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when, after = datetime.fromisoformat(created), uuid.UUID(job_id)
        if when.tzinfo is not None:
            when = when.astimezone(UTC)  # out of range at the calendar's ends: OverflowError
    except (ValueError, TypeError, OverflowError) as e:
        raise BadCursor("cursor is not one this api issued; pass next_cursor back unchanged") from e
    if when.tzinfo is None:
        raise BadCursor("cursor is not one this api issued; pass next_cursor back unchanged")
    return when, after


_JOB: Final = select(JOBS).where(JOBS.c.id == bindparam("id"), JOBS.c.tenant == bindparam("tenant"))
_KEYED: Final = select(JOBS).where(
    JOBS.c.tenant == bindparam("tenant"), JOBS.c.idempotency_key == bindparam("key")
)


async def get_job(session: AsyncSession, job_id: uuid.UUID, tenant: str) -> JobRow | None:
    """The job if it is the tenant's."""
    return (await session.execute(_JOB, {"id": job_id, "tenant": tenant})).first()


async def find_by_idempotency_key(session: AsyncSession, tenant: str, key: str) -> JobRow | None:
    return (await session.execute(_KEYED, {"tenant": tenant, "key": key})).first()


def past(created: datetime, job_id: uuid.UUID, *, newest_first: bool = True) -> ColumnElement[bool]:
    """The jobs after the one at (created, job_id) in a list's order: keyset pagination on both."""
    jobs = JOBS.c
    if newest_first:
        return or_(jobs.created_at < created, and_(jobs.created_at == created, jobs.id < job_id))
    return or_(jobs.created_at > created, and_(jobs.created_at == created, jobs.id > job_id))


async def list_jobs(
    session: AsyncSession, tenant: str, status: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[JobRow], str | None]:
    """The tenant's jobs, newest first, keyset-paginated on (created_at, id)."""
    jobs = JOBS.c
    stmt = select(JOBS).where(jobs.tenant == tenant)
    if status is not None:
        stmt = stmt.where(jobs.status == status)
    if cursor is not None:
        stmt = stmt.where(past(*decode_cursor(cursor)))
    stmt = stmt.order_by(jobs.created_at.desc(), jobs.id.desc()).limit(limit + 1)
    rows = (await session.execute(stmt)).all()
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


async def events_after(session: AsyncSession, job_id: uuid.UUID, after_seq: int) -> Sequence[JobEventRow]:
    stmt = (
        select(JobEventRow)
        .where(JobEventRow.job_id == job_id, JobEventRow.seq > after_seq, JobEventRow.applied.is_(True))
        .order_by(JobEventRow.seq)
    )
    return (await session.execute(stmt)).scalars().all()
