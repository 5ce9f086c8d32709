"""Deleting a job (`DELETE /v1/jobs/{id}`, `DELETE /v1/videos/{id}`): cancel, S3, tombstone, in that order.

1. A job that has not ended is cancelled (`job.cancel_requested`): a waiting one never starts, a running
   one stops within a step.
2. Every object under `jobs/{id}/` and `checkpoints/{id}/` is deleted: video, poster, thumbnail,
   spritesheet, previews, input image, checkpoints.
3. The `job.deleted` tombstone goes to `jobs.events` (acks=all). The projector removes the job's row and
   history on it, the job's open event streams end with it (or with `job.cancelled`, when the slot
   stopped before the tombstone was projected), downstream consumers forget the job.

The row goes last, so a crash or an error mid-way leaves the job readable and deletable: a retry does
the rest (deleting what is gone deletes nothing). Objects a slot writes after step 2 (it was uploading
when the cancel came) are deleted by the projector's sweeper minutes later (services/projector/retention.py).
The answer waits (bounded) until the row is gone, so a read right after it is a 404.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import EventType, JobCancelRequested, JobDeleted
from schemas.jobs import JobStatus
from services.api.deps import AppState
from services.api.errors import DB_ERRORS
from services.api.notify import wait_event
from services.api.queries import get_job
from services.common.readmodel import JobEventRow, JobRow

log = logging.getLogger(__name__)


class DeletedOut(BaseModel):
    """What a delete answers."""

    id: uuid.UUID
    deleted: Literal[True] = True
    objects_deleted: int = Field(ge=0, description="S3 objects removed by this request.")


async def was_deleted(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Whether the job's tombstone is in the read model (its row is gone, or about to go)."""
    found = await session.scalar(
        select(JobEventRow.event_id)
        .where(JobEventRow.job_id == job_id, JobEventRow.type == EventType.DELETED.value)
        .limit(1)
    )
    return found is not None


async def delete_job(state: AppState, session: AsyncSession, job: JobRow) -> int:
    """Delete `job` (the caller's, as loaded); returns how many S3 objects went."""
    job_id, tenant, attempt = job.id, job.tenant, job.attempt
    if not JobStatus(job.status).is_terminal():
        cancel = JobCancelRequested(
            job_id=job_id, producer="api", attempt=attempt, tenant=tenant, reason="deleted by client"
        )
        await state.publisher.control(cancel)
    await session.rollback()  # no pooled connection held while S3 and Kafka work
    objects = await state.storage.delete_job_objects(job_id)
    tombstone = JobDeleted(
        job_id=job_id, producer="api", attempt=attempt, tenant=tenant, objects_deleted=objects
    )
    with state.notifier.watch(job_id) as changed:
        await state.publisher.deleted(tombstone)
        deadline = time.monotonic() + state.settings.projection_wait_seconds
        try:
            while await get_job(session, job_id, tenant) is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("job=%s deleted; its row was not gone within the wait", job_id)
                    break
                await session.rollback()
                await wait_event(changed, min(remaining, 0.25))
        except DB_ERRORS as e:  # the tombstone is durable: the row goes when the projector gets to it
            log.warning("job=%s deleted; could not see its row go: %s", job_id, e.__class__.__name__)
    log.info("deleted job=%s tenant=%s objects_deleted=%d", job_id, tenant, objects)
    return objects
