"""The real diffusers MochiPipeline with tiny random weights, on the CPU, through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.events import ErrorCode
from schemas.jobs import Phase
from services.worker.engine import (
    Cancelled,
    CompileMode,
    DiffusersGenerator,
    EngineSettings,
    GenerationError,
    ResumeState,
)

from .conftest import Recorder, make_request


@pytest.fixture(scope="module")
def reference(tiny_generator: DiffusersGenerator) -> np.ndarray:
    """Frames of the default request, uninterrupted."""
    return tiny_generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None).frames


def test_generates_uint8_frames_with_phases_and_steps(tiny_generator: DiffusersGenerator) -> None:
    rec = Recorder()
    video = tiny_generator.generate(make_request(), on_phase=rec.on_phase, on_step=rec.on_step)

    assert video.frames.shape == (13, 64, 96, 3)
    assert video.frames.dtype == np.uint8
    assert video.fps == 30
    assert rec.phases == [Phase.ENCODING_PROMPT, Phase.DENOISING, Phase.DECODING]
    assert [(s.step, s.total_steps) for s in rec.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(s.seconds_per_step > 0 for s in rec.steps)
    assert video.steps_run == 4
    assert set(video.phase_seconds) == {Phase.ENCODING_PROMPT, Phase.DENOISING, Phase.DECODING}
    assert video.generation_seconds >= sum(video.phase_seconds.values()) * 0.99


def test_lazy_load_reports_the_loading_phase(cpu_settings: EngineSettings) -> None:
    rec = Recorder()
    generator = DiffusersGenerator("tiny-mochi", cpu_settings)

    generator.generate(make_request(num_inference_steps=2), on_phase=rec.on_phase, on_step=rec.on_step)

    assert rec.phases[:2] == [Phase.LOADING, Phase.ENCODING_PROMPT]


def test_same_seed_same_frames_other_seed_other_frames(
    tiny_generator: DiffusersGenerator, reference: np.ndarray
) -> None:
    again = tiny_generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    other = tiny_generator.generate(make_request(seed=8), on_phase=lambda _: None, on_step=lambda _: None)

    assert np.array_equal(again.frames, reference)
    assert not np.array_equal(other.frames, reference)


def test_cancel_stops_at_once_without_decoding_and_the_pipeline_stays_usable(
    tiny_generator: DiffusersGenerator, reference: np.ndarray
) -> None:
    rec = Recorder(raise_at=2, error=Cancelled())

    with pytest.raises(Cancelled):
        tiny_generator.generate(make_request(), **rec.callbacks())

    assert [s.step for s in rec.steps] == [1, 2]
    assert Phase.DECODING not in rec.phases
    after = tiny_generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    assert np.array_equal(after.frames, reference)


def test_a_callers_own_error_passes_through_unchanged(tiny_generator: DiffusersGenerator) -> None:
    boom = RuntimeError("event queue closed")
    rec = Recorder(raise_at=1, error=boom)

    with pytest.raises(RuntimeError) as raised:
        tiny_generator.generate(make_request(), **rec.callbacks())

    assert raised.value is boom


def test_checkpoint_then_cancel_then_resume_in_a_fresh_generator_is_bit_identical(
    tiny_generator: DiffusersGenerator, cpu_settings: EngineSettings, reference: np.ndarray
) -> None:
    rec = Recorder(raise_at=3, error=Cancelled())
    with pytest.raises(Cancelled):
        tiny_generator.generate(make_request(), checkpoint_every=2, **rec.callbacks())
    assert [c.step for c in rec.checkpoints] == [2]
    stored = rec.checkpoints[0].to_bytes()

    fresh = DiffusersGenerator("tiny-mochi", cpu_settings)
    resumed_rec = Recorder()
    video = fresh.generate(make_request(), resume=ResumeState.from_bytes(stored), **resumed_rec.callbacks())

    assert np.array_equal(video.frames, reference)
    assert [(s.step, s.total_steps) for s in resumed_rec.steps] == [(3, 4), (4, 4)]
    assert (video.steps_run, video.resumed_from_step) == (2, 2)


def test_checkpoints_every_k_steps_but_not_after_the_last(tiny_generator: DiffusersGenerator) -> None:
    rec = Recorder()
    tiny_generator.generate(make_request(num_inference_steps=6), checkpoint_every=2, **rec.callbacks())

    assert [c.step for c in rec.checkpoints] == [2, 4]
    assert all(c.total_steps == 6 and c.model == "tiny-mochi" for c in rec.checkpoints)
    assert rec.checkpoints[0].latents.device.type == "cpu"


def test_resume_refuses_a_checkpoint_of_another_request(tiny_generator: DiffusersGenerator) -> None:
    rec = Recorder()
    tiny_generator.generate(make_request(), checkpoint_every=2, **rec.callbacks())

    with pytest.raises(GenerationError) as raised:
        tiny_generator.generate(
            make_request(seed=99), on_phase=rec.on_phase, on_step=rec.on_step, resume=rec.checkpoints[0]
        )

    assert raised.value.code is ErrorCode.INTERNAL
    assert "another request" in raised.value.message


def test_input_the_pipeline_rejects_is_model_rejected_input(tiny_generator: DiffusersGenerator) -> None:
    with pytest.raises(GenerationError) as raised:
        tiny_generator.generate(make_request(height=60), on_phase=lambda _: None, on_step=lambda _: None)

    assert raised.value.code is ErrorCode.MODEL_REJECTED_INPUT


def test_out_of_memory_in_the_transformer_is_classified_and_recoverable(
    tiny_generator: DiffusersGenerator, reference: np.ndarray
) -> None:
    def exhaust(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")

    hook = tiny_generator.pipe.transformer.register_forward_pre_hook(exhaust)
    try:
        with pytest.raises(GenerationError) as raised:
            tiny_generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    finally:
        hook.remove()

    assert raised.value.code is ErrorCode.OUT_OF_MEMORY
    assert raised.value.retryable
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
    after = tiny_generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    assert np.array_equal(after.frames, reference)


def test_per_block_compile_matches_eager(cpu_settings: EngineSettings, reference: np.ndarray) -> None:
    # Inductor works on this CPU too, but its first compile takes ~35 s; aot_eager runs the same
    # dynamo capture and AOT autograd tracing in ~4 s.
    settings = cpu_settings.model_copy(update={"compile": CompileMode.BLOCKS, "compile_backend": "aot_eager"})
    compiled = DiffusersGenerator("tiny-mochi", settings)
    compiled.load()

    video = compiled.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)

    assert all(
        hasattr(block, "_compiled_call_impl") for block in compiled.pipe.transformer.transformer_blocks
    )
    eager = reference.astype(np.float64)
    relative = np.linalg.norm(video.frames.astype(np.float64) - eager) / np.linalg.norm(eager)
    assert relative < 1e-2
