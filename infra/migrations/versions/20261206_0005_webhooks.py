"""Webhooks: the notifier's subscriptions, parked events, deliveries and delivery log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UUID = postgresql.UUID(as_uuid=True)
_TIME = sa.DateTime(timezone=True)


def _source() -> list[sa.Column[object]]:
    """Where the event was read: a dead letter names it."""
    return [
        sa.Column("source_topic", sa.String(255), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "webhook_jobs",
        sa.Column("job_id", _UUID, nullable=False),
        sa.Column("requested", sa.Boolean(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("events", postgresql.JSONB(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("terminal", sa.Boolean(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_webhook_jobs"),
    )
    op.create_index("ix_webhook_jobs_updated_at", "webhook_jobs", ["updated_at"])
    op.create_table(
        "webhook_parked",
        sa.Column("event_id", _UUID, nullable=False),
        sa.Column("job_id", _UUID, nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        *_source(),
        sa.Column("parked_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_webhook_parked"),
    )
    op.create_index("ix_webhook_parked_job_id", "webhook_parked", ["job_id"])
    op.create_index("ix_webhook_parked_parked_at", "webhook_parked", ["parked_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _UUID, nullable=False),
        sa.Column("job_id", _UUID, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("occurred_at", _TIME, nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        *_source(),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("retry_since", _TIME, nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("lease", _UUID, nullable=True),
        sa.Column("last_attempt_at", _TIME, nullable=True),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.Column("dead_at", _TIME, nullable=True),
        sa.Column("dead_reason", sa.Text(), nullable=True),
        sa.Column("dead_lettered_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "ix_webhook_deliveries_job_id", "webhook_deliveries", ["job_id", sa.text("created_at DESC")]
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_undead_lettered",
        "webhook_deliveries",
        ["dead_at"],
        postgresql_where=sa.text("status = 'dead' AND dead_lettered_at IS NULL"),
    )
    op.create_index(
        "ix_webhook_deliveries_dead",
        "webhook_deliveries",
        ["dead_at"],
        postgresql_where=sa.text("status = 'dead'"),
    )
    op.create_index("ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", _UUID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name="fk_webhook_attempts_delivery_id_webhook_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_parked")
    op.drop_table("webhook_jobs")
