"""jobs.phase of a finished job: its end (succeeded, failed, cancelled), not the worker's last phase.

The projector now sets it on the terminal event; rows that finished before keep `uploading` (or another
working phase) unless moved here, to what a replay would give them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE jobs SET phase = status WHERE status IN ('succeeded', 'failed', 'cancelled')")


def downgrade() -> None:
    # The working phase a finished job had last is not kept anywhere else; `uploading` is what most had.
    op.execute("UPDATE jobs SET phase = 'uploading' WHERE phase IN ('succeeded', 'failed', 'cancelled')")
