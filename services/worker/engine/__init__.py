"""The worker's generation engine: text-to-video with diffusers, synchronous, one job at a time.

Import is cheap and side-effect free: diffusers is imported and weights are read only by `load()`.
"""

from __future__ import annotations

from schemas.catalog import UnknownModel, model_spec
from schemas.events import ErrorCode
from services.worker.engine.diffusers_generator import DiffusersGenerator
from services.worker.engine.generator import (
    Cancelled,
    CompileMode,
    DType,
    EngineSettings,
    GeneratedVideo,
    GenerationError,
    Generator,
    Offload,
    ResumeState,
    StepInfo,
)
from services.worker.engine.simulated import SimulatedGenerator
from services.worker.engine.video import encode_mp4, poster_jpeg


def build_generator(model: str, settings: EngineSettings) -> Generator:
    """The generator for catalog model `model`; nothing is loaded until its `load()`.

    `settings.simulate` gives a `SimulatedGenerator` (sleeps instead of computing). An unknown model is
    `GenerationError(MODEL_UNAVAILABLE)`.
    """
    try:
        model_spec(model)
    except UnknownModel as e:
        raise GenerationError(ErrorCode.MODEL_UNAVAILABLE, str(e)) from None
    if settings.simulate:
        return SimulatedGenerator(model, seconds_per_step=settings.simulated_seconds_per_step)
    return DiffusersGenerator(model, settings)


__all__ = [
    "Cancelled",
    "CompileMode",
    "DType",
    "DiffusersGenerator",
    "EngineSettings",
    "GeneratedVideo",
    "GenerationError",
    "Generator",
    "Offload",
    "ResumeState",
    "SimulatedGenerator",
    "StepInfo",
    "build_generator",
    "encode_mp4",
    "poster_jpeg",
]
