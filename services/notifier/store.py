"""The notifier's SQL: the consumer's batch transaction (subscriptions, parked events, deliveries and Kafka
offsets together) and the sender's short transactions (claim, record an attempt, dead letters, gauges).

No transaction is open while a webhook is being called: a claim commits a lease, the attempt runs, and its
result is recorded in a transaction of its own, only if the lease still holds.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from schemas.events import JobEvent, JobRequested
from services.common.consumer import advance_offsets, stored_offsets, unapplied
from services.common.db import CONNECTION_LOST, connection_lost
from services.common.errors import DatabaseUnavailable
from services.common.readmodel import Base
from services.common.tenants import webhook_secrets
from services.common.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookJob,
    WebhookParked,
)
from services.notifier.subscriptions import Fence, admit, deliverable, wanted

JOBS = Base.metadata.tables[WebhookJob.__tablename__]
PARKED = Base.metadata.tables[WebhookParked.__tablename__]
DELIVERIES = Base.metadata.tables[WebhookDelivery.__tablename__]
ATTEMPTS = Base.metadata.tables[WebhookAttempt.__tablename__]

_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_JOB_STATE = ("requested", "tenant", "url", "events", "attempt", "terminal", "updated_at")
_UPSERT_JOBS = insert(JOBS)
_UPSERT_JOBS = _UPSERT_JOBS.on_conflict_do_update(
    index_elements=["job_id"], set_={name: _UPSERT_JOBS.excluded[name] for name in _JOB_STATE}
)
_INSERT_DELIVERIES = insert(DELIVERIES).on_conflict_do_nothing(index_elements=["id"])
_INSERT_PARKED = insert(PARKED).on_conflict_do_nothing(index_elements=["event_id"])


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed record in partition order; `event` is None for a record that is skipped (malformed,
    or a job.requested that missed its submit deadline)."""

    topic: str
    partition: int
    offset: int
    event: JobEvent | None


@dataclass(slots=True)
class _JobState:
    requested: bool = False
    tenant: str | None = None
    url: str | None = None
    events: list[str] = field(default_factory=list)
    fence: Fence = field(default_factory=Fence)
    changed: bool = False


@dataclass(slots=True)
class _Plan:
    """What one batch writes."""

    jobs: dict[uuid.UUID, _JobState]
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    parked: list[dict[str, Any]] = field(default_factory=list)
    released: set[uuid.UUID] = field(default_factory=set)
    # Events that happened before this are not delivered (a first start over months of history).
    oldest: datetime | None = None
    too_old: int = 0

    def owe(self, row: dict[str, Any], state: _JobState, now: datetime) -> None:
        """Queue a delivery of `row` to the job's webhook, unless the event is older than `oldest`."""
        if self.oldest is not None and _occurred_at(row["payload"]) < self.oldest:
            self.too_old += 1
            return
        self.deliveries.append(_delivery(row, state, now))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender holds under `lease` for one attempt (number `number`)."""

    id: uuid.UUID
    job_id: uuid.UUID
    tenant: str
    url: str
    event_type: str
    occurred_at: datetime
    payload: dict[str, Any]
    number: int
    failures: int
    retry_since: datetime
    lease: uuid.UUID


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt went: `next_at` None with outcome failed/refused means the delivery is dead."""

    outcome: str  # succeeded | failed | refused
    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    pending: int
    oldest_pending_seconds: float
    dead: int


