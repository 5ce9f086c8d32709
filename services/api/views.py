"""What the api returns for a job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.events import JobError, Spritesheet, VideoResult
from schemas.jobs import JobStatus, Phase, ResolvedRequest
from services.api.queue_view import Eta
from services.common.readmodel import JobRow


class ResultOut(BaseModel):
    content_type: str
    size_bytes: int
    width: int
    height: int
    fps: int
    frames: int
    duration_seconds: float
    poster_url: str | None = None
    thumbnail_url: str | None = None
    spritesheet_url: str | None = None
    spritesheet: Spritesheet | None = None


class EtaOut(BaseModel):
    """Seconds until the job starts and until it ends, from the step times workers measured."""

    wait_seconds: float
    run_seconds: float
    total_seconds: float


class JobOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    status: JobStatus
    phase: Phase
    progress: float
    step: int | None
    total_steps: int | None
    queue_position: int | None
    eta: EtaOut | None = None
    attempt: int
    created_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    request: ResolvedRequest
    result: ResultOut | None
    error: JobError | None
    links: dict[str, str]


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None


# Content variants a result may hold, by the `VideoResult` field of their S3 key.
STILLS = {"poster": "poster_key", "thumbnail": "thumbnail_key", "spritesheet": "spritesheet_key"}


def content_url(base: str, job_id: uuid.UUID, variant: str) -> str:
    return f"{base}/v1/jobs/{job_id}/content?variant={variant}"


def links(
    base: str, job_id: uuid.UUID, succeeded: bool, result: dict[str, Any] | None = None
) -> dict[str, str]:
    root = f"{base}/v1/jobs/{job_id}"
    out = {"self": root, "events": f"{root}/events", "cancel": f"{root}/cancel"}
    if succeeded:
        out |= {"result": f"{root}/result", "content": f"{root}/content"}
        for variant, field in STILLS.items():
            if result is not None and result.get(field):
                out[variant] = content_url(base, job_id, variant)
    return out


def _result(raw: dict[str, Any] | None, base: str, job_id: uuid.UUID) -> ResultOut | None:
    if raw is None:
        return None
    video = VideoResult.model_validate(raw)
    urls = {
        f"{variant}_url": content_url(base, job_id, variant) if getattr(video, field) else None
        for variant, field in STILLS.items()
    }
    return ResultOut(
        **video.model_dump(exclude={"video_key", *STILLS.values(), "spritesheet"}),
        spritesheet=video.spritesheet,
        **urls,
    )


class RequestCache:
    """A job's request as the api shows it, validated once per job and process, not on every read: a job's
    request never changes, and validating it was a tenth of a list's CPU. Holds at most `size` jobs,
    forgetting the longest-held first."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._held: dict[uuid.UUID, ResolvedRequest] = {}

    def get(self, job: JobRow) -> ResolvedRequest:
        request = self._held.get(job.id)
        if request is None:
            request = self._held[job.id] = ResolvedRequest.model_validate(job.request)
            if len(self._held) > self._size:
                del self._held[next(iter(self._held))]
        return request

    def __len__(self) -> int:
        return len(self._held)


REQUESTS = RequestCache()


def job_out(job: JobRow, base: str, position: int | None, eta: Eta | None = None) -> JobOut:
    status = JobStatus(job.status)
    eta_out = None
    if eta is not None:
        eta_out = EtaOut(
            wait_seconds=round(eta.wait_seconds, 2),
            run_seconds=round(eta.run_seconds, 2),
            total_seconds=round(eta.wait_seconds + eta.run_seconds, 2),
        )
    return JobOut(
        id=job.id,
        status=status,
        phase=Phase(job.phase),
        progress=job.progress,
        step=job.step,
        total_steps=job.total_steps,
        queue_position=position,
        eta=eta_out,
        attempt=job.attempt,
        created_at=job.created_at,
        dispatched_at=job.dispatched_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        request=REQUESTS.get(job),
        result=_result(job.result, base, job.id),
        error=JobError.model_validate(job.error) if job.error else None,
        links=links(base, job.id, status is JobStatus.SUCCEEDED, job.result),
    )
