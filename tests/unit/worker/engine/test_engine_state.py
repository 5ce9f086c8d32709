"""Resume state serialization, the scheduler hook, step bookkeeping, and settings."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from schemas.events import ErrorCode
from schemas.jobs import Phase
from services.worker.engine import EngineSettings, GenerationError, ResumeState, StepInfo
from services.worker.engine.generator import request_fingerprint
from services.worker.engine.memory import place, resolve_device, resolve_dtype
from services.worker.engine.progress import StepTracker
from services.worker.engine.resume import check_resume, schedule_hook

from .conftest import make_request


def _state(**overrides: Any) -> ResumeState:
    values: dict[str, Any] = {
        "step": 2,
        "total_steps": 4,
        "latents": torch.arange(24, dtype=torch.bfloat16).reshape(1, 2, 3, 2, 2),
        "fingerprint": request_fingerprint(make_request()),
        "model": "tiny-mochi",
    }
    values.update(overrides)
    return ResumeState(**values)


def test_resume_state_round_trips_through_bytes() -> None:
    state = _state()

    back = ResumeState.from_bytes(state.to_bytes())

    assert (back.step, back.total_steps, back.fingerprint, back.model) == (
        2,
        4,
        state.fingerprint,
        "tiny-mochi",
    )
    assert back.latents.dtype == torch.bfloat16
    assert torch.equal(back.latents, state.latents)


@pytest.mark.parametrize("data", [b"", b"not a checkpoint", b"PK\x03\x04garbage"])
def test_resume_state_rejects_anything_else(data: bytes) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        ResumeState.from_bytes(data)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (_state(fingerprint="0" * 64), "another request"),
        (_state(total_steps=8), "8 steps"),
        (_state(step=4), "not inside"),
    ],
)
def test_check_resume_names_what_does_not_match(state: ResumeState, message: str) -> None:
    with pytest.raises(GenerationError) as raised:
        check_resume(state, make_request())
    assert raised.value.code is ErrorCode.INTERNAL
    assert message in raised.value.message


def test_schedule_hook_slices_timesteps_and_sigmas_and_restores_the_method() -> None:
    scheduler: Any = importlib.import_module("diffusers").FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    full_t, full_s = scheduler.timesteps.clone(), scheduler.sigmas.clone()
    calls: list[str] = []

    with schedule_hook(scheduler, skip_steps=2, on_set=lambda: calls.append("set")):
        scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
        assert torch.equal(scheduler.timesteps, full_t[2:])
        assert torch.equal(scheduler.sigmas, full_s[2:])
        assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1

    assert calls == ["set"]
    assert "set_timesteps" not in vars(scheduler)


def test_step_time_leaves_out_the_callers_time() -> None:
    now = [0.0]
    seen: list[StepInfo] = []

    def slow_caller(info: StepInfo) -> None:
        seen.append(info)
        now[0] += 10.0  # e.g. a slow event publish

    tracker = StepTracker(
        total_steps=3, start_step=0, fingerprint="f", model="m",
        on_phase=lambda _: None, on_step=slow_caller, clock=lambda: now[0],
    )  # fmt: skip
    tracker.phase(Phase.DENOISING)
    for _ in range(3):
        now[0] += 1.0
        tracker.step_done(torch.zeros(1))

    assert [s.seconds_per_step for s in seen] == [1.0, 1.0, 1.0]


def test_settings_pick_the_cpu_and_float32_without_a_gpu() -> None:
    settings = EngineSettings()
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")

    device = resolve_device(settings)

    assert (device.type, resolve_dtype(settings, device)) == ("cpu", torch.float32)


def test_settings_reject_an_unknown_device() -> None:
    with pytest.raises(ValidationError):
        EngineSettings(device="tpu")


def test_offload_without_a_gpu_is_refused() -> None:
    settings = EngineSettings(device="cpu", offload="model_cpu_offload")

    with pytest.raises(GenerationError) as raised:
        place(object(), settings, torch.device("cpu"))

    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE
