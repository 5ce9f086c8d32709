"""GET /v1/jobs/{id}/events: the job's events as Server-Sent Events, replayable with Last-Event-ID."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from services.api import metrics
from services.api.auth import CallerDep
from services.api.deps import AppState, SessionDep, StateDep
from services.api.errors import ApiError, problems
from services.api.routes.jobs import load_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["events"])
MAX_SEQ = 2**31 - 1  # event ids are the per-job seq, a 32-bit column


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


async def event_stream(state: AppState, job_id: uuid.UUID, after: int) -> AsyncIterator[bytes]:
    """Replay what is stored after `after`, then follow live until the terminal event has been sent.

    The frames come from the job's feed (`feeds.py`), shared by every stream of the job on this process.
    """
    metrics.SSE_CLIENTS.inc()
    position_sent = 0
    last_sent = time.monotonic()
    try:
        with state.streams.held(), state.feeds.follow(job_id) as feed:
            yield b"retry: 2000\n\n"
            while True:
                tick = feed.tick
                sent = False
                if frames := feed.after(after):
                    # What arrived since the last wake-up goes out as one write.
                    yield b"".join(text for _, text in frames)
                    after, sent = frames[-1][0], True
                if feed.seqs and feed.done_after(after):
                    return
                if feed.position is not None and feed.position_version != position_sent:
                    yield feed.position
                    position_sent, sent = feed.position_version, True
                now = time.monotonic()
                if sent:
                    last_sent = now
                elif now - last_sent >= state.feeds.keepalive / 2:
                    yield b": keep-alive\n\n"  # the feed wakes its streams at least this often
                    last_sent = now
                await tick.wait()
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
    *,
    caller: CallerDep,
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
    await load_job(state, session, job_id, caller.tenant)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        event_stream(state, job_id, start), media_type="text/event-stream", headers=headers
    )
