"""The queued-job ETA against the real Postgres: every job in front is priced at its own cost.

Each test writes its own jobs rows into a fresh uuid-named schema, so it neither sees nor disturbs the live
read model in `public`. Sizes and step times are the fleet benchmark's Mochi jobs on an H100: a short job
is 16 steps at 1.02 s/step (31 frames), a long one 64 steps at 7.76 s/step (163 frames).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.eta import Eta, estimate
from services.api.queries import queue_position
from services.common.db import make_engine
from services.common.readmodel import Job
from services.common.settings import CommonSettings
from services.projector.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODEL = "mochi-1-preview"
SHORT = {"width": 848, "height": 480, "num_frames": 31, "num_inference_steps": 16}
LONG = {"width": 848, "height": 480, "num_frames": 163, "num_inference_steps": 64}
ODD = {"width": 640, "height": 480, "num_frames": 61, "num_inference_steps": 32}  # never measured
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)  # a slot holder this old has spent all its overhead


@pytest.fixture(scope="module")
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings)
    try:
        async with engine.connect():
            pass
    except (OSError, asyncpg.PostgresError) as e:
        pytest.fail(f"postgres is not reachable ({e!r}); start the stack with `make up`")
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    store = Store(engine, f"test_eta_{uuid.uuid4().hex[:12]}")
    await store.create_schema()
    scoped = engine.execution_options(schema_translate_map={None: store.schema})
    try:
        async with async_sessionmaker(scoped, expire_on_commit=False)() as session:
            yield session
    finally:
        await store.drop_schema()


class Jobs:
    """Builds jobs rows as the projector writes them; each new job is accepted one second after the last.

    Progress events after the last step (decoding, encoding_video, uploading) carry no step, so a job
    past its steps, finished ones included, has `step` and `total_steps` NULL.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.now = datetime.now(UTC)
        self.clock = self.now - timedelta(days=1)

    def add(
        self,
        size: dict[str, int],
        status: str = "queued",
        priority: str = "interactive",
        model: str = MODEL,
        **columns: Any,
    ) -> Job:
        self.clock += timedelta(seconds=1)
        job = Job(
            id=uuid.uuid4(),
            tenant="default",
            status=status,
            phase=columns.pop("phase", "queued" if status == "queued" else "denoising"),
            progress=0.0,
            priority=priority,
            model=model,
            request={"model": model, **size},
            request_hash="0" * 64,
            attempt=columns.pop("attempt", 1 if columns.get("dispatched_at") else 0),
            created_at=self.clock,
            queued_at=columns.pop("queued_at", self.clock),
            updated_at=self.clock,
            last_seq=0,
            **columns,
        )
        self.session.add(job)
        return job

    def done(
        self, size: dict[str, int], rate: float, overhead: float, status: str = "succeeded", **columns: Any
    ) -> Job:
        """A finished job that ran its steps at `rate` and spent `overhead` seconds beyond them."""
        steps = size["num_inference_steps"]
        started = columns.setdefault("started_at", self.clock)
        columns.setdefault("dispatched_at", started)
        columns.setdefault("finished_at", started + timedelta(seconds=steps * rate + overhead))
        return self.add(size, status=status, phase="uploading", seconds_per_step=rate, **columns)

    def running(self, size: dict[str, int], step: int | None, rate: float | None, **columns: Any) -> Job:
        """Denoising at `step` (None: before its first step, or with `phase`, past its last); started
        when it was dispatched unless told otherwise."""
        columns.setdefault("started_at", columns.setdefault("dispatched_at", LONG_AGO))
        total = size["num_inference_steps"] if step is not None else None
        return self.add(size, "running", total_steps=total, step=step, seconds_per_step=rate, **columns)

    async def eta(self, job: Job, slots: int) -> Eta | None:
        await self.session.flush()
        return await estimate(self.session, job, slots)


@pytest.fixture
def jobs(session: AsyncSession) -> Jobs:
    return Jobs(session)


def history(jobs: Jobs) -> None:
    """Measured jobs: short 1.00 / 1.04 s/step, long 7.72 / 7.80 s/step; overheads 2, 3, 4, 3 s (mean 3)."""
    jobs.done(SHORT, 1.00, 2.0)
    jobs.done(SHORT, 1.04, 3.0)
    jobs.done(LONG, 7.72, 4.0)
    jobs.done(LONG, 7.80, 3.0)


async def test_a_short_job_behind_long_ones_waits_for_their_long_steps(jobs: Jobs) -> None:
    history(jobs)
    # Holding the two slots: a long job at step 32, and a short one at step 8 whose own step time is not
    # in yet (priced at the short mean, 1.02).
    jobs.running(LONG, step=32, rate=7.76)
    jobs.running(SHORT, step=8, rate=None)
    jobs.add(LONG, priority="batch")  # batch: starts after every interactive job
    jobs.add(LONG)
    jobs.add(LONG)
    jobs.add(SHORT, model="other-model")  # other slots
    asked = jobs.add(SHORT)
    jobs.add(SHORT)  # after the asked one

    eta = await jobs.eta(asked, slots=2)

    # 32 x 7.76 + 8 x 1.02 running, then two waiting long jobs of 64 x 7.76 + 3 s overhead each; its own
    # 16 x 1.02 + 3 s to run.
    assert eta is not None
    assert eta.wait_seconds == pytest.approx((248.32 + 8.16 + 2 * 499.64) / 2)
    assert eta.wait_seconds == pytest.approx(627.88)
    assert eta.run_seconds == pytest.approx(19.32)
    # Priced at the short job's own 1.02 s/step, the same queue said (32 + 8 + 128) x 1.02 / 2 = 85.68 s.


