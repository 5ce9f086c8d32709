"""/v1/jobs: submit, read, list, cancel, and the result (presigned redirect or streamed content)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from schemas.events import JobCancelRequested, JobRequested, utcnow
from schemas.jobs import JobRequest, JobStatus, Phase, resolve
from services.api import metrics
from services.api.admission import QueueFull, QuotaExceeded
from services.api.auth import CallerDep, SubmitterDep
from services.api.content import MEDIA_TYPES, ContentVariant, stream_object, variant_key
from services.api.deletion import DeletedOut, delete_job, was_deleted
from services.api.deps import AppState, SessionDep, StateDep
from services.api.errors import DB_ERRORS, Conflict, IdempotencyMismatch, JobNotFound, problems
from services.api.ids import created_at_of, keyed_job_id, new_job_id
from services.api.images import image_from_upload, image_from_url
from services.api.notify import wait_event
from services.api.queries import find_by_idempotency_key, get_job, list_jobs
from services.api.submit import accept_by, publish_request
from services.api.views import JobList, JobOut, job_out, links
from services.common.readmodel import JobRow
from services.common.tenants import Caller

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def request_hash(req: JobRequest) -> str:
    """Hash of what the client asked for (explicit fields only), to compare Idempotency-Key retries."""
    canonical = req.model_dump_json(exclude_unset=True, round_trip=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def wait_projected(
    state: AppState, session: SessionDep, job_id: uuid.UUID, tenant: str, changed: asyncio.Event
) -> JobRow | None:
    """Read-your-writes: wait (bounded) until the projector has written the job's row."""
    deadline = time.monotonic() + state.settings.projection_wait_seconds
    while True:
        job = await get_job(session, job_id, tenant)
        remaining = deadline - time.monotonic()
        if job is not None or remaining <= 0:
            return job
        await session.rollback()  # the connection goes back to the pool while we wait
        await wait_event(changed, min(remaining, 0.25))


