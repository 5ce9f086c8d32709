"""The model catalog: what each model can do. The API validates against it, the worker loads from it.

Only data lives here (limits, defaults, the diffusers class name); loading code is in the worker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field


class Quality(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ModelSpec(BaseModel):
    """Limits and defaults of one model. Frame counts follow `frames = frame_step * k + 1`."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    pipeline_class: str
    description: str
    default_width: int
    default_height: int
    min_side: int
    max_side: int
    size_multiple: int
    frame_step: int
    min_frames: int
    max_frames: int
    default_frames: int
    default_fps: int
    min_fps: int = 1
    max_fps: int = 60
    steps: dict[Quality, int]
    default_guidance: float
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    memory_gib: float = Field(description="Peak GPU memory at the default size, bf16, all weights resident.")
    tiny: bool = False

    def frames_allowed(self, frames: int) -> bool:
        return self.min_frames <= frames <= self.max_frames and (frames - 1) % self.frame_step == 0

    def frames_rule(self) -> str:
        return (
            f"{self.frame_step}k+1 between {self.min_frames} and {self.max_frames}"
            if self.frame_step > 1
            else f"between {self.min_frames} and {self.max_frames}"
        )

    def nearest_frames(self, frames: int) -> int:
        """The allowed frame count nearest to `frames` (used to turn a duration into frames)."""
        k = max(0, round((frames - 1) / self.frame_step))
        candidate = k * self.frame_step + 1
        return min(max(candidate, self.min_frames), self.max_frames)


MOCHI_STEPS: Final = {Quality.LOW: 16, Quality.MEDIUM: 32, Quality.HIGH: 64}
# Wan's reference sampler runs 50 steps; 20-30 keep most of the quality at half the GPU time.
WAN_STEPS: Final = {Quality.LOW: 20, Quality.MEDIUM: 30, Quality.HIGH: 50}

CATALOG: Final[dict[str, ModelSpec]] = {
    "mochi-1-preview": ModelSpec(
        name="mochi-1-preview",
        family="mochi",
        pipeline_class="MochiPipeline",
        description="genmo/mochi-1-preview: 10B asymmetric diffusion transformer, 848x480 native, 30 fps.",
        default_width=848,
        default_height=480,
        min_side=256,
        max_side=848,
        size_multiple=16,
        frame_step=6,
        min_frames=7,
        max_frames=163,
        default_frames=163,
        default_fps=30,
        steps=MOCHI_STEPS,
        default_guidance=4.5,
        memory_gib=60.0,
    ),
    "tiny-mochi": ModelSpec(
        name="tiny-mochi",
        family="mochi",
        pipeline_class="MochiPipeline",
        description="The Mochi pipeline with tiny random weights, built offline: CPU development and tests.",
        default_width=96,
        default_height=64,
        min_side=32,
        max_side=256,
        size_multiple=16,
        frame_step=6,
        min_frames=7,
        max_frames=49,
        default_frames=25,
        default_fps=30,
        steps={Quality.LOW: 2, Quality.MEDIUM: 4, Quality.HIGH: 8},
        default_guidance=4.5,
        memory_gib=0.7,
        tiny=True,
    ),
    "wan2.1-t2v-1.3b": ModelSpec(
        name="wan2.1-t2v-1.3b",
        family="wan",
        pipeline_class="WanPipeline",
        description=(
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 1.3B diffusion transformer with a umT5-XXL text encoder, "
            "832x480 native, 16 fps, 81 frames = 5 s."
        ),
        default_width=832,
        default_height=480,
        min_side=256,
        max_side=832,
        size_multiple=16,
        frame_step=4,
        min_frames=5,
        max_frames=81,
        default_frames=81,
        default_fps=16,
        steps=WAN_STEPS,
        default_guidance=5.0,
        memory_gib=20.0,
    ),
}

DEFAULT_MODEL: Final = "mochi-1-preview"