async def test_a_long_job_behind_short_ones_waits_only_for_their_short_steps(jobs: Jobs) -> None:
    history(jobs)
    # Each running job is priced at its own step time (the short mean stays at 1.02).
    jobs.running(SHORT, step=8, rate=1.10)
    jobs.running(SHORT, step=4, rate=0.94)
    jobs.add(SHORT, priority="batch")  # older batch: before the asked one
    asked = jobs.add(LONG, priority="batch")
    jobs.add(SHORT, priority="batch")  # younger batch: after it
    for _ in range(3):
        jobs.add(SHORT)  # interactive: before every batch job, however young

    eta = await jobs.eta(asked, slots=2)

    # 8 x 1.10 + 12 x 0.94 running, then four short jobs of 16 x 1.02 + 3 s each; 64 x 7.76 + 3 s to run.
    assert eta is not None
    assert eta.wait_seconds == pytest.approx((8.8 + 11.28 + 4 * 19.32) / 2)
    assert eta.wait_seconds == pytest.approx(48.68)
    assert eta.run_seconds == pytest.approx(499.64)
    # Priced at the long job's own 7.76 s/step, the same queue said (8 + 12 + 64) x 7.76 / 2 = 325.92 s.


async def test_overhead_is_the_recent_succeeded_jobs_time_beyond_their_steps(jobs: Jobs) -> None:
    jobs.done(SHORT, 1.0, 2.0)
    jobs.done(SHORT, 1.0, 4.0)
    jobs.done(SHORT, 1.0, 0.0, finished_at=jobs.now - timedelta(days=2))  # "before" its steps: counts as 0
    jobs.done(SHORT, 1.0, 60.0, status="failed")  # not succeeded: not counted
    jobs.done(SHORT, 1.0, 60.0, attempt=2)  # retried: its start is the first attempt's
    # Dispatched to follow a busy slot 30 s before it started: that wait was the other job's time.
    jobs.done(SHORT, 1.0, 2.0, dispatched_at=jobs.clock - timedelta(seconds=29))
    asked = jobs.add(SHORT)

    eta = await jobs.eta(asked, slots=1)

    assert eta == Eta(wait_seconds=0.0, run_seconds=pytest.approx(16 * 1.0 + (2.0 + 4.0 + 0.0 + 2.0) / 4))


async def test_no_succeeded_job_yet_means_no_overhead(jobs: Jobs) -> None:
    jobs.running(SHORT, step=4, rate=1.02)
    asked = jobs.add(SHORT)

    eta = await jobs.eta(asked, slots=1)

    assert eta == Eta(wait_seconds=pytest.approx(12 * 1.02), run_seconds=pytest.approx(16 * 1.02))


async def test_a_slot_holder_has_only_the_overhead_it_has_not_spent_yet(jobs: Jobs) -> None:
    history(jobs)  # overhead 3 s
    # Dispatched 1 s ago, not started: all 3 s of overhead left. Running for 10 s with 8 steps of 1.02
    # done: 1.84 s of it spent, 1.16 s left.
    jobs.add(SHORT, dispatched_at=jobs.now - timedelta(seconds=1))
    jobs.running(SHORT, step=8, rate=1.02, dispatched_at=jobs.now - timedelta(seconds=10))
    asked = jobs.add(SHORT)
    held = jobs.add(SHORT, dispatched_at=jobs.now - timedelta(seconds=1))  # younger, but holds a slot

    eta = await jobs.eta(asked, slots=3)

    # The query's `now()` is a little later than the test's: allow for it.
    assert eta is not None
    assert eta.wait_seconds == pytest.approx((16.32 + 3.0 + 8.16 + 1.16 + 16.32 + 3.0) / 3, abs=0.3)
    assert eta.run_seconds == pytest.approx(19.32)
    held_eta = await jobs.eta(held, slots=3)
    assert held_eta == Eta(wait_seconds=0.0, run_seconds=pytest.approx(19.32))


async def test_a_running_job_before_or_past_its_steps(jobs: Jobs) -> None:
    history(jobs)  # overhead 3 s
    # Loading its model: every step still to run. Storing its video, 20 s after its dispatch: no step
    # left, and 20 - 16 x 1.02 = 3.68 s spent beyond its steps, more than the overhead.
    jobs.running(SHORT, step=None, rate=None, phase="loading")
    jobs.running(
        SHORT, step=None, rate=1.02, phase="uploading", dispatched_at=jobs.now - timedelta(seconds=20)
    )
    # Decoding 17 s after its dispatch: 0.68 s spent beyond its 16 steps, 2.32 s of the overhead left.
    jobs.running(
        SHORT, step=None, rate=1.02, phase="decoding", dispatched_at=jobs.now - timedelta(seconds=17)
    )
    asked = jobs.add(SHORT)

    eta = await jobs.eta(asked, slots=1)

    assert eta is not None
    assert eta.wait_seconds == pytest.approx(16 * 1.02 + 0.0 + 2.32, abs=0.3)
    assert eta.run_seconds == pytest.approx(19.32)


