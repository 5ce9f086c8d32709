"""ETA of a job, split into waiting and running, from the step times the workers report.

Seconds per step come from recent jobs of the same model and size (the workers measure them and send
them with every progress event). A queued job waits for the remaining work of the running jobs plus the
work of every job that goes before it, shared by the slots; then it runs its own steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.readmodel import Job

RECENT = 20


@dataclass(frozen=True, slots=True)
class Eta:
    wait_seconds: float
    run_seconds: float


def _size(job: Job) -> tuple[object, object, object]:
    return (job.request.get("width"), job.request.get("height"), job.request.get("num_frames"))


async def seconds_per_step(session: AsyncSession, job: Job) -> float | None:
    """Mean measured s/step of recent jobs like this one (same model and size), else of the same model."""
    if job.seconds_per_step:
        return job.seconds_per_step
    measured = select(Job.seconds_per_step).where(Job.model == job.model, Job.seconds_per_step.is_not(None))
    width, height, frames = _size(job)
    alike = measured.where(
        Job.request["width"].as_integer() == width,
        Job.request["height"].as_integer() == height,
        Job.request["num_frames"].as_integer() == frames,
    )
    for query in (alike, measured):
        recent = query.order_by(Job.updated_at.desc()).limit(RECENT).subquery()
        mean = (await session.execute(select(func.avg(recent.c.seconds_per_step)))).scalar_one_or_none()
        if mean is not None:
            return float(mean)
    return None


async def _work_before(session: AsyncSession, job: Job) -> int:
    """Denoising steps the slots run before this job starts: what runs now and what waits in front."""
    steps = Job.request["num_inference_steps"].as_integer()
    remaining = func.coalesce(Job.total_steps, steps) - func.coalesce(Job.step, 0)
    holding = or_(Job.status == "running", and_(Job.status == "queued", Job.dispatched_at.is_not(None)))
    earlier = and_(
        Job.priority == job.priority, tuple_(Job.created_at, Job.id) < tuple_(job.created_at, job.id)
    )
    lanes_first = or_(earlier, Job.priority == "interactive") if job.priority == "batch" else earlier
    waiting_first = and_(Job.status == "queued", Job.dispatched_at.is_(None), lanes_first)
    query = select(func.coalesce(func.sum(remaining), 0)).where(
        Job.model == job.model, or_(holding, waiting_first)
    )
    return int((await session.execute(query)).scalar_one())


async def estimate(session: AsyncSession, job: Job, slots: int) -> Eta | None:
    """None once the job has ended, or while nothing like it has been measured yet."""
    if job.status not in ("queued", "running"):
        return None
    per_step = await seconds_per_step(session, job)
    if per_step is None:
        return None
    total = job.total_steps or int(job.request.get("num_inference_steps", 0))
    run = (total - (job.step or 0)) * per_step
    if job.status == "running" or job.dispatched_at is not None:
        return Eta(wait_seconds=0.0, run_seconds=run)
    wait = await _work_before(session, job) * per_step / max(slots, 1)
    return Eta(wait_seconds=wait, run_seconds=run)
