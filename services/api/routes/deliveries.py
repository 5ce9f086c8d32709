"""/v1/jobs/{id}/deliveries: the delivery log of a job's webhook, and redelivery of one delivery.

The notifier writes these rows (`services/notifier`); the api only reads them and re-queues one on request.
A job of another tenant is unknown here as everywhere (`load_job`: 404).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.api.auth import CallerDep
from services.api.deps import SessionDep, StateDep, WriteSessionDep
from services.api.errors import ApiError, problems
from services.api.routes.jobs import load_job
from services.common.webhooks import job_deliveries, redeliver

router = APIRouter(prefix="/v1/jobs", tags=["webhooks"])


class DeliveryNotFound(ApiError):
    status = 404
    title = "Delivery not found"


class AttemptOut(BaseModel):
    """One POST to the webhook."""

    model_config = ConfigDict(frozen=True)

    number: int
    started_at: datetime
    duration_ms: float
    outcome: str = Field(description="succeeded | failed | refused (the target is not allowed: not retried)")
    status_code: int | None = Field(description="The receiver's HTTP status; none when no answer came.")
    error: str | None


class DeliveryOut(BaseModel):
    """One event owed to the job's webhook; `id` is the event id, sent as `webhook-id`."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    event_type: str
    status: str = Field(description="pending | succeeded | dead")
    url: str
    occurred_at: datetime
    created_at: datetime
    attempt_count: int
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    dead_at: datetime | None
    dead_reason: str | None
    attempts: list[AttemptOut] = Field(description="Newest first.")


class DeliveryList(BaseModel):
    data: list[DeliveryOut]


def _out(row: dict[str, Any]) -> DeliveryOut:
    pending = row["status"] == "pending"
    return DeliveryOut(
        id=row["id"],
        event_type=row["event_type"],
        status=row["status"],
        url=row["url"],
        occurred_at=row["occurred_at"],
        created_at=row["created_at"],
        attempt_count=row["attempts"],
        next_attempt_at=row["next_attempt_at"] if pending else None,
        last_attempt_at=row["last_attempt_at"],
        delivered_at=row["delivered_at"],
        dead_at=row["dead_at"],
        dead_reason=row["dead_reason"],
        attempts=[AttemptOut.model_validate(a, from_attributes=False) for a in row["attempt_log"]],
    )


@router.get("/{job_id}/deliveries", response_model=DeliveryList, responses=problems(404))
async def list_deliveries(
    job_id: uuid.UUID, caller: CallerDep, state: StateDep, session: SessionDep
) -> DeliveryList:
    """The job's webhook deliveries, newest first, each with its attempts."""
    await load_job(state, session, job_id, caller.tenant)
    return DeliveryList(data=[_out(row) for row in await job_deliveries(session, job_id)])


@router.post(
    "/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    responses=problems(404, why={404: "No such job, or no such delivery of it"}),
)
async def redeliver_one(
    job_id: uuid.UUID, delivery_id: uuid.UUID, caller: CallerDep, state: StateDep, session: WriteSessionDep
) -> DeliveryOut:
    """Queue the delivery again, due now, with a fresh retry window: delivered, retrying or dead alike.
    The receiver gets the same `webhook-id`, so it can tell a repeat."""
    await load_job(state, session, job_id, caller.tenant)
    if not await redeliver(session, job_id, delivery_id, datetime.now(UTC)):
        raise DeliveryNotFound(f"job {job_id} has no delivery {delivery_id}")
    await session.commit()
    found = [row for row in await job_deliveries(session, job_id) if row["id"] == delivery_id]
    return _out(found[0])
