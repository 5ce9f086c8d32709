"""Deletion and retention: the indexes the projector's sweeper reads by.

Expired jobs are found by `finished_at`, and the jobs deleted lately (whose prefixes the sweeper empties
once more, for objects a slot wrote after the delete) by their tombstone's time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_finished", "jobs", ["finished_at"], postgresql_where=sa.text("finished_at IS NOT NULL")
    )
    op.create_index(
        "ix_job_events_tombstones",
        "job_events",
        ["occurred_at"],
        postgresql_where=sa.text("type = 'job.deleted'"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_tombstones", table_name="job_events")
    op.drop_index("ix_jobs_finished", table_name="jobs")
