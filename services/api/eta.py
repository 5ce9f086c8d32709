"""ETA of a job, split into waiting and running, from the step times the workers report.

Every job is priced at its own cost: its remaining denoising steps times its own seconds per step, plus a
per-job overhead for what is not a step (dispatch round trip, prompt encode, VAE decode, MP4 encode,
upload). A job's seconds per step is the one it reports itself while it runs, else the mean of recent
measured jobs of the same model and size (width, height, num_frames), else of the same model, else the
asked job's own. The overhead is the mean over recent succeeded jobs of the model of
(finished - started) - steps x seconds per step, at least 0 (0 until one has succeeded); a job that has
started has only what is left of it (its time since its start beyond its steps is spent). From the start,
not the dispatch: the scheduler dispatches a slot's next job while the slot is still busy, and that wait
is the job in front's time, not overhead (counted twice, it made every job in a long queue look ~0.4 s
dearer per short job here).

A queued job waits for what the jobs that hold a slot of its model still have to do, plus the whole cost
of every waiting job the scheduler starts before it (interactive lane first, then batch; within a lane by
`queued_at`, acceptance or last hand-back; same model only), shared by the slots that can run the model
(all, less those whose last job was of another model); then it runs its own cost. A dispatched job waits
only for the job that its slot is still denoising, if any (the scheduler may dispatch a slot's next job
ahead of time); until that one is through it has spent none of its own overhead. It is one query: the
jobs in front are summed in SQL, each joined to the mean of its size group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Float,
    ScalarSelect,
    Select,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.common.readmodel import Job

RECENT = 20
"""How many recent measured jobs a mean is taken over (per size group, per model, for the overhead)."""
POOL = 500
"""The newest measured jobs of the model that the means draw on (bounds the work of one estimate)."""
SLOT_POOL = 1000
"""The newest dispatched jobs looked at to learn which model each slot runs."""
SIZE = ("width", "height", "num_frames")
PAST_STEPS = ("decoding", "encoding_video", "uploading")
"""Phases after the last denoising step (their progress events carry no step: the row's `step` is NULL)."""


@dataclass(frozen=True, slots=True)
class Eta:
    wait_seconds: float
    run_seconds: float


@dataclass(frozen=True, slots=True)
class Priced:
    """What the estimate query returns; `rate` is None while nothing like the job has been measured."""

    rate: float | None
    run_seconds: float | None
    ahead_seconds: float
    slots_of_other_models: int
    on_its_slot_seconds: float = 0.0
    """Cost left of the job that the asked job's slot is still denoising (for a job dispatched to follow)."""


def _seconds(interval: ColumnElement[Any]) -> ColumnElement[float]:
    return cast(func.extract("epoch", interval), Float)


def _own_rate(job: Job) -> float | None:
    return job.seconds_per_step if job.seconds_per_step and job.seconds_per_step > 0 else None


def _in_front(job: Job) -> ColumnElement[bool]:
    """Jobs of the model that hold a slot, and waiting jobs the scheduler picks before `job`."""
    holding = or_(Job.status == "running", and_(Job.status == "queued", Job.dispatched_at.is_not(None)))
    earlier = and_(
        Job.priority == job.priority, tuple_(Job.queued_at, Job.id) < tuple_(job.queued_at, job.id)
    )
    lanes_first = or_(earlier, Job.priority == "interactive") if job.priority == "batch" else earlier
    waiting_first = and_(Job.status == "queued", Job.dispatched_at.is_(None), lanes_first)
    return and_(Job.model == job.model, or_(holding, waiting_first))


def _size() -> tuple[ColumnElement[int], ColumnElement[int], ColumnElement[int]]:
    width, height, frames = (Job.request[key].as_integer() for key in SIZE)
    return width, height, frames


def _steps() -> ColumnElement[int]:
    return func.coalesce(Job.total_steps, Job.request["num_inference_steps"].as_integer())


def _rates(job: Job) -> tuple[CTE, CTE]:
    """Per size group of the model, the mean s/step of its recent measured jobs (`size_rate`); for the
    model, one row: the mean s/step of its recent measured jobs and its mean overhead (`model_rates`)."""
    width, height, frames = _size()
    pool = (
        select(
            width.label("width"),
            height.label("height"),
            frames.label("num_frames"),
            Job.seconds_per_step.label("rate"),
            Job.updated_at,
            Job.status,
            Job.attempt,
            _steps().label("steps"),
            Job.started_at,
            Job.finished_at,
        )
        .where(Job.model == job.model, Job.seconds_per_step > 0)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(POOL)
        .cte("pool")
    )
    group = (pool.c.width, pool.c.height, pool.c.num_frames)
    ranked = select(
        *group,
        pool.c.rate,
        func.row_number().over(partition_by=group, order_by=pool.c.updated_at.desc()).label("in_size"),
        func.row_number().over(order_by=pool.c.updated_at.desc()).label("in_model"),
    ).cte("ranked")
    sized = (ranked.c.width, ranked.c.height, ranked.c.num_frames)
    size_rate = (
        select(*sized, func.avg(ranked.c.rate).label("rate"))
        .where(ranked.c.in_size <= RECENT)
        .group_by(*sized)
        .cte("size_rate")
    )
    model_rate = select(func.avg(ranked.c.rate)).where(ranked.c.in_model <= RECENT).scalar_subquery()
    # Overhead: a job's time from its start to its end beyond its steps. Retried jobs are left out (their
    # start is the first attempt's, their end the last one's).
    beyond = _seconds(pool.c.finished_at - pool.c.started_at) - pool.c.steps * pool.c.rate
    overheads = (
        select(func.greatest(beyond, 0.0).label("seconds"))
        .where(
            pool.c.status == "succeeded",
            pool.c.attempt == 1,
            pool.c.started_at.is_not(None),
            pool.c.finished_at.is_not(None),
            pool.c.steps.is_not(None),
        )
        .order_by(pool.c.finished_at.desc())
        .limit(RECENT)
        .subquery("overheads")
    )
    overhead = select(func.coalesce(func.avg(overheads.c.seconds), 0.0)).scalar_subquery()
    model_rates = select(model_rate.label("rate"), overhead.label("overhead")).cte("model_rates")
    return size_rate, model_rates


def _slots_of_other_models(job: Job, slots: int) -> ScalarSelect[int]:
    """Slots whose last job was of another model: they cannot run this one (a worker loads one model)."""
    dispatched = (
        select(Job.slot, Job.model, Job.dispatched_at)
        .where(Job.slot.is_not(None), Job.dispatched_at.is_not(None))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(SLOT_POOL)
        .subquery("dispatched")
    )
    newest_first = func.row_number().over(
        partition_by=dispatched.c.slot, order_by=dispatched.c.dispatched_at.desc()
    )
    latest = select(dispatched.c.slot, dispatched.c.model, newest_first.label("rank")).subquery("latest")
    return (
        select(func.count())
        .select_from(latest)
        .where(latest.c.rank == 1, latest.c.model != job.model, latest.c.slot >= 0, latest.c.slot < slots)
        .scalar_subquery()
    )


def _query(job: Job, slots: int) -> Select[float | None, float | None, float | None, int, float | None]:
    """One row: the asked job's s/step and run seconds, the seconds of the work in front of it, how many
    of the `slots` run other models, and the seconds of the job running on the asked job's slot."""
    size_rate, model_rates = _rates(job)
    width, height, frames = _size()
    # The asked job and the jobs in front, each with its own s/step (else its size group's, else the
    # model's, else the asked job's own).
    own = case((Job.seconds_per_step > 0, Job.seconds_per_step), else_=null())
    rate = func.coalesce(own, size_rate.c.rate, model_rates.c.rate, literal(_own_rate(job), Float))
    # A job dispatched to follow the one its slot runs (the scheduler's look-ahead) waits for it and has
    # spent none of its overhead yet.
    on_its_slot = (
        and_(Job.slot == job.slot, Job.status == "running", Job.phase.not_in(PAST_STEPS))
        if job.slot is not None
        else false()
    )
    current = aliased(Job)
    follows = (
        select(current.id)
        .where(
            current.slot == Job.slot,
            current.id != Job.id,
            current.status == "running",
            current.phase.not_in(PAST_STEPS),
        )
        .exists()
    )
    not_started = case(
        (Job.dispatched_at.is_(None), true()), (Job.status == "queued", follows), else_=false()
    )
    steps = _steps()
    done = case((Job.phase.in_(PAST_STEPS), steps), else_=func.coalesce(Job.step, 0))
    rated = (
        select(
            (Job.id == job.id).label("asked"),
            (steps - done).label("left"),
            done.label("done"),
            rate.label("rate"),
            Job.started_at,
            not_started.label("not_started"),
            model_rates.c.overhead,
            on_its_slot.label("on_its_slot"),
        )
        .select_from(Job)
        .outerjoin(
            size_rate,
            and_(size_rate.c.width == width, size_rate.c.height == height, size_rate.c.num_frames == frames),
        )
        .join(model_rates, true())
        .where(or_(Job.id == job.id, _in_front(job)))
        .cte("rated")
    )
    # A job's cost: its steps left, plus the overhead less what it has spent of it since its start.
    spent = func.greatest(_seconds(func.now() - rated.c.started_at) - rated.c.done * rated.c.rate, 0.0)
    overhead_left = case(
        (or_(rated.c.not_started, rated.c.started_at.is_(None)), rated.c.overhead),
        else_=func.greatest(rated.c.overhead - spent, 0.0),
    )
    cost = rated.c.left * rated.c.rate + overhead_left
    return select(
        select(rated.c.rate).where(rated.c.asked).scalar_subquery(),
        select(cost).where(rated.c.asked).scalar_subquery(),
        select(func.coalesce(func.sum(cost), 0.0)).where(~rated.c.asked).scalar_subquery(),
        _slots_of_other_models(job, slots),
        select(func.coalesce(func.sum(cost), 0.0))
        .where(~rated.c.asked, rated.c.on_its_slot)
        .scalar_subquery(),
    )


def combine(job: Job, priced: Priced, slots: int) -> Eta | None:
    """The ETA from the priced costs: what is in front shared by the slots that can run the model."""
    if job.status not in ("queued", "running") or priced.rate is None or priced.run_seconds is None:
        return None
    if job.status == "running":
        return Eta(wait_seconds=0.0, run_seconds=priced.run_seconds)
    if job.dispatched_at is not None:  # it starts once its slot's current job (if any) is through
        return Eta(wait_seconds=priced.on_its_slot_seconds, run_seconds=priced.run_seconds)
    usable = max(slots - priced.slots_of_other_models, 1)
    return Eta(wait_seconds=priced.ahead_seconds / usable, run_seconds=priced.run_seconds)


async def estimate(session: AsyncSession, job: Job, slots: int) -> Eta | None:
    """None once the job has ended, or while nothing like it has been measured yet."""
    if job.status not in ("queued", "running"):
        return None
    rate, run, ahead, others, on_its_slot = (await session.execute(_query(job, slots))).one()
    priced = Priced(
        rate=None if rate is None else float(rate),
        run_seconds=None if run is None else float(run),
        ahead_seconds=float(ahead or 0.0),
        slots_of_other_models=int(others or 0),
        on_its_slot_seconds=float(on_its_slot or 0.0),
    )
    return combine(job, priced, slots)