def _lock_key(consumer: str) -> int:
    digest = hashlib.sha256(f"notifier\x00{consumer}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _source(incoming: Incoming) -> dict[str, Any]:
    return {
        "source_topic": incoming.topic,
        "source_partition": incoming.partition,
        "source_offset": incoming.offset,
    }


class Store:
    """The notifier's tables in the default schema (or `schema`, for tests)."""

    def __init__(self, engine: AsyncEngine, schema: str | None = None) -> None:
        self._engine = engine.execution_options(schema_translate_map={None: schema}) if schema else engine

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except DBAPIError as e:
            if not connection_lost(e):
                raise
            raise DatabaseUnavailable(f"notifier transaction failed: {e}") from e
        except CONNECTION_LOST as e:
            raise DatabaseUnavailable(f"notifier transaction failed: {e}") from e

    async def load_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        async with self._transaction() as conn:
            return await stored_offsets(conn, consumer)

    # The consumer's side.

    async def apply_batch(
        self, consumer: str, batch: Sequence[Incoming], now: datetime, max_age: timedelta | None = None
    ) -> tuple[int, int]:
        """Apply one consumed batch and advance `consumer`'s offsets past it, in one transaction; returns
        the deliveries it queued and the events it did not deliver for being older than `max_age`.
        Records below the stored offsets were applied already."""
        async with self._transaction() as conn:
            await conn.execute(_LOCK, {"key": _lock_key(consumer)})
            fresh = await unapplied(conn, consumer, batch)
            plan = await self._plan(conn, fresh, now, now - max_age if max_age is not None else None)
            await self._write(conn, plan, now)
            await advance_offsets(conn, consumer, fresh)
        return len(plan.deliveries), plan.too_old

    async def _plan(
        self, conn: AsyncConnection, fresh: Sequence[Incoming], now: datetime, oldest: datetime | None
    ) -> _Plan:
        ids = list({r.event.job_id for r in fresh if r.event is not None})
        plan = _Plan(jobs=await self._load_jobs(conn, ids), oldest=oldest)
        for incoming in fresh:
            if incoming.event is not None:
                self._fold(plan, incoming, incoming.event, now)
        if plan.released:
            await self._release(conn, plan, now)
        return plan

    async def _load_jobs(self, conn: AsyncConnection, ids: list[uuid.UUID]) -> dict[uuid.UUID, _JobState]:
        jobs: dict[uuid.UUID, _JobState] = {job_id: _JobState() for job_id in ids}
        if not ids:
            return jobs
        rows = await conn.execute(select(JOBS).where(JOBS.c.job_id.in_(ids)))
        for row in rows.mappings():
            jobs[row["job_id"]] = _JobState(
                requested=row["requested"],
                tenant=row["tenant"],
                url=row["url"],
                events=list(row["events"]),
                fence=Fence(row["attempt"], row["terminal"]),
            )
        return jobs

    def _fold(self, plan: _Plan, incoming: Incoming, event: JobEvent, now: datetime) -> None:
        state = plan.jobs[event.job_id]
        if isinstance(event, JobRequested):
            if not state.requested:  # the first request wins, as in the read model
                url = event.request.webhook_url
                state.requested, state.tenant, state.url = True, event.tenant, url
                state.events = [e.value for e in event.request.webhook_events] if url else []
                state.changed = True
                plan.released.add(event.job_id)
            return
        if state.requested and not state.url:
            return  # no webhook: nothing of this job is ever sent, so its fence need not be kept
        applied, fence = admit(state.fence, event)
        if fence != state.fence:
            state.fence, state.changed = fence, True
        if not applied or not deliverable(event):
            return
        row = {
            "event_id": event.event_id,
            "job_id": event.job_id,
            "event_type": event.type.value,
            "payload": event.model_dump(mode="json"),
            **_source(incoming),
            "parked_at": now,
        }
        if not state.requested:
            state.changed = True  # the row must exist for its fence to carry over
            plan.parked.append(row)
        elif state.url and wanted(row["event_type"], state.events):
            plan.owe(row, state, now)

    async def _release(self, conn: AsyncConnection, plan: _Plan, now: datetime) -> None:
        """Turn the parked events of jobs whose request this batch read into deliveries (or nothing)."""
        released = sorted(plan.released)
        stored = await conn.execute(
            select(PARKED)
            .where(PARKED.c.job_id.in_(released))
            .order_by(PARKED.c.source_topic, PARKED.c.source_partition, PARKED.c.source_offset)
        )
        rows = [dict(row) for row in stored.mappings()]
        rows += [row for row in plan.parked if row["job_id"] in plan.released]
        plan.parked = [row for row in plan.parked if row["job_id"] not in plan.released]
        for row in rows:
            state = plan.jobs[row["job_id"]]
            if state.url and wanted(row["event_type"], state.events):
                plan.owe(row, state, now)
        await conn.execute(delete(PARKED).where(PARKED.c.job_id.in_(released)))

    async def _write(self, conn: AsyncConnection, plan: _Plan, now: datetime) -> None:
        jobs = [
            {
                "job_id": job_id,
                "requested": s.requested,
                "tenant": s.tenant,
                "url": s.url,
                "events": s.events,
                "attempt": s.fence.attempt,
                "terminal": s.fence.terminal,
                "updated_at": now,
            }
            for job_id, s in plan.jobs.items()
            if s.changed
        ]
        if jobs:
            await conn.execute(_UPSERT_JOBS, jobs)
        if plan.parked:
            await conn.execute(_INSERT_PARKED, plan.parked)
        if plan.deliveries:
            await conn.execute(_INSERT_DELIVERIES, plan.deliveries)

    async def purge_jobs(self, before: datetime, limit: int = 10_000) -> int:
        """Forget jobs not heard of since `before` (long ended: a job waits a day at most). A stray late
        event of one is then parked, and purged with the parked events."""
        async with self._transaction() as conn:
            doomed = select(JOBS.c.job_id).where(JOBS.c.updated_at < before).limit(limit)
            result = await conn.execute(delete(JOBS).where(JOBS.c.job_id.in_(doomed.scalar_subquery())))
        return int(result.rowcount or 0)

    async def purge_parked(self, before: datetime, limit: int = 10_000) -> int:
        """Drop parked events older than `before` (their job never came); at most `limit` per call."""
        async with self._transaction() as conn:
            doomed = select(PARKED.c.event_id).where(PARKED.c.parked_at < before).limit(limit)
            result = await conn.execute(delete(PARKED).where(PARKED.c.event_id.in_(doomed.scalar_subquery())))
        return int(result.rowcount or 0)

    async def purge_deliveries(self, before: datetime, limit: int = 10_000) -> int:
        """Delete delivered and dead deliveries queued before `before` (their attempts go with them)."""
        async with self._transaction() as conn:
            doomed = (
                select(DELIVERIES.c.id)
                .where(
                    DELIVERIES.c.created_at < before,
                    DELIVERIES.c.status != DeliveryStatus.PENDING.value,
                    # A dead delivery stays until its dead letter is out.
                    (DELIVERIES.c.status != DeliveryStatus.DEAD.value)
                    | DELIVERIES.c.dead_lettered_at.isnot(None),
                )
                .limit(limit)
            )
            result = await conn.execute(
                delete(DELIVERIES).where(DELIVERIES.c.id.in_(doomed.scalar_subquery()))
            )
        return int(result.rowcount or 0)

    # The sender's side.

    async def claim(
        self,
        limit: int,
        now: datetime,
        hold: timedelta,
        per_target: int | None = None,
        busy: Iterable[str] = (),
    ) -> list[Claimed]:
        """Take up to `limit` due deliveries for one attempt each: skip those another sender holds, move
        each one's due time `hold` ahead (its claim lapses then) and give it a fresh lease.

        At most `per_target` of them go to one URL, and none to the `busy` URLs (those with that many
        attempts under way already), so a receiver with a backlog cannot take every place.
        """
        lease = uuid.uuid4()
        pending = (DELIVERIES.c.status == DeliveryStatus.PENDING.value, DELIVERIES.c.next_attempt_at <= now)
        candidates = select(DELIVERIES.c.id)
        if per_target is not None:
            busy_urls = sorted(set(busy))
            rank = func.row_number().over(
                partition_by=DELIVERIES.c.url, order_by=DELIVERIES.c.next_attempt_at
            )
            ranked = (
                select(DELIVERIES.c.id, DELIVERIES.c.next_attempt_at, rank.label("rank"))
                .where(*pending, *([DELIVERIES.c.url.not_in(busy_urls)] if busy_urls else []))
                .subquery("ranked")
            )
            fair = select(ranked.c.id).where(ranked.c.rank <= per_target)
            candidates = candidates.where(DELIVERIES.c.id.in_(fair.scalar_subquery()))
        due = (
            candidates.where(*pending)
            .order_by(DELIVERIES.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        stmt = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id == due.c.id)
            .values(next_attempt_at=now + hold, lease=lease, attempts=DELIVERIES.c.attempts + 1)
            .returning(DELIVERIES)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            Claimed(
                id=row["id"],
                job_id=row["job_id"],
                tenant=row["tenant"],
                url=row["url"],
                event_type=row["event_type"],
                occurred_at=row["occurred_at"],
                payload=row["payload"],
                number=row["attempts"],
                failures=row["failures"],
                retry_since=row["retry_since"],
                lease=row["lease"],
            )
            for row in rows
        ]

    async def secrets(self, tenants: Iterable[str]) -> dict[str, list[str]]:
        """Each tenant's signing secrets, newest first (`services/common/tenants.py`)."""
        found: dict[str, list[str]] = {}
        try:
            async with AsyncSession(self._engine) as session:
                for tenant in sorted(set(tenants)):
                    found[tenant] = await webhook_secrets(session, tenant)
        except CONNECTION_LOST as e:
            raise DatabaseUnavailable(f"cannot read webhook secrets: {e}") from e
        return found

    async def record(
        self, claimed: Claimed, result: AttemptResult, next_at: datetime | None, now: datetime
    ) -> bool:
        """Log the attempt and move the delivery on: delivered, due again at `next_at`, or dead (a failure
        with no `next_at`). False when the lease had lapsed (another sender, or a redelivery, took over):
        the attempt is logged, the delivery left as it is."""
        values: dict[str, Any] = {"lease": None, "last_attempt_at": result.started_at}
        if result.outcome == "succeeded":
            values |= {"status": DeliveryStatus.SUCCEEDED.value, "delivered_at": now}
        elif next_at is not None:
            values |= {"next_attempt_at": next_at, "failures": DELIVERIES.c.failures + 1}
        else:
            reason = result.error or "gave up"
            values |= {
                "status": DeliveryStatus.DEAD.value,
                "dead_at": now,
                "dead_reason": reason,
                "failures": DELIVERIES.c.failures + 1,
            }
        attempt = {
            "delivery_id": claimed.id,
            "number": claimed.number,
            "started_at": result.started_at,
            "duration_ms": result.duration_ms,
            "outcome": result.outcome,
            "status_code": result.status_code,
            "error": result.error,
        }
        async with self._transaction() as conn:
            await conn.execute(ATTEMPTS.insert(), attempt)
            moved = await conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id == claimed.id, DELIVERIES.c.lease == claimed.lease)
                .values(**values)
            )
        return bool(moved.rowcount)

    @asynccontextmanager
    async def undead_lettered(
        self, limit: int
    ) -> AsyncIterator[tuple[list[dict[str, Any]], AsyncConnection]]:
        """Dead deliveries whose dead letter is not on the DLQ yet, locked for the caller's transaction."""
        async with self._transaction() as conn:
            rows = await conn.execute(
                select(DELIVERIES)
                .where(
                    DELIVERIES.c.status == DeliveryStatus.DEAD.value, DELIVERIES.c.dead_lettered_at.is_(None)
                )
                .order_by(DELIVERIES.c.dead_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            yield [dict(row) for row in rows.mappings()], conn

    @staticmethod
    async def mark_dead_lettered(conn: AsyncConnection, delivery_id: uuid.UUID, now: datetime) -> None:
        await conn.execute(
            update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(dead_lettered_at=now)
        )

    async def stats(self, now: datetime) -> Stats:
        async with self._transaction() as conn:
            pending, oldest = (
                await conn.execute(
                    select(func.count(), func.min(DELIVERIES.c.retry_since)).where(
                        DELIVERIES.c.status == DeliveryStatus.PENDING.value
                    )
                )
            ).one()
            dead = await conn.scalar(
                select(func.count()).where(DELIVERIES.c.status == DeliveryStatus.DEAD.value)
            )
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        return Stats(pending=int(pending), oldest_pending_seconds=max(age, 0.0), dead=int(dead or 0))


def _delivery(row: dict[str, Any], state: _JobState, now: datetime) -> dict[str, Any]:
    assert state.url is not None
    assert state.tenant is not None
    return {
        "id": row["event_id"],
        "job_id": row["job_id"],
        "tenant": state.tenant,
        "url": state.url,
        "event_type": row["event_type"],
        "occurred_at": _occurred_at(row["payload"]),
        "payload": row["payload"],
        "source_topic": row["source_topic"],
        "source_partition": row["source_partition"],
        "source_offset": row["source_offset"],
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "failures": 0,
        "created_at": now,
        "retry_since": now,
        "next_attempt_at": now,
    }


def _occurred_at(payload: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(payload["occurred_at"]).replace("Z", "+00:00"))
