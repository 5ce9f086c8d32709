"""Fixtures for the engine tests: the tiny-mochi weights built once per session, and a loaded generator."""

from __future__ import annotations

import os

# Before huggingface_hub is imported: proves that loading never needs the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import Quality
from schemas.jobs import Phase, Priority, ResolvedRequest
from services.worker.engine import DiffusersGenerator, EngineSettings, ResumeState, StepInfo


def make_request(**overrides: Any) -> ResolvedRequest:
    """A small tiny-mochi request: 64x96, 13 frames, 4 steps."""
    values: dict[str, Any] = {
        "prompt": "a red fox running through fresh snow",
        "negative_prompt": None,
        "model": "tiny-mochi",
        "width": 96,
        "height": 64,
        "num_frames": 13,
        "fps": 30,
        "quality": Quality.MEDIUM,
        "num_inference_steps": 4,
        "seed": 7,
        "guidance_scale": 4.5,
        "priority": Priority.INTERACTIVE,
    }
    values.update(overrides)
    return ResolvedRequest(**values)


@dataclass
class Recorder:
    """Collects what the engine reports; `cancel_at` raises `Cancelled`-like errors from `on_step`."""

    phases: list[Phase] = field(default_factory=list)
    steps: list[StepInfo] = field(default_factory=list)
    checkpoints: list[ResumeState] = field(default_factory=list)
    raise_at: int | None = None
    error: BaseException | None = None

    def on_phase(self, phase: Phase) -> None:
        self.phases.append(phase)

    def on_step(self, info: StepInfo) -> None:
        self.steps.append(info)
        if self.raise_at == info.step and self.error is not None:
            raise self.error

    def on_checkpoint(self, state: ResumeState) -> None:
        self.checkpoints.append(state)

    def callbacks(self) -> dict[str, Any]:
        return {"on_phase": self.on_phase, "on_step": self.on_step, "on_checkpoint": self.on_checkpoint}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def cpu_settings(tiny_cache: Path) -> EngineSettings:
    return EngineSettings(device="cpu", tiny_cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def tiny_generator(cpu_settings: EngineSettings) -> DiffusersGenerator:
    generator = DiffusersGenerator("tiny-mochi", cpu_settings)
    generator.load()
    return generator
