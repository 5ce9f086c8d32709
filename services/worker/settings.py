"""Settings of a worker: its slot, its model and how the engine runs it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, model_validator

from schemas.catalog import DEFAULT_MODEL, model_spec
from services.common.settings import CommonSettings
from services.worker.engine.generator import EngineOptions, EngineSettings


class WorkerSettings(CommonSettings, EngineOptions):
    """The slot, its model and the worker's own settings; how the engine runs is `EngineOptions`."""

    service_name: str = "worker"
    slot: int | None = Field(default=None, ge=0, description="GPU slot = partition of jobs.dispatch.")
    hostname: str = Field(default="", validation_alias=AliasChoices("HOSTNAME", "REELSTREAM_HOSTNAME"))
    model: str = DEFAULT_MODEL
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch (CPU runs).")
    checkpoint_every: int = Field(
        default=8, ge=0, description="Denoising steps between checkpoints; 0 = off."
    )
    preview_every_steps: int = Field(
        default=4,
        ge=0,
        description=(
            "Denoising steps between previews of the latents (a small JPEG in S3 and a job.preview event);"
            " 0 = off."
        ),
    )
    preview_min_seconds: float = Field(
        default=0,
        ge=0,
        description=(
            "No preview within this many seconds of the start of generation or of the last preview: a job"
            " shorter than this gets none, and a fast GPU does not send one every second."
        ),
    )
    checkpoint_min_seconds: float = Field(
        default=0,
        ge=0,
        description=(
            "No checkpoint within this many seconds of the attempt's start or its last checkpoint (one "
            "the job stops at is always taken): a job shorter than this is never checkpointed."
        ),
    )
    scratch_dir: Path = Path("/tmp/reelstream-worker")  # noqa: S108 - a per-pod scratch volume in production
    heartbeat_seconds: float = Field(default=1.0, gt=0)
    progress_interval_seconds: float = Field(default=0.25, ge=0)
    control_lookback_seconds: int = Field(default=3600, ge=0)
    upload_retry_seconds: float = Field(
        default=600,
        ge=0,
        description=(
            "How long a finished video waits on the scratch dir for S3 to take it (retried with backoff) "
            "before the job fails as storage_unavailable: a storage outage must not throw GPU work away."
        ),
    )
    max_finishing: int = Field(
        default=2,
        ge=0,
        description=(
            "Jobs that may encode and store their video while the slot already denoises the next one; "
            "0 = the slot takes the next job only when the previous has ended."
        ),
    )
    finish_timeout_seconds: float = Field(
        default=45,
        gt=0,
        description=(
            "At shutdown, after the running job stopped at a checkpoint, how long jobs still storing their "
            "video may take (together within the pod's 120 s grace period)."
        ),
    )

    @model_validator(mode="after")
    def _slot_and_model(self) -> Self:
        model_spec(self.model)  # UnknownModel, a ValueError: the settings are refused
        if self.slot is None:
            match = re.search(r"-(\d+)$", self.hostname)
            if match is None:
                raise ValueError("set REELSTREAM_SLOT, or run in a StatefulSet pod named <name>-<ordinal>")
            object.__setattr__(self, "slot", int(match.group(1)))
        if self.slot is not None and self.slot >= self.gpu_slots:
            raise ValueError(f"slot {self.slot} is outside REELSTREAM_GPU_SLOTS={self.gpu_slots}")
        return self

    @property
    def slot_id(self) -> int:
        assert self.slot is not None
        return self.slot

    def engine(self) -> EngineSettings:
        return EngineSettings.model_validate(
            {name: getattr(self, name) for name in EngineOptions.model_fields}
        )