async def test_a_job_dispatched_to_follow_a_running_one_waits_for_it(jobs: Jobs) -> None:
    history(jobs)  # overhead 3 s
    jobs.running(SHORT, step=8, rate=1.02, slot=1)
    # Storing its video 20 s after its dispatch: the GPU of slot 0 is free, its overhead spent.
    jobs.running(
        SHORT, step=None, rate=1.02, slot=0, phase="uploading", dispatched_at=jobs.now - timedelta(seconds=20)
    )
    follower = jobs.add(SHORT, slot=1, dispatched_at=jobs.now - timedelta(seconds=1))
    next_up = jobs.add(SHORT, slot=0, dispatched_at=jobs.now - timedelta(seconds=1))
    asked = jobs.add(SHORT)

    # Behind 8 x 1.02 s on slot 1, none of its own overhead spent yet.
    assert await jobs.eta(follower, slots=2) == Eta(
        wait_seconds=pytest.approx(8.16), run_seconds=pytest.approx(19.32)
    )
    # Nothing left on the GPU of slot 0: it starts now, with all of its run ahead of it.
    assert await jobs.eta(next_up, slots=2) == Eta(wait_seconds=0.0, run_seconds=pytest.approx(19.32))
    eta = await jobs.eta(asked, slots=2)
    assert eta is not None and eta.wait_seconds == pytest.approx((8.16 + 0.0 + 19.32 + 19.32) / 2, abs=0.3)


async def test_a_size_never_measured_is_priced_at_the_model_mean(jobs: Jobs) -> None:
    history(jobs)  # model mean over the four: (1.00 + 1.04 + 7.72 + 7.80) / 4 = 4.39
    jobs.add(ODD)
    asked = jobs.add(ODD)

    eta = await jobs.eta(asked, slots=1)

    assert eta is not None
    assert eta.wait_seconds == pytest.approx(32 * 4.39 + 3.0)
    assert eta.run_seconds == pytest.approx(143.48)


async def test_a_model_never_measured_has_no_eta(jobs: Jobs) -> None:
    history(jobs)
    jobs.running(SHORT, step=4, rate=1.02, model="other-model")
    asked = jobs.add(SHORT, model="other-model")
    new = jobs.add(SHORT, model="third-model")

    assert await jobs.eta(new, slots=2) is None
    assert await jobs.eta(asked, slots=2) is not None  # the running job's own report is a measurement


async def test_an_ended_job_has_no_eta(jobs: Jobs) -> None:
    done = jobs.done(SHORT, 1.0, 1.0)

    assert await jobs.eta(done, slots=1) is None


async def test_the_work_in_front_is_shared_by_the_slots_that_can_run_the_model(jobs: Jobs) -> None:
    history(jobs)
    jobs.done(SHORT, 2.0, 1.0, model="other-model", slot=0)  # slot 0 ran another model before this one
    jobs.running(SHORT, step=0, rate=1.02, slot=0)
    jobs.done(SHORT, 2.0, 1.0, model="other-model", slot=2)
    jobs.done(SHORT, 2.0, 1.0, model="other-model", slot=3)
    jobs.done(SHORT, 2.0, 1.0, model="other-model", slot=9)  # outside the slots: ignored
    asked = jobs.add(SHORT)

    # Of 4 slots, 2 and 3 last ran another model: slot 0 (its last job is of this model) and slot 1
    # (never seen) share the 16 x 1.02 s.
    eta = await jobs.eta(asked, slots=4)
    assert eta is not None and eta.wait_seconds == pytest.approx(16.32 / 2)
    jobs.running(SHORT, step=0, rate=1.02, model="other-model", slot=1)
    eta = await jobs.eta(asked, slots=4)
    assert eta is not None and eta.wait_seconds == pytest.approx(16.32 / 1)


async def test_a_handed_back_job_waits_behind_the_jobs_already_waiting(jobs: Jobs) -> None:
    history(jobs)
    # Accepted first, but handed back at a checkpoint after the other two were accepted.
    handed_back = jobs.add(LONG, priority="batch", step=32, total_steps=64, queued_at=jobs.now)
    first, second = jobs.add(LONG, priority="batch"), jobs.add(LONG, priority="batch")
    await jobs.session.flush()

    positions = [await queue_position(jobs.session, job) for job in (first, second, handed_back)]
    assert positions == [1, 2, 3]
    eta = await jobs.eta(handed_back, slots=1)
    # Two waiting long jobs of 64 x 7.76 + 3 s first; then its own 32 steps left.
    assert eta == Eta(wait_seconds=pytest.approx(2 * 499.64), run_seconds=pytest.approx(32 * 7.76 + 3.0))
