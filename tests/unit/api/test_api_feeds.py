"""The api's per-job feeds: one reader per job whatever the number of streams, frames from memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import OperationalError

from services.api.feeds import JobFeed, JobFeeds
from services.api.notify import JobNotifier
from services.api.queue_view import Eta
from services.common.readmodel import JobEventRow

JOB = uuid.uuid4()


def row(seq: int, kind: str = "job.progress") -> JobEventRow:
    return JobEventRow(
        event_id=uuid.uuid4(),
        job_id=JOB,
        seq=seq,
        type=kind,
        attempt=1,
        applied=True,
        occurred_at=datetime.now(UTC),
        payload={"type": kind, "job_id": str(JOB)},
    )


class FakeReadModel:
    """The job's stored events and its queue position; counts the reads."""

    def __init__(self) -> None:
        self.rows: list[JobEventRow] = []
        self.position: int | None = 3
        self.reads = 0
        self.failing = False

    async def read_rows(self, job_id: uuid.UUID, after: int) -> Sequence[JobEventRow]:
        self.reads += 1
        if self.failing:
            raise OperationalError("SELECT", {}, ConnectionRefusedError())
        return [r for r in self.rows if r.job_id == job_id and r.seq > after]

    async def read_position(self, job_id: uuid.UUID) -> tuple[int | None, Eta | None]:
        return self.position, None


def feeds_on(
    model: FakeReadModel, poll: float = 30.0, keepalive: float = 15.0
) -> tuple[JobFeeds, JobNotifier]:
    notifier = JobNotifier("postgresql://unused")
    return JobFeeds(notifier, model.read_rows, model.read_position, poll, keepalive), notifier


def notify(notifier: JobNotifier, job_id: uuid.UUID = JOB) -> None:
    notifier._on_notify(None, 0, "reelstream_jobs", str(job_id))


async def follower(feeds: JobFeeds, after: int, seen: list[bytes], started: asyncio.Event) -> None:
    """A stream's loop in small: every frame after `after`, until the terminal one."""
    with feeds.follow(JOB) as feed:
        started.set()
        while True:
            tick = feed.tick
            for seq, text in feed.after(after):
                seen.append(text)
                after = seq
            if feed.seqs and feed.done_after(after):
                return
            await asyncio.wait_for(tick.wait(), 5)


async def test_two_hundred_streams_on_one_job_share_one_reader() -> None:
    model = FakeReadModel()
    model.rows = [row(1, "job.dispatched")]
    feeds, notifier = feeds_on(model)
    seen: list[list[bytes]] = [[] for _ in range(200)]
    started = [asyncio.Event() for _ in seen]
    tasks = [asyncio.create_task(follower(feeds, -1, s, e)) for s, e in zip(seen, started, strict=True)]
    await asyncio.gather(*(e.wait() for e in started))
    await asyncio.sleep(0.05)
    assert len(feeds) == 1
    reads_before = model.reads
    model.rows += [row(2), row(3), row(4, "job.succeeded")]
    notify(notifier)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(len(s) == 4 and b"event: job.succeeded" in s[-1] for s in seen)
    assert model.reads - reads_before <= 2, "one read per change, not one per stream"
    assert len(feeds) == 0, "the feed ends with its last stream"


async def test_a_late_stream_replays_exactly_after_its_last_event_id() -> None:
    model = FakeReadModel()
    model.rows = [row(1, "job.dispatched"), row(2), row(4), row(5, "job.succeeded")]  # 3 was not applied
    feeds, _ = feeds_on(model)
    seen: list[bytes] = []
    await asyncio.wait_for(follower(feeds, 2, seen, asyncio.Event()), 5)
    assert [text.split(b"\n")[0] for text in seen] == [b"id: 4", b"id: 5"]


async def test_the_queue_position_frame_changes_only_when_the_position_does() -> None:
    feed = JobFeed(JOB)
    assert feed.add([], 3, None)
    version = feed.position_version
    assert not feed.add([], 3, None), "the same position wakes nobody"
    assert feed.add([], 2, Eta(wait_seconds=10, run_seconds=5))
    assert feed.position_version == version + 1
    assert feed.position is not None and b'"queue_position": 2' in feed.position
    assert feed.add([row(1, "job.dispatched")], None, None)
    assert feed.position is None


async def test_a_database_away_pauses_the_feed_and_it_goes_on_after() -> None:
    model = FakeReadModel()
    model.failing = True
    feeds, notifier = feeds_on(model, poll=0.05)
    seen: list[bytes] = []
    task = asyncio.create_task(follower(feeds, -1, seen, asyncio.Event()))
    await asyncio.sleep(0.2)
    assert not task.done() and seen == []
    model.failing = False
    model.rows = [row(1, "job.cancelled")]
    notify(notifier)
    await asyncio.wait_for(task, 5)
    assert len(seen) == 1


async def test_stop_ends_every_reader() -> None:
    feeds, _ = feeds_on(FakeReadModel())
    with feeds.follow(JOB) as feed:
        await asyncio.sleep(0.01)
        await feeds.stop()
        assert feed.task is not None and feed.task.done()


async def test_a_quiet_feed_wakes_its_streams_every_half_keepalive_for_their_keep_alives() -> None:
    """Streams have no timer of their own: the feed is their clock."""
    model = FakeReadModel()
    feeds, _ = feeds_on(model, poll=30.0, keepalive=0.4)
    with feeds.follow(JOB) as feed:
        await asyncio.sleep(0.05)  # the first read
        woke = []
        for _ in range(3):
            tick = feed.tick
            began = asyncio.get_running_loop().time()
            await asyncio.wait_for(tick.wait(), 2)
            woke.append(asyncio.get_running_loop().time() - began)
        assert all(w <= 0.3 for w in woke), woke
        assert model.reads <= 5, "a wake for keep-alives reads nothing more than the poll does"
