"""The simulated generator: real callbacks and checkpoints, sleeps for work."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.events import ErrorCode
from schemas.jobs import Phase
from services.worker.engine import (
    Cancelled,
    EngineSettings,
    GenerationError,
    ResumeState,
    SimulatedGenerator,
    build_generator,
)

from .conftest import Recorder, make_request


class FakeClock:
    """Time that moves only when the generator sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _simulated(clock: FakeClock, **kwargs: object) -> SimulatedGenerator:
    return SimulatedGenerator("tiny-mochi", sleep=clock.sleep, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_sleeps_per_step_and_reports_like_the_real_engine() -> None:
    clock = FakeClock()
    generator = _simulated(clock, seconds_per_step=2.0, load_seconds=5.0, decode_seconds=1.0)
    rec = Recorder()

    video = generator.generate(make_request(), **rec.callbacks())

    assert rec.phases == [Phase.LOADING, Phase.ENCODING_PROMPT, Phase.DENOISING, Phase.DECODING]
    assert [(s.step, s.total_steps, s.seconds_per_step) for s in rec.steps] == [
        (1, 4, 2.0), (2, 4, 2.0), (3, 4, 2.0), (4, 4, 2.0)
    ]  # fmt: skip
    assert video.frames.shape == (13, 64, 96, 3)
    assert video.frames.dtype == np.uint8
    assert video.generation_seconds == pytest.approx(5.0 + 4 * 2.0 + 1.0)
    assert video.phase_seconds[Phase.DENOISING] == pytest.approx(8.0)


def test_seconds_per_step_can_change_between_jobs() -> None:
    clock = FakeClock()
    generator = _simulated(clock, seconds_per_step=1.0)
    generator.seconds_per_step = 0.25
    rec = Recorder()

    generator.generate(make_request(num_inference_steps=2), **rec.callbacks())

    assert rec.steps[-1].seconds_per_step == pytest.approx(0.25)


class LateClock(FakeClock):
    """Every sleep wakes `late` seconds after it was due (a busy host, the interpreter lock)."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds + self.late)


@pytest.mark.parametrize(("discount", "denoising"), [(True, 4 * 1.0 + 0.1), (False, 4 * 1.1)])
def test_late_wake_ups_do_not_add_up_as_step_time(discount: bool, denoising: float) -> None:
    """Only the last wake-up's lateness shows: the others fall inside the next step, as they would
    behind a GPU's step. Without the discount every one of them stretches the run."""
    clock = LateClock(late=0.1)
    generator = _simulated(clock, seconds_per_step=1.0, discount_wakeups=discount)
    rec = Recorder()

    video = generator.generate(make_request(), **rec.callbacks())

    assert video.phase_seconds[Phase.DENOISING] == pytest.approx(denoising)


def test_time_in_the_step_callbacks_delays_the_steps_after_them() -> None:
    """The engine waits for each step before its callbacks: a callback that holds the thread (a
    checkpoint waiting for the one before it) is time the next step has not begun."""
    clock = FakeClock()
    generator = _simulated(clock, seconds_per_step=1.0)
    rec = Recorder()
    callbacks = rec.callbacks()
    record_step = callbacks["on_step"]

    def slow_step(info: object) -> None:
        record_step(info)
        clock.now += 0.5

    callbacks["on_step"] = slow_step
    video = generator.generate(make_request(), **callbacks)

    assert video.phase_seconds[Phase.DENOISING] == pytest.approx(4 * 1.5)


def test_cancel_then_resume_gives_the_uninterrupted_frames() -> None:
    clock = FakeClock()
    reference = _simulated(clock).generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)
    rec = Recorder(raise_at=3, error=Cancelled())
    with pytest.raises(Cancelled):
        _simulated(clock).generate(make_request(), checkpoint_every=2, **rec.callbacks())
    assert Phase.DECODING not in rec.phases

    state = ResumeState.from_bytes(rec.checkpoints[-1].to_bytes())
    resumed = _simulated(clock).generate(
        make_request(), resume=state, on_phase=lambda _: None, on_step=lambda _: None
    )

    assert np.array_equal(resumed.frames, reference.frames)
    assert (resumed.steps_run, resumed.resumed_from_step) == (2, 2)


def test_a_rehearsed_failure_is_a_generation_error() -> None:
    generator = _simulated(FakeClock(), fail_at_step=2, fail_code=ErrorCode.OUT_OF_MEMORY)

    with pytest.raises(GenerationError) as raised:
        generator.generate(make_request(), on_phase=lambda _: None, on_step=lambda _: None)

    assert raised.value.code is ErrorCode.OUT_OF_MEMORY


def test_the_factory_builds_it_when_settings_say_simulate() -> None:
    generator = build_generator(
        "mochi-1-preview", EngineSettings(simulate=True, simulated_seconds_per_step=0.0)
    )

    assert isinstance(generator, SimulatedGenerator)
    assert generator.model_name == "mochi-1-preview"
