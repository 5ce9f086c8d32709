"""The scheduler's view of its queue: each waiting job's place in its lane and when it should start and
end, published on `reelstream.scheduler.queue` so that readers need not rebuild the scheduler's order.

One record holds the whole view (key `queue`, a compacted topic: the latest record is the truth). Jobs
are listed in the order the scheduler will dispatch them, per lane (fair share between tenants: each
next job is the oldest of the tenant holding the fewest slots); a job's position is its index in its
lane plus one. Seconds are counted from `generated_at`; None where a step time the estimate needs
has not been measured yet.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.jobs import Priority

QUEUE_VIEW_KEY: Final = b"queue"

Estimate = tuple[uuid.UUID, float | None, float | None]
"""(job id, seconds until it starts on a GPU, seconds it then runs)."""

TenantLoad = tuple[int, int, float]
"""(jobs waiting, slots held, GPU seconds used today in UTC) of one tenant."""


class QueueView(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    generated_at: datetime
    lanes: dict[Priority, list[Estimate]] = Field(
        description="Waiting jobs per lane in dispatch order: position = index + 1."
    )
    held: list[Estimate] = Field(
        default_factory=list,
        description="Jobs a slot holds (running, or dispatched to follow the running one): no position.",
    )
    tenants: dict[str, TenantLoad] = Field(
        default_factory=dict,
        description="Per tenant with work or use today: (waiting, slots held, GPU seconds used today).",
    )

    def positions(self) -> dict[uuid.UUID, tuple[int | None, float | None, float | None]]:
        """job id -> (position in its lane or None, wait seconds, run seconds)."""
        out: dict[uuid.UUID, tuple[int | None, float | None, float | None]] = {}
        for jobs in self.lanes.values():
            for index, (job_id, wait, run) in enumerate(jobs):
                out[job_id] = (index + 1, wait, run)
        for job_id, wait, run in self.held:
            out[job_id] = (None, wait, run)
        return out
