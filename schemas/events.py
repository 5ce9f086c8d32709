"""Versioned job events and the worker heartbeat.

Every event carries an id, its type, a schema version, the job id, an aware UTC timestamp, the producer,
the attempt and, where the producer knows it, a sequence number within that attempt. Changes are additive;
a breaking change gets a new `schema_version` and an upcaster in `schemas.envelope`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from schemas.jobs import Phase, ResolvedRequest

SCHEMA_VERSION: Final = 1


class EventType(StrEnum):
    REQUESTED = "job.requested"
    DISPATCHED = "job.dispatched"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    CHECKPOINTED = "job.checkpointed"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCEL_REQUESTED = "job.cancel_requested"
    CANCELLED = "job.cancelled"
    RETRYING = "job.retrying"
    PREEMPT_REQUESTED = "job.preempt_requested"
    PREEMPTED = "job.preempted"
    DELETED = "job.deleted"
    PREVIEW = "job.preview"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    # extra="ignore": a consumer built against v1 reads a producer that added fields (additive changes).
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    schema_version: int = SCHEMA_VERSION
    job_id: uuid.UUID
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    producer: str
    attempt: int = Field(default=0, ge=0, description="0 before the first dispatch, then 1, 2, ...")
    sequence: int | None = Field(default=None, ge=0, description="Order within this producer and attempt.")
    tenant: str | None = Field(
        default=None,
        description="The tenant the job belongs to (also the record's `ce_tenant` header), to filter on.",
    )


class TenantLimits(BaseModel):
    """A tenant's limits as they stood when its job was accepted; the scheduler enforces them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_running_jobs: int | None = Field(
        default=None, ge=1, description="Slots the tenant's jobs may hold at once; None: no limit."
    )
    gpu_seconds_per_day: float | None = Field(
        default=None,
        gt=0,
        description="GPU seconds the tenant's jobs may start within a UTC day; None: no limit.",
    )


class JobRequested(_Event):
    type: Literal[EventType.REQUESTED] = EventType.REQUESTED
    request: ResolvedRequest
    tenant: str = "default"
    limits: TenantLimits = Field(default_factory=TenantLimits)
    idempotency_key: str | None = None
    request_hash: str = Field(description="sha256 of the canonical client body, for Idempotency-Key checks.")
    accept_by: AwareDatetime | None = Field(
        default=None,
        description=(
            "Submit deadline. A record of this event that the broker appended after this instant (its"
            " LogAppendTime) is not a job: consumers drop it. Absent: always a job."
        ),
    )

    def arrived_late(self, appended_at: datetime | None) -> bool:
        """Whether a record appended at `appended_at` (the broker's clock; None: unknown) missed `accept_by`.

        A request without a deadline, or whose append time is unknown, is on time.
        """
        return self.accept_by is not None and appended_at is not None and appended_at > self.accept_by


class JobDispatched(_Event):
    """The scheduler's assignment. The same record goes to the slot's partition of `jobs.dispatch`."""

    type: Literal[EventType.DISPATCHED] = EventType.DISPATCHED
    slot: int = Field(ge=0)
    request: ResolvedRequest
    resume_checkpoint: str | None = Field(default=None, description="S3 key of the checkpoint to resume.")


class JobStarted(_Event):
    type: Literal[EventType.STARTED] = EventType.STARTED
    slot: int = Field(ge=0)
    worker_id: str


class JobProgress(_Event):
    type: Literal[EventType.PROGRESS] = EventType.PROGRESS
    phase: Phase
    progress: float = Field(ge=0.0, le=1.0)
    step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=1)
    seconds_per_step: float | None = Field(default=None, ge=0)
    gpu_util: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Busy share of the slot's GPU (NVML) when the update was taken; absent without NVML.",
    )


class JobCheckpointed(_Event):
    type: Literal[EventType.CHECKPOINTED] = EventType.CHECKPOINTED
    step: int = Field(ge=0)
    total_steps: int = Field(ge=1)
    checkpoint_key: str


