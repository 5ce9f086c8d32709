"""GET /v1/jobs/{id}/events: the job's events as Server-Sent Events, replayable with Last-Event-ID."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from schemas.events import TERMINAL_TYPES
from services.api import metrics
from services.api.deps import AppState, SessionDep, StateDep
from services.api.errors import DB_ERRORS, ApiError, problems
from services.api.eta import Eta, estimate
from services.api.notify import wait_event
from services.api.queries import events_after, get_job, queue_position
from services.api.routes.jobs import load_job
from services.common.readmodel import JobEventRow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["events"])
MAX_SEQ = 2**31 - 1  # event ids are the per-job seq, a 32-bit column
TERMINAL = {t.value for t in TERMINAL_TYPES}


class BadLastEventId(ApiError):
    status = 400
    title = "Invalid Last-Event-ID"


def _last_event_id(header: str) -> int:
    try:
        seq = int(header)
    except ValueError:
        seq = -2
    if not -1 <= seq <= MAX_SEQ:
        raise BadLastEventId(
            f"Last-Event-ID must be an event id this stream sent (an integer 0 to {MAX_SEQ}), got {header!r}"
        )
    return seq


def frame(row: JobEventRow) -> str:
    data = json.dumps({"seq": row.seq, **row.payload}, separators=(",", ":"))
    return f"id: {row.seq}\nevent: {row.type}\ndata: {data}\n\n"


def queue_frame(position: int, eta: Eta | None) -> str:
    data: dict[str, object] = {"queue_position": position}
    if eta is not None:
        data["eta"] = {"wait_seconds": round(eta.wait_seconds, 2), "run_seconds": round(eta.run_seconds, 2)}
    return f"event: job.queue_position\ndata: {json.dumps(data)}\n\n"


async def _position(state: AppState, job_id: uuid.UUID) -> tuple[int | None, Eta | None]:
    async with state.sessions() as session:
        job = await get_job(session, job_id)
        if job is None:
            return None, None
        position = await queue_position(session, job)
        eta = await estimate(session, job, state.settings.gpu_slots) if position is not None else None
        return position, eta


async def _rows(state: AppState, job_id: uuid.UUID, after: int) -> list[JobEventRow]:
    async with state.sessions() as session:
        return list(await events_after(session, job_id, after))


async def event_stream(state: AppState, job_id: uuid.UUID, after: int) -> AsyncIterator[str]:
    """Replay what is stored after `after`, then follow live until the terminal event has been sent.

    Each read takes a pooled connection for its query only; a database that is away pauses the stream
    (keep-alives go on) instead of ending it.
    """
    metrics.SSE_CLIENTS.inc()
    last_position: int | None = None
    last_sent = time.monotonic()
    try:
        with state.streams.held(), state.notifier.watch(job_id) as changed:
            yield "retry: 2000\n\n"
            while True:
                try:
                    rows = await _rows(state, job_id, after)
                    position, eta = await _position(state, job_id)
                except DB_ERRORS as e:
                    log.warning("job=%s: SSE read failed, will retry: %s", job_id, e.__class__.__name__)
                    rows, position, eta = [], None, None
                for row in rows:
                    yield frame(row)
                    after, last_sent = row.seq, time.monotonic()
                    if row.type in TERMINAL:
                        return
                if position is not None and position != last_position:
                    yield queue_frame(position, eta)
                    last_position, last_sent = position, time.monotonic()
                notified = await wait_event(changed, state.settings.sse_poll_seconds)
                if not notified and time.monotonic() - last_sent >= state.settings.sse_keepalive_seconds:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
    finally:
        metrics.SSE_CLIENTS.dec()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The job's events", "content": {"text/event-stream": {}}},
        **problems(400, 404),
    },
)
async def events(
    job_id: uuid.UUID,
    state: StateDep,
    session: SessionDep,
    last_event_id: Annotated[str | None, Header(max_length=16)] = None,
    after: Annotated[
        int | None,
        Query(ge=-1, le=MAX_SEQ, description="Same as Last-Event-ID, for clients without headers"),
    ] = None,
) -> StreamingResponse:
    """One SSE event per job event (`id` = per-job sequence), keep-alives, closed after the terminal event."""
    state.streams.check("the stream")
    start = after if after is not None else -1
    if last_event_id is not None:
        start = _last_event_id(last_event_id)
    await load_job(state, session, job_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        event_stream(state, job_id, start), media_type="text/event-stream", headers=headers
    )
