"""One reader per followed job, fanned out in memory to every SSE stream of that job.

The first stream of a job starts a `JobFeed`; it reads the job's new events and queue position once per
NOTIFY (or poll), keeps each event as its ready-made SSE frame, and wakes its streams, which only copy
frames from memory. The feed ends with its last stream. Streams do not query the database themselves:
with 2,000 streams on one job that would be 2,000 times four queries per event, and the events would
reach the last clients seconds late. No stream holds a database connection, and a slow client only
slows its own stream (each is its own task, writing at its own pace).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.events import STREAM_END_TYPES, EventType
from services.api.errors import DB_ERRORS
from services.api.notify import JobNotifier, wait_event
from services.api.queries import events_after
from services.api.queue_view import Eta, QueueViewFollower
from services.common.readmodel import JobEventRow

log = logging.getLogger(__name__)
# A stream ends after the job's terminal event, or after its tombstone (it was deleted).
TERMINAL = {t.value for t in STREAM_END_TYPES}

ReadRows = Callable[[uuid.UUID, int], Awaitable[Sequence[JobEventRow]]]
ReadPosition = Callable[[uuid.UUID], Awaitable[tuple[int | None, Eta | None]]]


def frame(row: JobEventRow) -> bytes:
    """One SSE frame, encoded once for every stream that sends it. A preview carries the api path that
    serves its image (`url`, relative to the api), as its S3 key is no use to a client."""
    payload = {"seq": row.seq, **row.payload}
    if row.type == EventType.PREVIEW and {"job_id", "step", "attempt"} <= payload.keys():
        payload["url"] = (
            f"/v1/jobs/{payload['job_id']}/content?variant=preview"
            f"&step={payload['step']}&attempt={payload['attempt']}"
        )
    data = json.dumps(payload, separators=(",", ":"))
    return f"id: {row.seq}\nevent: {row.type}\ndata: {data}\n\n".encode()


def queue_frame(position: int, eta: Eta | None) -> bytes:
    data: dict[str, object] = {"queue_position": position}
    if eta is not None:
        data["eta"] = {"wait_seconds": round(eta.wait_seconds, 2), "run_seconds": round(eta.run_seconds, 2)}
    return f"event: job.queue_position\ndata: {json.dumps(data)}\n\n".encode()


@dataclass(slots=True)
class JobFeed:
    """What is known of one job, as SSE frames; `tick` is set (and replaced) whenever it grows."""

    job_id: uuid.UUID
    seqs: list[int] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    ended: bool = False  # the terminal event is among the frames
    position: bytes | None = None  # the latest job.queue_position frame, None once the job left the queue
    position_version: int = 0
    tick: asyncio.Event = field(default_factory=asyncio.Event)
    woke_at: float = field(default_factory=time.monotonic)  # when `tick` was last set
    streams: int = 0
    task: asyncio.Task[None] | None = None

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The frames of the events after `seq`, in order."""
        start = bisect.bisect_right(self.seqs, seq)
        return list(zip(self.seqs[start:], self.frames[start:], strict=True))

    def done_after(self, seq: int) -> bool:
        """Whether a stream that sent up to `seq` has sent the terminal event."""
        return self.ended and seq >= self.seqs[-1]

    def add(self, rows: Sequence[JobEventRow], position: int | None, eta: Eta | None) -> bool:
        grew = False
        for row in rows:
            if self.seqs and row.seq <= self.seqs[-1]:
                continue
            self.seqs.append(row.seq)
            self.frames.append(frame(row))
            self.ended = self.ended or row.type in TERMINAL
            grew = True
        text = queue_frame(position, eta) if position is not None and not self.ended else None
        if text != self.position:
            self.position, self.position_version = text, self.position_version + 1
            grew = True
        if grew:
            self.wake()
        return grew

    def wake(self) -> None:
        """Wake every stream of the feed (each then sends what it has not, or a keep-alive if due)."""
        woken, self.tick, self.woke_at = self.tick, asyncio.Event(), time.monotonic()
        woken.set()


def database_rows(sessions: async_sessionmaker[AsyncSession]) -> ReadRows:
    """The feeds' read of new events: a pooled connection for the query only."""

    async def rows(job_id: uuid.UUID, after: int) -> Sequence[JobEventRow]:
        async with sessions() as session:
            return await events_after(session, job_id, after)

    return rows


def queue_places(view: QueueViewFollower) -> ReadPosition:
    """The feeds' queue position and ETA: a lookup in the scheduler's view, no query."""

    async def position(job_id: uuid.UUID) -> tuple[int | None, Eta | None]:
        place, eta = view.lookup(job_id)
        return (place, eta) if place is not None else (None, None)

    return position


class JobFeeds:
    """The feeds of the jobs that have streams on this api process."""

    def __init__(
        self,
        notifier: JobNotifier,
        read_rows: ReadRows,
        read_position: ReadPosition,
        poll_seconds: float,
        keepalive_seconds: float = 15.0,
    ) -> None:
        self._notifier = notifier
        self._read_rows = read_rows
        self._read_position = read_position
        self._poll = poll_seconds
        self.keepalive = keepalive_seconds
        self._feeds: dict[uuid.UUID, JobFeed] = {}

    @contextlib.contextmanager
    def follow(self, job_id: uuid.UUID) -> Iterator[JobFeed]:
        """The job's feed, started by its first stream and stopped after its last."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = JobFeed(job_id)
            feed.task = asyncio.create_task(self._read(feed), name=f"feed-{job_id}")
        feed.streams += 1
        try:
            yield feed
        finally:
            feed.streams -= 1
            if feed.streams == 0:
                del self._feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def stop(self) -> None:
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, feed: JobFeed) -> None:
        """Read new events and the queue position after each NOTIFY of the job, or each poll interval;
        a database that is away pauses the feed (the streams send keep-alives) instead of ending it.

        The feed is also the streams' clock: it wakes them when none woke for half the keep-alive
        interval, and a stream idle that long sends a keep-alive. So a stream waits on the feed alone,
        with no timer of its own: 2,000 streams of one job are 2,000 timers fewer per event."""
        with self._notifier.watch(feed.job_id) as changed:
            while not feed.ended:
                after = feed.seqs[-1] if feed.seqs else -1
                try:
                    rows = await self._read_rows(feed.job_id, after)
                    position, eta = await self._read_position(feed.job_id)
                except DB_ERRORS as e:
                    log.warning("job=%s: feed read failed, will retry: %s", feed.job_id, e.__class__.__name__)
                else:
                    feed.add(rows, position, eta)
                if feed.ended:
                    return
                if time.monotonic() - feed.woke_at >= self.keepalive / 2:
                    feed.wake()
                idle = self.keepalive / 2 - (time.monotonic() - feed.woke_at)
                await wait_event(changed, max(min(self._poll, idle), 0.01))

    def __len__(self) -> int:
        return len(self._feeds)