def _view(state: AppState, job: JobRow) -> JobOut:
    """The job as stored, with its place in the scheduler's queue view (a lookup, no query)."""
    position, eta = (None, None) if JobStatus(job.status).is_terminal() else state.queue_view.lookup(job.id)
    return job_out(job, state.settings.public_base_url, position, eta)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        202: {"description": "Accepted, durable"},
        **problems(
            400,
            409,
            413,
            429,
            why={
                400: "The body is not UTF-8 JSON",
                409: "The Idempotency-Key named a job that was deleted: submit with a new key",
                503: (
                    "Job not created (Kafka did not take it by its submit deadline; it will never run)."
                    " Retry after Retry-After seconds with the same Idempotency-Key."
                ),
            },
        ),
    },
)
async def submit(
    body: JobRequest,
    *,
    caller: SubmitterDep,
    state: StateDep,
    session: SessionDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JobOut:
    """Accept a job. The 202 is sent only after Kafka acknowledged `job.requested` with acks=all and an
    append time within the submit deadline; otherwise 503, and the job will never exist (`submit.py`)."""
    return await accept(
        body, caller=caller, state=state, session=session, response=response, idempotency_key=idempotency_key
    )


@dataclass(frozen=True, slots=True)
class ImageUpload:
    """An input image the client uploaded (`/v1/videos`' input_reference), named by its form field."""

    data: bytes
    content_type: str | None
    field: str


async def accept(
    body: JobRequest,
    *,
    caller: Caller,
    state: AppState,
    session: SessionDep,
    response: Response,
    idempotency_key: str | None,
    upload: ImageUpload | None = None,
) -> JobOut:
    """`submit`, for the routes that take a job in another shape (`/v1/videos`), an uploaded image too."""
    started = time.perf_counter()
    resolved = resolve(body, image_field=upload.field if upload is not None else None)
    digest = request_hash(body)
    if upload is not None:  # a retry with the same key and another image is another body
        digest = hashlib.sha256(f"{digest}:{hashlib.sha256(upload.data).hexdigest()}".encode()).hexdigest()
    if idempotency_key is not None:
        job_id = keyed_job_id(caller.tenant, idempotency_key)
        existing = await find_by_idempotency_key(session, caller.tenant, idempotency_key)
        if existing is not None:
            return await _replayed(state, session, existing, digest, response)
        if await was_deleted(session, job_id):
            raise Conflict(
                f"this Idempotency-Key named job {job_id}, which was deleted; submit with a new key",
                job_id=str(job_id),
            )
    else:
        job_id = new_job_id()
    await _check_queue(state, session)
    _check_quota(state, caller)
    if upload is not None:
        key = await image_from_upload(state.storage, job_id, upload.data, upload.content_type, upload.field)
        resolved = resolved.model_copy(update={"image_key": key})
    elif body.image_url is not None:
        # Stored before the request is published: a worker never sees a job whose image is missing.
        key = await image_from_url(state.storage, job_id, str(body.image_url), "image_url")
        resolved = resolved.model_copy(update={"image_key": key})
    now = utcnow()
    event = JobRequested(
        job_id=job_id,
        producer="api",
        occurred_at=now,
        request=resolved,
        tenant=caller.tenant,
        limits=caller.limits,
        idempotency_key=idempotency_key,
        request_hash=digest,
        accept_by=accept_by(state.settings, now),
    )
    if idempotency_key is None:
        # A fresh UUIDv7: nothing to compare with, and a read of it waits for its projection (`load_job`),
        # so the 202 need not.
        await _publish(state, event, response)
        metrics.SUBMIT_SECONDS.observe(time.perf_counter() - started)
        return _unprojected_view(state, event)
    with state.notifier.watch(job_id) as changed:
        await _publish(state, event, response)
        # Kafka has the job: from here on the answer is a 202 whatever the read model does. A keyed job
        # waits for its row, which tells whether a concurrent twin with another body got there first.
        try:
            job = await wait_projected(state, session, job_id, caller.tenant, changed)
            view = _view(state, job) if job is not None else None
        except DB_ERRORS as e:
            log.warning("job=%s accepted; its projection could not be read: %s", job_id, e.__class__.__name__)
            job = view = None
    metrics.SUBMIT_SECONDS.observe(time.perf_counter() - started)
    if job is None or view is None:
        return _unprojected_view(state, event)
    if job.request_hash != digest:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different body", job_id=str(job_id))
    return view


def _check_quota(state: AppState, caller: Caller) -> None:
    """429 when the tenant has `max_queued_jobs` waiting or used its GPU seconds of the day (UTC), as
    the scheduler's queue view says; without a recent view the submit is admitted (the scheduler still
    enforces the running and GPU limits)."""
    load = state.queue_view.load(caller.tenant)
    if load is None:
        return
    queued, _, gpu_today = load
    if queued >= caller.max_queued_jobs:
        raise QuotaExceeded(
            f"tenant {caller.tenant} has {queued} jobs waiting (at most {caller.max_queued_jobs});"
            " submit again after Retry-After seconds",
            limit="max_queued_jobs",
        )
    budget = caller.limits.gpu_seconds_per_day
    if budget is not None and gpu_today >= budget:
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        error = QuotaExceeded(
            f"tenant {caller.tenant} used {gpu_today:g} of its {budget:g} GPU seconds today (UTC);"
            " the budget renews at midnight UTC",
            limit="gpu_seconds_per_day",
        )
        error.retry_after = max(1, int((midnight - now).total_seconds()))
        raise error


async def _publish(state: AppState, event: JobRequested, response: Response) -> None:
    ack = await publish_request(state.publisher, event, state.settings)
    state.lag.acked(ack.partition, ack.offset)
    state.queue_view.accepted(event.tenant, event.occurred_at)
    response.headers["Location"] = f"/v1/jobs/{event.job_id}"


async def _check_queue(state: AppState, session: SessionDep) -> None:
    """429 once the queue holds `max_queued_jobs`; a read model that is away does not stop submits."""
    try:
        queued = await state.queue.current(session)
    except DB_ERRORS as e:
        log.warning("queue depth unknown, submit admitted: %s", e.__class__.__name__)
        await session.rollback()
        return
    if queued >= state.settings.max_queued_jobs:
        raise QueueFull(
            f"{queued} jobs wait for a slot (at most {state.settings.max_queued_jobs});"
            " submit again after Retry-After seconds",
            limit="max_queued_jobs",
        )


async def _replayed(
    state: AppState, session: SessionDep, job: JobRow, digest: str, response: Response
) -> JobOut:
    if job.request_hash != digest:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different body", job_id=str(job.id))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return _view(state, job)


def _unprojected_view(state: AppState, event: JobRequested) -> JobOut:
    """The job is durable in Kafka but not yet in the read model: answer from the request itself. Its
    queue position is not known yet (null); a read or the event stream gives it."""
    now = event.occurred_at
    return JobOut(
        id=event.job_id,
        status=JobStatus.QUEUED,
        phase=Phase.QUEUED,
        progress=0.0,
        step=None,
        total_steps=None,
        queue_position=None,
        attempt=0,
        created_at=now,
        dispatched_at=None,
        started_at=None,
        finished_at=None,
        updated_at=now,
        request=event.request,
        result=None,
        error=None,
        links=links(state.settings.public_base_url, event.job_id, succeeded=False),
    )


async def load_job(state: AppState, session: SessionDep, job_id: uuid.UUID, tenant: str) -> JobRow:
    """The tenant's job, waiting (bounded) when the id is recent enough to be still on its way to the read
    model. Another tenant's job is as unknown as a job that never was: 404, not 403."""
    job = await get_job(session, job_id, tenant)
    if job is not None:
        return job
    created = created_at_of(job_id)
    recent = timedelta(seconds=state.settings.recent_job_seconds)
    young = created is not None and datetime.now(UTC) - created < recent
    if young and not await was_deleted(session, job_id):  # a deleted job is not on its way
        with state.notifier.watch(job_id) as changed:
            job = await wait_projected(state, session, job_id, tenant, changed)
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


@router.get("/{job_id}", response_model=JobOut, responses=problems(404))
async def read(job_id: uuid.UUID, caller: CallerDep, state: StateDep, session: SessionDep) -> JobOut:
    return _view(state, await load_job(state, session, job_id, caller.tenant))


async def _own_submits_projected(state: AppState, session: SessionDep) -> None:
    """Read-your-writes for lists: a 202 does not wait for the read model, so a list waits until the
    projector has passed this process's submits acknowledged so far (nothing to wait for when idle)."""
    marks = state.lag.newest()
    deadline = time.monotonic() + state.settings.projection_wait_seconds
    while marks and time.monotonic() < deadline:
        if await state.lag.projected(session, marks):
            return
        await session.rollback()  # the connection goes back to the pool while we wait
        await asyncio.sleep(0.02)


@router.get("", response_model=JobList, responses=problems(400))
async def index(
    *,
    caller: CallerDep,
    state: StateDep,
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    """The caller's tenant's jobs, newest first; pass `next_cursor` back as `cursor` for the next page.
    The jobs this api process accepted before the request are in it (it waits, bounded, for their
    projection)."""
    await _own_submits_projected(state, session)
    rows, next_cursor = await list_jobs(
        session, caller.tenant, status.value if status else None, limit, cursor
    )
    data = [_view(state, job) for job in rows]
    return JobList(data=data, next_cursor=next_cursor)


@router.delete("/{job_id}", response_model=DeletedOut, responses=problems(404))
async def delete(job_id: uuid.UUID, *, caller: CallerDep, state: StateDep, session: SessionDep) -> DeletedOut:
    """Delete the job: cancelled if it has not ended, then its video, poster, thumbnail, spritesheet,
    previews, input image and checkpoints are removed from S3, then its `job.deleted` tombstone is
    published and its row removed; its event streams end. A deleted job is a 404 everywhere, a second
    delete too. Kafka keeps the job's events for the topics' retention (docs/operations.md)."""
    job = await load_job(state, session, job_id, caller.tenant)
    return DeletedOut(id=job_id, objects_deleted=await delete_job(state, session, job))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, responses=problems(404, 409))
async def cancel(job_id: uuid.UUID, *, caller: CallerDep, state: StateDep, session: SessionDep) -> JobOut:
    """Ask for a cancel: a queued job never starts, a running one stops within one denoising step."""
    job = await load_job(state, session, job_id, caller.tenant)
    if JobStatus(job.status).is_terminal():
        raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be cancelled")
    await state.publisher.control(
        JobCancelRequested(job_id=job_id, producer="api", attempt=job.attempt, tenant=job.tenant)
    )
    return _view(state, job)


def _succeeded(job: JobRow) -> dict[str, object]:
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise Conflict(f"job {job.id} is {job.status}; the result exists once it has succeeded")
    result: dict[str, object] = job.result
    return result


@router.get(
    "/{job_id}/result",
    response_model=None,
    responses={
        200: {
            "description": "With ?redirect=false: the presigned URL and when it expires",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        302: {"description": "To the MP4"},
        **problems(404, 409),
    },
)
async def result(
    job_id: uuid.UUID, *, caller: CallerDep, state: StateDep, session: SessionDep, redirect: bool = True
) -> RedirectResponse | JSONResponse:
    """A presigned S3 URL of the MP4: a 302 to it, or `{url, expires_at}` with `?redirect=false`."""
    job = await load_job(state, session, job_id, caller.tenant)
    key = str(_succeeded(job)["video_key"])
    ttl = state.settings.presign_expiry_seconds
    url = await state.storage.presign_get(key, ttl, filename=f"{job_id}.mp4")
    if redirect:
        return RedirectResponse(url, status_code=302)
    expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat()
    return JSONResponse({"url": url, "expires_at": expires})


@router.get(
    "/{job_id}/content",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The MP4, or a JPEG for the other variants",
            "content": {"video/mp4": {}, "image/jpeg": {}},
        },
        206: {"description": "The asked Range", "content": {"video/mp4": {}, "image/jpeg": {}}},
        **problems(404, 409, 416),
    },
)
async def content(
    job_id: uuid.UUID,
    request: Request,
    *,
    caller: CallerDep,
    state: StateDep,
    session: SessionDep,
    variant: ContentVariant = ContentVariant.VIDEO,
    step: Annotated[
        int | None, Query(ge=1, le=100_000, description="variant=preview: the step of a job.preview event")
    ] = None,
    attempt: Annotated[
        int | None, Query(ge=1, le=1000, description="variant=preview: its attempt (default: the current)")
    ] = None,
) -> StreamingResponse:
    """The MP4 (`variant=video`), its poster, thumbnail or spritesheet (JPEG), or the preview of the
    latents after a step (`variant=preview&step=N`), streamed through the api with HTTP Range support."""
    state.streams.check("the download")
    job = await load_job(state, session, job_id, caller.tenant)
    key = variant_key(job, variant, step, attempt)
    range_header = request.headers.get("range")
    return await stream_object(state.storage, key, range_header, state.streams, MEDIA_TYPES[variant])
