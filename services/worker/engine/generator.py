"""The generation interface the worker runner calls, and the types that cross it.

Everything here is synchronous: a generator runs on one worker thread, one job at a time, and reports
through plain callbacks that the runner turns into events. No Kafka, S3 or asyncio in this package.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import PIL.Image
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

from schemas.catalog import Speed
from schemas.events import ErrorCode
from schemas.jobs import Phase, ResolvedRequest

RESUME_FORMAT: Final = 1

PhaseCallback = Callable[[Phase], None]
StepCallback = Callable[["StepInfo"], None]
CheckpointCallback = Callable[["ResumeState"], None]
Frames = npt.NDArray[np.uint8]


class Cancelled(Exception):
    """Raised by the caller's `on_step` to stop a generation at once: no further step, no decode."""


class GenerationError(Exception):
    """A classified failure of one generation. `code` is what the runner reports in `job.failed`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Out of memory may pass on another slot or after a restart; the other codes will not."""
        return self.code is ErrorCode.OUT_OF_MEMORY


@dataclass(frozen=True, slots=True, eq=False)
class Preview:
    """The latents after `step` of `total_steps` as a small RGB uint8 image (height, width, 3), projected
    without the VAE (see `preview.py`)."""

    step: int
    total_steps: int
    image: npt.NDArray[np.uint8]

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Progress after one finished denoising step.

    `step` counts finished steps from 1 and continues the count of a resumed run; `seconds_per_step` is
    the mean over the steps this call has run, without the time spent in the caller's callbacks.
    `preview` is set at the steps `preview_every` asks for.
    """

    step: int
    total_steps: int
    seconds_per_step: float
    preview: Preview | None = None


def request_fingerprint(request: ResolvedRequest) -> str:
    """A hash of every request field that changes the latents, so a checkpoint resumes only its own job."""
    fields = request.model_dump(
        include={
            "model",
            "prompt",
            "negative_prompt",
            "width",
            "height",
            "num_frames",
            "num_inference_steps",
            "seed",
            "guidance_scale",
        }
    )
    # A tier's cache changes the latents too. Only a non-exact tier is hashed, so checkpoints written
    # before tiers existed still resume their (exact) jobs.
    if request.speed is not Speed.EXACT:
        fields["speed"] = request.speed.value
    # The input image of an image-to-video job (its key names the job's own stored image).
    if request.image_key is not None:
        fields["image_key"] = request.image_key
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class ResumeState:
    """What a resume needs: the latents after `step` finished steps of `total_steps`.

    Resuming requires the same request (checked through `fingerprint`); the latents live on the CPU.
    """

    step: int
    total_steps: int
    latents: torch.Tensor
    fingerprint: str
    model: str

    def to_bytes(self) -> bytes:
        """Serialize for storage (S3): a `torch.save` archive of plain values and one tensor."""
        buffer = io.BytesIO()
        payload = {
            "format": RESUME_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "latents": self.latents.detach().cpu().contiguous(),
            "fingerprint": self.fingerprint,
            "model": self.model,
        }
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeState:
        """Read what `to_bytes` wrote. Raises `ValueError` for anything else (no code is unpickled)."""
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"not a readable checkpoint: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
            raise ValueError(f"checkpoint format is not {RESUME_FORMAT}")
        latents = payload.get("latents")
        if not isinstance(latents, torch.Tensor):
            raise ValueError("checkpoint has no latents tensor")
        return cls(
            step=int(payload["step"]),
            total_steps=int(payload["total_steps"]),
            latents=latents,
            fingerprint=str(payload["fingerprint"]),
            model=str(payload["model"]),
        )


@dataclass(frozen=True, slots=True, eq=False)
class GeneratedVideo:
    """Decoded frames, uint8 RGB of shape (frames, height, width, 3), and how long they took.

    `phase_seconds` splits `generation_seconds` by phase (loading, encoding_prompt, denoising, decoding);
    `steps_run` counts the steps this call computed (fewer than the total after a resume).
    """

    frames: Frames
    fps: int
    generation_seconds: float
    steps_run: int = 0
    resumed_from_step: int = 0
    seconds_per_step: float = 0.0
    phase_seconds: Mapping[Phase, float] = field(default_factory=dict)


class Generator(Protocol):
    """A loaded text-to-video model. One call at a time; the runner owns the thread."""

    model_name: str

    @property
    def supports_resume(self) -> bool:
        """Whether checkpoints from this generator can be resumed bit-identically."""
        ...

    def load(self) -> None:
        """Load weights once at worker start. Missing weights: `GenerationError(MODEL_UNAVAILABLE)`."""
        ...

    def generate(
        self,
        request: ResolvedRequest,
        *,
        on_phase: PhaseCallback,
        on_step: StepCallback,
        resume: ResumeState | None = None,
        checkpoint_every: int = 0,
        on_checkpoint: CheckpointCallback | None = None,
        preview_every: int = 0,
        image: PIL.Image.Image | None = None,
    ) -> GeneratedVideo:
        """Run one request to decoded frames; see `DiffusersGenerator.generate` for the contract.
        `preview_every` > 0 puts a `Preview` in the `StepInfo` of every such step; `image` is the input
        image of an image-to-video request (its first frame)."""
        ...


class Offload(StrEnum):
    NONE = "none"
    MODEL_CPU_OFFLOAD = "model_cpu_offload"
    SEQUENTIAL_CPU_OFFLOAD = "sequential_cpu_offload"


class CompileMode(StrEnum):
    NONE = "none"
    BLOCKS = "blocks"


class DType(StrEnum):
    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


def _default_tiny_cache() -> Path:
    return Path.home() / ".cache" / "reelstream" / "tiny-models"


class EngineOptions(BaseModel):
    """The engine settings a deployment sets: `EngineSettings` has them, and the worker's settings
    class reads them from the environment (`REELSTREAM_<FIELD>`, the token also as `HF_TOKEN`)."""

    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: DType = DType.AUTO
    model_dir: Path | None = None
    hf_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("hf_token", "HF_TOKEN", "REELSTREAM_HF_TOKEN")
    )
    offload: Offload = Offload.NONE
    vae_tiling: bool = Field(default=True, description="163 Mochi frames do not decode untiled in 80 GB.")
    compile: CompileMode = CompileMode.NONE
    tiny_cache_dir: Path = Field(default_factory=_default_tiny_cache)
    simulate: bool = Field(default=False, description="Build a SimulatedGenerator instead (fleet tests).")
    simulated_seconds_per_step: float = Field(default=0.5, ge=0)


class EngineSettings(EngineOptions):
    """How the engine runs. Built by the worker's settings class; the engine never reads the environment.

    `device="auto"` picks CUDA when present; `dtype="auto"` is bfloat16 on CUDA and float32 on the CPU.
    Weights come from `model_dir/<catalog name>` when that folder has a `model_index.json`, else from the
    Hugging Face cache (`hf_cache_dir`, or the library's default). Only `allow_download` lets `load()`
    fetch missing weights; `HF_HUB_OFFLINE` still wins, as huggingface_hub reads it itself.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hf_cache_dir: Path | None = None
    allow_download: bool = False
    variant: str | None = Field(default=None, description="Weights variant, e.g. 'bf16' for Mochi's repo.")
    compile_backend: str = "inductor"
