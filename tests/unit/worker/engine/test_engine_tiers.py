"""Speed tiers on tiny models on the CPU: they really skip transformer work, stay deterministic, leave
`exact` untouched, and resume from a checkpoint as a fresh run of the same tier from that checkpoint."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.catalog import CATALOG, Speed
from schemas.events import ErrorCode
from services.worker.engine import (
    Cancelled,
    CompileMode,
    DiffusersGenerator,
    EngineSettings,
    GenerationError,
    ResumeState,
    SimulatedGenerator,
    build_generator,
)
from services.worker.engine.memory import transformer_blocks
from services.worker.engine.speed import SpeedTiers, cache_config

from .conftest import Recorder, make_request
from .test_engine_wan import WAN, _save_tiny_wan

STEPS = 8


@contextmanager
def counting_block_work(generator: DiffusersGenerator) -> Iterator[list[int]]:
    """Counts the attention query projections the transformer's blocks really compute.

    The cache hooks replace a skipped block's (or module's) forward, so a projection inside it only runs
    when the block does: one count per block per forward pass that computed it."""
    calls = [0]
    handles = [
        block.attn1.to_q.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for block in transformer_blocks(generator.pipe.transformer)
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _run(generator: DiffusersGenerator, speed: Speed, **overrides: Any) -> tuple[np.ndarray, int]:
    request = make_request(**{"speed": speed, "num_inference_steps": STEPS, "num_frames": 7, **overrides})
    with counting_block_work(generator) as calls:
        video = generator.generate(request, **Recorder().callbacks())
    return video.frames, calls[0]


def test_fast_and_fastest_skip_transformer_work_and_are_deterministic(
    tiny_generator: DiffusersGenerator,
) -> None:
    blocks = len(transformer_blocks(tiny_generator.pipe.transformer))
    exact, exact_work = _run(tiny_generator, Speed.EXACT)
    fast, fast_work = _run(tiny_generator, Speed.FAST)
    fast_again, fast_again_work = _run(tiny_generator, Speed.FAST)
    fastest, fastest_work = _run(tiny_generator, Speed.FASTEST)
    fastest_again, _ = _run(tiny_generator, Speed.FASTEST)
    exact_after, _ = _run(tiny_generator, Speed.EXACT)

    assert exact_work == blocks * STEPS  # Mochi batches both CFG branches into one forward pass
    assert fast_work < exact_work  # first-block cache: the tail blocks skipped at some steps
    fastest_tier = CATALOG["tiny-mochi"].speeds[Speed.FASTEST]
    assert fastest_work == blocks * fastest_tier.full_steps(STEPS)  # the fixed schedule: 5 of 8 steps
    # Same seed and tier: the same frames and the same skipped steps.
    assert np.array_equal(fast, fast_again) and fast_work == fast_again_work
    assert np.array_equal(fastest, fastest_again)
    # The tiers do change the result, and leave nothing behind: exact is exact again afterwards.
    assert not np.array_equal(fast, exact) and not np.array_equal(fastest, exact)
    assert np.array_equal(exact_after, exact)
    assert tiny_generator.last_speed is not None and tiny_generator.last_speed.speed is Speed.EXACT


def test_fp8_and_compile_are_skipped_on_the_cpu_with_the_reason_logged(
    tiny_generator: DiffusersGenerator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.worker.engine.speed")
    tiny_generator.speeds._logged.clear()  # logged once per generator: start from a clean slate

    _run(tiny_generator, Speed.FASTEST)
    _run(tiny_generator, Speed.FASTEST)

    applied = tiny_generator.last_speed
    assert applied is not None and applied.recipe == "taylorseer-lite-2+1/2"
    assert not applied.fp8 and not applied.compiled
    assert applied.skipped == (
        "FP8 weights skipped: the device is cpu (FP8 needs a CUDA GPU, capability 8.9+)",
        "compile skipped: it compiles the FP8 transformer, which is not in use",
    )
    logged = [r.getMessage() for r in caplog.records]
    assert logged.count("tiny-mochi: " + applied.skipped[0]) == 1  # once, not per job
    assert logged.count("tiny-mochi: " + applied.skipped[1]) == 1


@pytest.mark.parametrize("speed", [Speed.FAST, Speed.FASTEST])
def test_a_resumed_tier_equals_a_fresh_run_of_that_tier_from_the_checkpoint(
    tiny_generator: DiffusersGenerator, cpu_settings: EngineSettings, speed: Speed
) -> None:
    request = make_request(speed=speed, num_inference_steps=STEPS, num_frames=7)
    first = Recorder(raise_at=3, error=Cancelled())
    with pytest.raises(Cancelled):
        tiny_generator.generate(request, checkpoint_every=2, **first.callbacks())
    [checkpoint] = first.checkpoints
    assert checkpoint.step == 2
    stored = checkpoint.to_bytes()

    # Resumed on the generator that ran (and was cancelled in) the job, after another tier's job ...
    _run(tiny_generator, Speed.FASTEST)
    with counting_block_work(tiny_generator) as work:
        resumed = tiny_generator.generate(
            request, resume=ResumeState.from_bytes(stored), **Recorder().callbacks()
        )
    # ... and on a new generator that never ran anything: the cache starts empty at the checkpoint both
    # times, so the frames are the same bit for bit.
    fresh_generator = DiffusersGenerator("tiny-mochi", cpu_settings)
    elsewhere = fresh_generator.generate(
        request, resume=ResumeState.from_bytes(stored), **Recorder().callbacks()
    )

    assert resumed.resumed_from_step == 2 and resumed.steps_run == STEPS - 2
    assert np.array_equal(resumed.frames, elsewhere.frames)
    if speed is Speed.FASTEST:
        # The schedule starts over at the checkpoint: 2 warm-up steps, then one in 2 of the other 4.
        tier = CATALOG["tiny-mochi"].speeds[speed]
        assert work[0] == len(transformer_blocks(tiny_generator.pipe.transformer)) * tier.full_steps(
            STEPS - 2
        )


def test_a_checkpoint_resumes_only_its_own_tier(tiny_generator: DiffusersGenerator) -> None:
    exact = make_request(num_inference_steps=STEPS, num_frames=7)
    rec = Recorder(raise_at=3, error=Cancelled())
    with pytest.raises(Cancelled):
        tiny_generator.generate(exact, checkpoint_every=2, **rec.callbacks())

    with pytest.raises(GenerationError) as info:
        tiny_generator.generate(
            exact.model_copy(update={"speed": Speed.FAST}),
            resume=rec.checkpoints[0],
            **Recorder().callbacks(),
        )
    assert info.value.code is ErrorCode.INTERNAL
    assert "made for another request" in info.value.message


def test_tiers_run_on_blocks_compiled_by_the_worker_setting(cpu_settings: EngineSettings) -> None:
    compiled = DiffusersGenerator(
        "tiny-mochi",
        cpu_settings.model_copy(update={"compile": CompileMode.BLOCKS, "compile_backend": "aot_eager"}),
    )
    compiled.load()

    fastest, work = _run(compiled, Speed.FASTEST)
    again, _ = _run(compiled, Speed.FASTEST)

    tier = CATALOG["tiny-mochi"].speeds[Speed.FASTEST]
    assert work == len(transformer_blocks(compiled.pipe.transformer)) * tier.full_steps(STEPS)
    assert np.array_equal(fastest, again)


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory, cpu_settings: EngineSettings) -> DiffusersGenerator:
    model_dir: Path = tmp_path_factory.mktemp("wan-models")
    _save_tiny_wan(model_dir / WAN)
    generator = build_generator(WAN, cpu_settings.model_copy(update={"model_dir": model_dir}))
    assert isinstance(generator, DiffusersGenerator)
    generator.load()
    return generator


def test_wan_tiers_skip_work_per_cfg_branch_and_are_deterministic(tiny_wan: DiffusersGenerator) -> None:
    size = {"model": WAN, "width": 32, "height": 32, "num_frames": 9}
    exact, exact_work = _run(tiny_wan, Speed.EXACT, **size)
    fastest, fastest_work = _run(tiny_wan, Speed.FASTEST, **size)
    again, _ = _run(tiny_wan, Speed.FASTEST, **size)
    fast, fast_work = _run(tiny_wan, Speed.FAST, **size)

    blocks = len(transformer_blocks(tiny_wan.pipe.transformer))
    assert exact_work == 2 * blocks * STEPS  # Wan runs the two CFG branches as two forward passes
    # Each branch keeps its own cache state (diffusers' cache contexts "cond" and "uncond").
    assert fastest_work == 2 * blocks * CATALOG[WAN].speeds[Speed.FASTEST].full_steps(STEPS)
    assert fast_work <= exact_work
    assert np.array_equal(fastest, again)
    assert not np.array_equal(fastest, exact)
    assert fast.shape == exact.shape


def test_the_simulated_generator_sleeps_a_tiers_expected_share_of_a_step() -> None:
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=1.0, sleep=sleep, clock=lambda: now[0])
    exact = generator.generate(make_request(num_inference_steps=4), **Recorder().callbacks())
    fastest = generator.generate(
        make_request(num_inference_steps=4, speed=Speed.FASTEST), **Recorder().callbacks()
    )

    assert exact.seconds_per_step == pytest.approx(1.0)
    ratio = CATALOG["tiny-mochi"].speeds[Speed.FASTEST].step_time_ratio
    assert fastest.seconds_per_step == pytest.approx(ratio)


class FakeTorchao:
    """Stands in for `torchao.quantization` (not installed here): `quantize_` marks the module it was
    given, or fails like a GPU without room when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.quantized: list[Any] = []

    class Float8DynamicActivationFloat8WeightConfig:
        pass

    def quantize_(self, module: Any, config: Any) -> None:
        if self.fail:
            raise RuntimeError("no room for the FP8 copy")
        self.quantized.append(module)


