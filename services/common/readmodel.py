"""The read model the projector writes and the API reads: jobs, job events and consumer offsets.

It is a projection of Kafka and can be rebuilt by replaying the topics (`reelstream-projector replay`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final, TypeAlias

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Row
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NOTIFY_CHANNEL: Final = "reelstream_jobs"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        }
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int | None] = mapped_column(Integer)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    seconds_per_step: Mapped[float | None] = mapped_column(Float)
    priority: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    slot: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    checkpoint_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Since when the job waits in its lane: created_at, or the time of its last preemption.
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant", text("created_at DESC"), text("id DESC")),
        Index("ix_jobs_tenant_status_created", "tenant", "status", text("created_at DESC"), text("id DESC")),
        Index(
            "uq_jobs_tenant_idempotency_key",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ix_jobs_waiting",
            "priority",
            "queued_at",
            "id",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        # The retention sweeper's expired jobs.
        Index("ix_jobs_finished", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
    )


# The `jobs` table for Core statements, and a row such a statement returns: the columns of `Job` as
# attributes, without an ORM instance. The api's reads use them: building instances (identity map,
# instrumented attributes) it only reads cost about 0.3 ms of CPU a request, GETs and lists mixed.
JOBS: Final = Job.__table__
JobRow: TypeAlias = Row[Any]


class JobEventRow(Base):
    """One lifecycle event of one job; `seq` is the per-job order that SSE clients see as event ids.

    `job.requested` has seq 0; events of `jobs.events` get 1, 2, ... in their partition order, so a replay
    gives the same numbers. `applied` is false for events fenced off (a stale attempt, after a terminal).
    """

    __tablename__ = "job_events"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    applied: Mapped[bool] = mapped_column(Boolean)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        Index("uq_job_events_job_seq", "job_id", "seq", unique=True),
        # Tombstones of deleted jobs (they fence off late events); the sweeper reads the recent ones.
        Index("ix_job_events_tombstones", "occurred_at", postgresql_where=text("type = 'job.deleted'")),
    )


class ConsumerOffset(Base):
    """Next offset to read, written in the same transaction as the rows it produced."""

    __tablename__ = "consumer_offsets"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


# The tables a replay rebuilds from Kafka (others on the same metadata, such as tenants, are not projections).
READ_MODEL_TABLES: Final[tuple[Table, ...]] = tuple(
    Base.metadata.tables[model.__tablename__] for model in (Job, JobEventRow, ConsumerOffset)
)
