"""The notifier's tables: what each job's webhook wants, the deliveries still owed, and every attempt.

These are an outbox, not a projection (the api reads them, and re-queues a delivery, with the functions at
the end): the notifier writes `webhook_jobs`, `webhook_parked` and
`webhook_deliveries` together with its Kafka offsets (`consumer_offsets`, consumer `reelstream-notifier`)
in one transaction per batch, and its sender works the deliveries off from there. A replay of the read
model leaves them alone; attempts already made cannot be replayed anyway.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CursorResult,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.readmodel import Base

# The longest tenant name the tables hold (the read model's `jobs.tenant` holds as many).
TENANT_CHARS = 128


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


class WebhookJob(Base):
    """One row per job the notifier has heard of, with or without a webhook.

    `requested` tells whether its on-time `job.requested` was read (the two topics are read independently,
    so a job's events can come first); `url` is None for a job without a webhook, whose events are then
    dropped at once. `attempt` and `terminal` fence events the way the read model does: an event of an
    attempt older than the newest dispatched one, or after a counted terminal event, is never delivered.
    """

    __tablename__ = "webhook_jobs"

    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    requested: Mapped[bool] = mapped_column(Boolean, default=False)
    tenant: Mapped[str | None] = mapped_column(String(TENANT_CHARS))
    url: Mapped[str | None] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONB, default=list)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    terminal: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_webhook_jobs_updated_at", "updated_at"),)


class WebhookParked(Base):
    """An event (counted, of a kind a webhook may want) of a job whose `job.requested` was not read yet.

    It becomes a delivery, or is dropped, when that request is read; one that waits longer than
    `parked_keep_seconds` belongs to no job (a submit that missed its deadline) and is purged.
    """

    __tablename__ = "webhook_parked"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    parked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_webhook_parked_job_id", "job_id"),
        Index("ix_webhook_parked_parked_at", "parked_at"),
    )


class WebhookDelivery(Base):
    """One event owed to one job's webhook. Its id is the event id, sent as `webhook-id`, so a receiver
    that sees it twice (a retry, a redelivery) can tell.

    `next_attempt_at` is when it is due; a sender that claims it moves that past the attempt's timeout and
    sets `lease`, so a crashed sender's claim lapses by itself and a late result of a lapsed claim is not
    recorded. `failures` counts the failed attempts since `retry_since` (the backoff exponent); a
    redelivery starts both over, while `attempts` counts every attempt ever made.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    tenant: Mapped[str] = mapped_column(String(TENANT_CHARS))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source_topic: Mapped[str] = mapped_column(String(255))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retry_since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_reason: Mapped[str | None] = mapped_column(Text)
    # Set once the dead letter of a dead delivery is on the DLQ; a redelivery clears it.
    dead_lettered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_webhook_deliveries_job_id", "job_id", text("created_at DESC")),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_webhook_deliveries_undead_lettered",
            "dead_at",
            postgresql_where=text("status = 'dead' AND dead_lettered_at IS NULL"),
        ),
        Index("ix_webhook_deliveries_dead", "dead_at", postgresql_where=text("status = 'dead'")),
        # For the purge of finished deliveries past their keep time.
        Index("ix_webhook_deliveries_created_at", "created_at"),
    )


class WebhookAttempt(Base):
    """One POST of a delivery (the delivery log): when, how long, and what came back or went wrong."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    # succeeded | failed | refused (the target is not allowed: no retry)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id"),)


WEBHOOK_TABLES = (
    WebhookJob.__table__,
    WebhookParked.__table__,
    WebhookDelivery.__table__,
    WebhookAttempt.__table__,
)

_DELIVERIES = Base.metadata.tables[WebhookDelivery.__tablename__]
_ATTEMPTS = Base.metadata.tables[WebhookAttempt.__tablename__]


# Reads and the redelivery behind the api's delivery routes.


async def job_deliveries(session: AsyncSession, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's deliveries, newest first, each with its attempts (newest first)."""
    rows = (
        await session.execute(
            select(_DELIVERIES)
            .where(_DELIVERIES.c.job_id == job_id)
            .order_by(_DELIVERIES.c.created_at.desc(), _DELIVERIES.c.occurred_at.desc(), _DELIVERIES.c.id)
        )
    ).mappings()
    deliveries = [dict(row) for row in rows]
    if not deliveries:
        return []
    attempts = (
        await session.execute(
            select(_ATTEMPTS)
            .where(_ATTEMPTS.c.delivery_id.in_([d["id"] for d in deliveries]))
            .order_by(_ATTEMPTS.c.number.desc(), _ATTEMPTS.c.id.desc())
        )
    ).mappings()
    by_delivery: dict[uuid.UUID, list[dict[str, Any]]] = {d["id"]: [] for d in deliveries}
    for attempt in attempts:
        by_delivery[attempt["delivery_id"]].append(dict(attempt))
    for delivery in deliveries:
        delivery["attempt_log"] = by_delivery[delivery["id"]]
    return deliveries


async def redeliver(session: AsyncSession, job_id: uuid.UUID, delivery_id: uuid.UUID, now: datetime) -> bool:
    """Queue a delivery of the job again, due now, with a fresh retry window; False when there is none.

    Delivered, dead or still retrying alike: the receiver gets the same `webhook-id` again. A lease held by
    a sender lapses, so that sender's result no longer moves the delivery.
    """
    result = await session.execute(
        update(_DELIVERIES)
        .where(_DELIVERIES.c.id == delivery_id, _DELIVERIES.c.job_id == job_id)
        .values(
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            retry_since=now,
            failures=0,
            lease=None,
            delivered_at=None,
            dead_at=None,
            dead_reason=None,
            dead_lettered_at=None,
        )
    )
    return bool(cast("CursorResult[Any]", result).rowcount)