@pytest.fixture
def fp8_generator(
    cpu_settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> tuple[DiffusersGenerator, FakeTorchao]:
    """A generator whose tiers believe they are on an FP8 GPU with torchao, and compile with aot_eager."""
    fake = FakeTorchao()
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake)
    monkeypatch.setattr(SpeedTiers, "_fp8_blocker", lambda self, device: None)
    generator = DiffusersGenerator(
        "tiny-mochi", cpu_settings.model_copy(update={"compile_backend": "aot_eager"})
    )
    generator.load()
    return generator, fake


def test_fastest_swaps_in_one_fp8_transformer_for_its_calls_only(
    fp8_generator: tuple[DiffusersGenerator, FakeTorchao],
) -> None:
    generator, fake = fp8_generator
    original = generator.pipe.transformer
    exact, _ = _run(generator, Speed.EXACT)
    seen: list[Any] = []
    original_call = type(generator.pipe).__call__

    def spy(pipe: Any, **kwargs: Any) -> Any:
        seen.append(pipe.transformer)
        return original_call(pipe, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(generator.pipe), "__call__", spy)
        _run(generator, Speed.FASTEST)
        _run(generator, Speed.FASTEST)
        on_fp8 = generator.last_speed
        _run(generator, Speed.FAST)

    assert len(fake.quantized) == 1  # built once, on the first fastest job
    fp8 = fake.quantized[0]
    assert seen == [fp8, fp8, original]  # fastest ran on the copy, fast on the shared weights
    assert fp8 is not original and generator.pipe.transformer is original
    assert on_fp8 is not None and on_fp8.fp8 and on_fp8.compiled and on_fp8.skipped == ()
    applied = generator.last_speed
    assert applied is not None and applied.speed is Speed.FAST and not applied.fp8
    assert np.array_equal(_run(generator, Speed.EXACT)[0], exact)


