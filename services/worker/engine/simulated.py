"""A generator that sleeps instead of computing: same interface and callbacks, synthetic frames.

For fleet and runner tests where the GPU's timing matters but its output does not. Its "latents" are a
small tensor that each step changes deterministically, so checkpoints and resumes behave like the real
engine's (a resumed run returns the same frames as an uninterrupted one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch

from schemas.catalog import CATALOG
from schemas.events import ErrorCode
from schemas.jobs import Phase, ResolvedRequest
from services.worker.engine.generator import (
    CheckpointCallback,
    Frames,
    GeneratedVideo,
    GenerationError,
    PhaseCallback,
    ResumeState,
    StepCallback,
    request_fingerprint,
)
from services.worker.engine.progress import CallerError, StepTracker
from services.worker.engine.resume import check_resume


def _step_time_ratio(request: ResolvedRequest) -> float:
    """A speed tier's expected step time over exact's, from the catalog (1 for exact)."""
    spec = CATALOG.get(request.model)
    tier = spec.speed_tier(request.speed) if spec is not None else None
    return tier.step_time_ratio if tier is not None else 1.0


class SimulatedGenerator:
    """Sleeps `seconds_per_step` per step (settable between jobs) and emits the real callbacks.

    `seconds_per_step` is exact's: a job of another speed tier sleeps that times the tier's expected
    step-time ratio from the catalog, as the scheduler assumes until it has measured the tier.

    A step lasts `seconds_per_step` from the end of the previous step's callbacks, as on a GPU where
    the engine waits for each step: time spent in the callbacks (a checkpoint waiting for the one
    before it) delays the steps after it. With `discount_wakeups` (the default) the lateness of the
    sleep's own wake-up is not counted as step time: on a loaded host the thread may wait a few ms for
    the interpreter lock, nothing next to an H100's ~1 s step but a quarter of a step scaled down 50
    times, so over a benchmark it would pass for GPU time.

    `fail_at_step` with `fail_code` raises that `GenerationError` after the given step, to rehearse
    failures. Frames are `frame_height` x `frame_width` (small by default), whatever the request's size.
    """

    supports_resume = True

    def __init__(
        self,
        model_name: str,
        *,
        seconds_per_step: float = 0.5,
        load_seconds: float = 0.0,
        encode_prompt_seconds: float = 0.0,
        decode_seconds: float = 0.0,
        frame_height: int = 64,
        frame_width: int = 96,
        fail_at_step: int | None = None,
        fail_code: ErrorCode = ErrorCode.OUT_OF_MEMORY,
        discount_wakeups: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model_name = model_name
        self.seconds_per_step = seconds_per_step
        self.load_seconds = load_seconds
        self.encode_prompt_seconds = encode_prompt_seconds
        self.decode_seconds = decode_seconds
        self.frame_height = frame_height
        self.frame_width = frame_width
        self.fail_at_step = fail_at_step
        self.fail_code = fail_code
        self.discount_wakeups = discount_wakeups
        self._sleep = sleep
        self._clock = clock
        self.loaded = False
        self.last_image: PIL.Image.Image | None = None  # the input image of the last call (tests)

    def load(self) -> None:
        """Pretend to load weights (sleeps `load_seconds` once)."""
        if not self.loaded:
            self._pause(self.load_seconds)
            self.loaded = True

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
        """Same contract as `DiffusersGenerator.generate`, with sleeps for the work; a preview is a small
        tint of the latents; an input image is only recorded (`last_image`)."""
        self.last_image = image
        started = self._clock()
        tracker = StepTracker(
            total_steps=request.num_inference_steps,
            start_step=check_resume(resume, request) if resume is not None else 0,
            fingerprint=request_fingerprint(request),
            model=self.model_name,
            on_phase=on_phase,
            on_step=on_step,
            checkpoint_every=checkpoint_every,
            on_checkpoint=on_checkpoint,
            clock=self._clock,
            preview_every=preview_every,
            project=self._project,
        )
        try:
            frames = self._run(request, tracker, resume)
        except CallerError as e:
            original = e.original
        else:
            return tracker.video(frames, request.fps, self._clock() - started)
        raise original

    def _run(self, request: ResolvedRequest, tracker: StepTracker, resume: ResumeState | None) -> Frames:
        if not self.loaded:
            tracker.phase(Phase.LOADING)
            self.load()
        tracker.phase(Phase.ENCODING_PROMPT)
        self._pause(self.encode_prompt_seconds)
        latents = resume.latents.clone() if resume is not None else _initial_latents(request.seed)
        tracker.phase(Phase.DENOISING)
        late = 0.0  # how late the last wake-up was, at most a step
        per_step = self.seconds_per_step * _step_time_ratio(request)
        for step in range(tracker.start_step + 1, request.num_inference_steps + 1):
            due = self._clock() + per_step - late
            self._pause(due - self._clock())
            if self.discount_wakeups:
                late = min(per_step, max(0.0, self._clock() - due))
            latents = latents * 0.5 + step
            if self.fail_at_step == step:
                raise GenerationError(self.fail_code, f"simulated {self.fail_code} at step {step}")
            tracker.step_done(latents)
        self._pause(self.decode_seconds)
        frames = self._frames(request.num_frames, latents)
        tracker.finish()
        return frames

    def _pause(self, seconds: float) -> None:
        """Sleep for the simulated work, and not at all for none: on a loaded host even `sleep(0)` gives
        the core away and may get it back milliseconds later."""
        if seconds > 0:
            self._sleep(seconds)

    def _project(self, latents: torch.Tensor) -> Frames:
        """The simulated latents as an 8x12 RGB image of one colour."""
        tint = int(latents.abs().sum().item() * 997) % 256
        return np.full((8, 12, 3), (tint, 255 - tint, 128), dtype=np.uint8)

    def _frames(self, count: int, latents: torch.Tensor) -> Frames:
        """A moving diagonal gradient whose colour comes from the final latents."""
        rows = np.arange(self.frame_height, dtype=np.int64)[:, None]
        cols = np.arange(self.frame_width, dtype=np.int64)[None, :]
        tint = (latents.abs().sum().item() * 997) % 256
        frames = np.empty((count, self.frame_height, self.frame_width, 3), dtype=np.uint8)
        for index in range(count):
            frames[index, ..., 0] = (rows * 4 + index * 8) % 256
            frames[index, ..., 1] = (cols * 3 + index * 5) % 256
            frames[index, ..., 2] = int(tint)
        return frames


def _initial_latents(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 2, 2, generator=torch.Generator("cpu").manual_seed(seed))