class Spritesheet(BaseModel):
    """How the spritesheet JPEG is laid out: `columns` x `rows` tiles, left to right then top to bottom,
    tile i showing frame `frame_indices[i]` (evenly spaced over the clip)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    columns: int = Field(ge=1)
    rows: int = Field(ge=1)
    tile_width: int = Field(ge=1)
    tile_height: int = Field(ge=1)
    frame_indices: list[int]


class VideoResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    video_key: str
    poster_key: str | None
    size_bytes: int = Field(ge=0)
    content_type: str = "video/mp4"
    width: int
    height: int
    fps: int
    frames: int
    duration_seconds: float
    # Absent in results stored before they were rendered.
    thumbnail_key: str | None = Field(default=None, description="A small JPEG of the middle frame.")
    spritesheet_key: str | None = Field(
        default=None, description="A JPEG grid of evenly spaced frames, laid out as `spritesheet` says."
    )
    spritesheet: Spritesheet | None = None


class JobSucceeded(_Event):
    type: Literal[EventType.SUCCEEDED] = EventType.SUCCEEDED
    result: VideoResult
    generation_seconds: float = Field(ge=0, description="Time the worker spent generating (no queueing).")


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    MODEL_REJECTED_INPUT = "model_rejected_input"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL = "internal"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    QUEUE_TIMEOUT = "queue_timeout"


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    code: ErrorCode
    message: str
    retryable: bool = False


class JobFailed(_Event):
    type: Literal[EventType.FAILED] = EventType.FAILED
    error: JobError


class JobCancelRequested(_Event):
    type: Literal[EventType.CANCEL_REQUESTED] = EventType.CANCEL_REQUESTED
    reason: str = "requested by client"


class JobCancelled(_Event):
    type: Literal[EventType.CANCELLED] = EventType.CANCELLED
    reason: str = "requested by client"
    at_step: int | None = None


class JobRetrying(_Event):
    type: Literal[EventType.RETRYING] = EventType.RETRYING
    reason: str
    next_attempt: int = Field(ge=1)


class JobPreemptRequested(_Event):
    """The scheduler preempts this attempt: its slot stops it at a checkpoint and the job waits again."""

    type: Literal[EventType.PREEMPT_REQUESTED] = EventType.PREEMPT_REQUESTED
    at_step: int = Field(ge=1, description="Stop after this step (or the next if past it) with a checkpoint.")
    reason: str


class JobPreempted(_Event):
    """The slot stopped this attempt after a checkpoint, as asked; the job waits again and resumes there."""

    type: Literal[EventType.PREEMPTED] = EventType.PREEMPTED
    step: int = Field(ge=1)
    total_steps: int = Field(ge=1)
    checkpoint_key: str
    reason: str


class JobPreview(_Event):
    """A low-resolution look at the latents after `step`, projected to RGB without the VAE; droppable."""

    type: Literal[EventType.PREVIEW] = EventType.PREVIEW
    step: int = Field(ge=1)
    total_steps: int = Field(ge=1)
    preview_key: str = Field(description="S3 key of the preview JPEG.")
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class DeletionReason(StrEnum):
    CLIENT = "client"
    RETENTION = "retention"


class JobDeleted(_Event):
    """Tombstone: the job is deleted, with its video, poster, previews, thumbnails, input image and
    checkpoints. Its S3 objects are gone before this is published; the projector removes the job's row
    on it, and nothing about the job counts after it. Downstream consumers should forget the job."""

    type: Literal[EventType.DELETED] = EventType.DELETED
    reason: DeletionReason = Field(
        default=DeletionReason.CLIENT,
        description="client: DELETE /v1/jobs/{id} (or /v1/videos/{id}); retention: expired after N days.",
    )
    objects_deleted: int = Field(default=0, ge=0, description="S3 objects the deleter removed first.")


JobEvent = Annotated[
    JobRequested
    | JobDispatched
    | JobStarted
    | JobProgress
    | JobCheckpointed
    | JobSucceeded
    | JobFailed
    | JobCancelRequested
    | JobCancelled
    | JobRetrying
    | JobPreemptRequested
    | JobPreempted
    | JobDeleted
    | JobPreview,
    Field(discriminator="type"),
]
JOB_EVENT_ADAPTER: Final[TypeAdapter[JobEvent]] = TypeAdapter(JobEvent)
TERMINAL_TYPES: Final = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})
# Nothing follows these in a job's stream: its end, or its deletion.
STREAM_END_TYPES: Final = TERMINAL_TYPES | {EventType.DELETED}
EVENT_CLASSES: Final[dict[EventType, type[_Event]]] = {
    EventType.REQUESTED: JobRequested,
    EventType.DISPATCHED: JobDispatched,
    EventType.STARTED: JobStarted,
    EventType.PROGRESS: JobProgress,
    EventType.CHECKPOINTED: JobCheckpointed,
    EventType.SUCCEEDED: JobSucceeded,
    EventType.FAILED: JobFailed,
    EventType.CANCEL_REQUESTED: JobCancelRequested,
    EventType.CANCELLED: JobCancelled,
    EventType.RETRYING: JobRetrying,
    EventType.PREEMPT_REQUESTED: JobPreemptRequested,
    EventType.PREEMPTED: JobPreempted,
    EventType.DELETED: JobDeleted,
    EventType.PREVIEW: JobPreview,
}


class SlotState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


class HeldJob(BaseModel):
    """A job and attempt a slot holds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: uuid.UUID
    attempt: int = Field(ge=1)


class WorkerHeartbeat(BaseModel):
    """Published by each worker every few seconds, keyed by slot id, to a compacted topic."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["worker.heartbeat"] = "worker.heartbeat"
    schema_version: int = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    producer: str
    slot: int = Field(ge=0)
    worker_id: str
    boot_id: uuid.UUID = Field(description="New at every process start: a change means the slot restarted.")
    state: SlotState
    job_id: uuid.UUID | None = None
    attempt: int | None = None
    model: str | None = None
    seconds_per_step: float | None = Field(default=None, ge=0)
    dispatch_position: int | None = Field(
        default=None, ge=0, description="Next offset the slot will read on its jobs.dispatch partition."
    )
    finishing: list[HeldJob] = Field(
        default_factory=list,
        description=(
            "Jobs whose denoising is done and whose video is being encoded and stored, while the slot "
            "already runs the next one (`job_id`)."
        ),
    )
