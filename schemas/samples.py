"""One realistic example of every contract, with fixed ids and times so the exported files are stable.

`python -m schemas.export` writes them to `schemas/examples/`; tests of any service may use them as fixtures.
All events tell the story of one job: requested, dispatched to slot 3, started, half-way through denoising,
checkpointed, succeeded (the other outcomes are shown on the same job for brevity).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final, TypedDict

from pydantic import BaseModel

from schemas.catalog import Quality
from schemas.events import (
    DeletionReason,
    ErrorCode,
    EventType,
    JobCancelled,
    JobCancelRequested,
    JobCheckpointed,
    JobDeleted,
    JobDispatched,
    JobError,
    JobFailed,
    JobPreempted,
    JobPreemptRequested,
    JobPreview,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    SlotState,
    Spritesheet,
    VideoResult,
    WorkerHeartbeat,
)
from schemas.jobs import JobRequest, Phase, Priority, ResolvedRequest

JOB_ID: Final = uuid.UUID("0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40")
BOOT_ID: Final = uuid.UUID("5f0c9a7e-2b1d-4c3e-8f6a-1d2e3f4a5b6c")
SUBMITTED_AT: Final = datetime(2025, 6, 2, 14, 3, 11, 250000, tzinfo=UTC)
SLOT: Final = 3
WORKER: Final = "worker-3"
WORKER_ID: Final = "worker-3@gpu-node-1"
_NAMESPACE: Final = uuid.UUID("9a1d6c52-0e3b-4f7a-b8d4-2c6e1f0a3b95")


def _event_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, name)


def _at(seconds: float) -> datetime:
    return SUBMITTED_AT + timedelta(seconds=seconds)


def job_request() -> JobRequest:
    """A client body as posted to `POST /v1/jobs`."""
    return JobRequest(
        prompt="A red fox trotting through fresh snow at dawn, soft golden light, shallow depth of field",
        negative_prompt="blurry, low quality, watermark",
        model="mochi-1-preview",
        duration_seconds=5.4,
        quality=Quality.MEDIUM,
        seed=1234567,
        priority=Priority.INTERACTIVE,
        webhook_url="https://hooks.example.com/reelstream",
        metadata={"campaign": "winter-launch", "customer_ref": "order-4711"},
    )


def client_body() -> dict[str, object]:
    """The JSON the client sent: only the fields it set."""
    return job_request().model_dump(mode="json", exclude_unset=True)


def resolved_request() -> ResolvedRequest:
    """`job_request()` after `schemas.jobs.resolve`: every default decided."""
    req = job_request()
    return ResolvedRequest(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        model="mochi-1-preview",
        width=848,
        height=480,
        num_frames=163,
        fps=30,
        quality=Quality.MEDIUM,
        num_inference_steps=32,
        seed=1234567,
        guidance_scale=4.5,
        priority=Priority.INTERACTIVE,
        webhook_url=str(req.webhook_url),
        metadata=dict(req.metadata),
    )


def _request_hash() -> str:
    canonical = json.dumps(client_body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Common(TypedDict):
    event_id: uuid.UUID
    job_id: uuid.UUID
    occurred_at: datetime
    producer: str
    attempt: int
    sequence: int


def _common(event_type: EventType, seconds: float, producer: str, attempt: int, sequence: int) -> _Common:
    return {
        "event_id": _event_id(event_type.value),
        "job_id": JOB_ID,
        "occurred_at": _at(seconds),
        "producer": producer,
        "attempt": attempt,
        "sequence": sequence,
    }


def _result() -> VideoResult:
    return VideoResult(
        video_key=f"videos/{JOB_ID}/video.mp4",
        poster_key=f"videos/{JOB_ID}/poster.jpg",
        size_bytes=7_341_856,
        width=848,
        height=480,
        fps=30,
        frames=163,
        duration_seconds=round(163 / 30, 3),
        thumbnail_key=f"jobs/{JOB_ID}/attempt-1/thumbnail.jpg",
        spritesheet_key=f"jobs/{JOB_ID}/attempt-1/spritesheet.jpg",
        spritesheet=Spritesheet(
            columns=4,
            rows=4,
            tile_width=160,
            tile_height=90,
            frame_indices=[round(i * 162 / 15) for i in range(16)],
        ),
    )


def events() -> dict[EventType, BaseModel]:
    """One event of each type, all about the same job."""
    t = EventType
    req = resolved_request()
    checkpoint = f"checkpoints/{JOB_ID}/attempt-1/step-0016.safetensors"
    return {
        t.REQUESTED: JobRequested(
            **_common(t.REQUESTED, 0.0, "api", 0, 0),
            request=req,
            tenant="acme",
            idempotency_key="order-4711-render",
            request_hash=_request_hash(),
            accept_by=_at(15.0),
        ),
        t.DISPATCHED: JobDispatched(**_common(t.DISPATCHED, 0.4, "scheduler", 1, 0), slot=SLOT, request=req),
        t.STARTED: JobStarted(**_common(t.STARTED, 0.6, WORKER, 1, 0), slot=SLOT, worker_id=WORKER_ID),
        t.PROGRESS: JobProgress(
            **_common(t.PROGRESS, 41.3, WORKER, 1, 19),
            phase=Phase.DENOISING,
            progress=0.5,
            step=16,
            total_steps=32,
            seconds_per_step=1.92,
            gpu_util=0.97,
        ),
        t.CHECKPOINTED: JobCheckpointed(
            **_common(t.CHECKPOINTED, 41.9, WORKER, 1, 20),
            step=16,
            total_steps=32,
            checkpoint_key=checkpoint,
        ),
        t.SUCCEEDED: JobSucceeded(
            **_common(t.SUCCEEDED, 92.7, WORKER, 1, 41),
            result=_result(),
            generation_seconds=91.8,
        ),
        t.FAILED: JobFailed(
            **_common(t.FAILED, 610.0, "scheduler", 3, 2),
            error=JobError(
                code=ErrorCode.ATTEMPTS_EXHAUSTED,
                message="the worker running this job stopped 3 times; giving up after attempt 3",
                retryable=False,
            ),
        ),
        t.CANCEL_REQUESTED: JobCancelRequested(**_common(t.CANCEL_REQUESTED, 20.2, "api", 1, 0)),
        t.CANCELLED: JobCancelled(**_common(t.CANCELLED, 21.8, WORKER, 1, 12), at_step=9),
        t.RETRYING: JobRetrying(
            **_common(t.RETRYING, 75.0, "scheduler", 1, 1),
            reason="slot 3 missed heartbeats for 30 s; resuming from the step 16 checkpoint",
            next_attempt=2,
        ),
        t.PREEMPT_REQUESTED: JobPreemptRequested(
            **_common(t.PREEMPT_REQUESTED, 60.0, "scheduler", 1, 3),
            at_step=24,
            reason="balance the batch lane: a waiting job starts now instead of after the last round",
        ),
        t.PREVIEW: JobPreview(
            **_common(t.PREVIEW, 41.4, WORKER, 1, 21),
            step=16,
            total_steps=32,
            preview_key=f"jobs/{JOB_ID}/attempt-1/preview-step-00016.jpg",
            width=212,
            height=120,
        ),
        t.PREEMPTED: JobPreempted(
            **_common(t.PREEMPTED, 62.0, WORKER, 1, 30),
            step=24,
            total_steps=32,
            checkpoint_key=checkpoint.replace("16", "24"),
            reason="balance the batch lane: a waiting job starts now instead of after the last round",
        ),
        t.DELETED: JobDeleted(
            **_common(t.DELETED, 86_400.0, "api", 1, 0),
            tenant="acme",
            reason=DeletionReason.CLIENT,
            objects_deleted=4,
        ),
    }


def heartbeat() -> WorkerHeartbeat:
    return WorkerHeartbeat(
        event_id=_event_id("worker.heartbeat"),
        occurred_at=_at(42.0),
        producer=WORKER,
        slot=SLOT,
        worker_id=WORKER_ID,
        boot_id=BOOT_ID,
        state=SlotState.BUSY,
        job_id=JOB_ID,
        attempt=1,
        model="mochi-1-preview",
        seconds_per_step=1.92,
    )
