"""jobs.queued_at: since when a job waits in its lane, so queue positions follow the scheduler's order.

A job preempted at a checkpoint waits again behind the jobs already waiting; ordering the
lane by acceptance time put it at the front. Existing rows get the value a replay would give them:
their last applied `job.preempted`, else their acceptance.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status = 'queued' AND dispatched_at IS NULL")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET queued_at = created_at")
    op.execute(
        """
        UPDATE jobs SET queued_at = last_preemption.occurred_at
        FROM (
            SELECT DISTINCT ON (job_id) job_id, occurred_at FROM job_events
            WHERE type = 'job.preempted' AND applied
            ORDER BY job_id, seq DESC
        ) AS last_preemption
        WHERE jobs.id = last_preemption.job_id
        """
    )
    op.alter_column("jobs", "queued_at", nullable=False)
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.create_index("ix_jobs_waiting", "jobs", ["priority", "queued_at", "id"], postgresql_where=WAITING)


def downgrade() -> None:
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.create_index("ix_jobs_waiting", "jobs", ["priority", "created_at", "id"], postgresql_where=WAITING)
    op.drop_column("jobs", "queued_at")