def test_a_failed_fp8_build_is_logged_once_and_the_tier_runs_with_its_cache(
    fp8_generator: tuple[DiffusersGenerator, FakeTorchao], caplog: pytest.LogCaptureFixture
) -> None:
    generator, fake = fp8_generator
    fake.fail = True
    caplog.set_level(logging.INFO, logger="services.worker.engine.speed")

    _, work = _run(generator, Speed.FASTEST)
    _run(generator, Speed.FASTEST)

    applied = generator.last_speed
    assert applied is not None and not applied.fp8 and not applied.compiled
    reason = "FP8 weights skipped: building them failed (RuntimeError: no room for the FP8 copy)"
    assert applied.skipped[0] == reason
    assert [r.getMessage() for r in caplog.records].count(f"tiny-mochi: {reason}") == 1
    assert work == len(transformer_blocks(generator.pipe.transformer)) * CATALOG["tiny-mochi"].speeds[
        Speed.FASTEST
    ].full_steps(STEPS)


def test_a_cache_left_enabled_by_an_earlier_failure_does_not_block_the_next_tier(
    tiny_generator: DiffusersGenerator,
) -> None:
    expected, _ = _run(tiny_generator, Speed.FAST)
    transformer = tiny_generator.pipe.transformer
    stray = cache_config(CATALOG["tiny-mochi"].speeds[Speed.FASTEST])
    transformer.enable_cache(stray)  # as if a disable_cache had failed after a fastest job

    frames, _ = _run(tiny_generator, Speed.FAST)

    assert np.array_equal(frames, expected) and not transformer.is_cache_enabled
