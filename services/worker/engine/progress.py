"""Step bookkeeping shared by the generators: phases, step timing, checkpoints, caller callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from schemas.jobs import Phase
from services.worker.engine.generator import (
    CheckpointCallback,
    Frames,
    GeneratedVideo,
    PhaseCallback,
    Preview,
    ResumeState,
    StepCallback,
    StepInfo,
)

_T = TypeVar("_T")
log = logging.getLogger(__name__)
Projector = Callable[[torch.Tensor], Frames]
"""Latents to a small RGB image (see `preview.py`)."""


class CallerError(Exception):
    """Wraps an exception raised by one of the caller's callbacks so the engine passes it on unchanged."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class StepTracker:
    """Turns "step i of this call finished" into phases, `StepInfo`, and checkpoints, in that order.

    Order at a step: the checkpoint (if due) goes out before `on_step`, so a cancel raised from `on_step`
    at a checkpoint step still leaves that checkpoint behind. Time spent in the caller's callbacks is kept
    out of `seconds_per_step`.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        start_step: int,
        fingerprint: str,
        model: str,
        on_phase: PhaseCallback,
        on_step: StepCallback,
        checkpoint_every: int = 0,
        on_checkpoint: CheckpointCallback | None = None,
        sync: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.perf_counter,
        preview_every: int = 0,
        project: Projector | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self._fingerprint = fingerprint
        self._model = model
        self._on_phase = on_phase
        self._on_step = on_step
        self._every = checkpoint_every if on_checkpoint is not None else 0
        self._on_checkpoint = on_checkpoint
        self._sync = sync
        self._clock = clock
        self._preview_every = preview_every if project is not None else 0
        self._project = project
        self.phase_seconds: dict[Phase, float] = {}
        self._phase: Phase | None = None
        self._phase_started = clock()
        self._denoise_started = 0.0
        self._callback_seconds = 0.0
        self.steps_run = 0
        self.seconds_per_step = 0.0

    def set_run(self, *, start_step: int, checkpoint_every: int) -> None:
        """Set where the run starts and how often it checkpoints, once the model is loaded."""
        self.start_step = start_step
        self._every = checkpoint_every if self._on_checkpoint is not None else 0

    def phase(self, phase: Phase) -> None:
        """Enter `phase`: close the running one's timer and tell the caller."""
        now = self._clock()
        if self._phase is not None:
            self.phase_seconds[self._phase] = (
                self.phase_seconds.get(self._phase, 0.0) + now - self._phase_started
            )
        self._phase, self._phase_started = phase, now
        if phase is Phase.DENOISING:
            self._denoise_started, self._callback_seconds = now, 0.0
        self._call(self._on_phase, phase)

    def finish(self) -> None:
        """Close the last phase's timer."""
        now = self._clock()
        if self._phase is not None:
            self.phase_seconds[self._phase] = (
                self.phase_seconds.get(self._phase, 0.0) + now - self._phase_started
            )
        self._phase = None

    def video(self, frames: Frames, fps: int, generation_seconds: float) -> GeneratedVideo:
        """The finished result, with this run's step and phase accounting."""
        return GeneratedVideo(
            frames=frames,
            fps=fps,
            generation_seconds=generation_seconds,
            steps_run=self.steps_run,
            resumed_from_step=self.start_step,
            seconds_per_step=self.seconds_per_step,
            phase_seconds=dict(self.phase_seconds),
        )

    def step_done(self, latents: torch.Tensor) -> None:
        """Record one finished step; `latents` are the latents after it (copied only for a checkpoint)."""
        self._sync()
        self.steps_run += 1
        step = self.start_step + self.steps_run
        elapsed = self._clock() - self._denoise_started - self._callback_seconds
        self.seconds_per_step = elapsed / self.steps_run
        callbacks_started = self._clock()
        try:
            if self._every > 0 and step % self._every == 0 and step < self.total_steps:
                self._checkpoint(step, latents)
            preview = self._preview(step, latents)
            self._call(self._on_step, StepInfo(step, self.total_steps, self.seconds_per_step, preview))
        finally:
            self._callback_seconds += self._clock() - callbacks_started
        if step >= self.total_steps:
            self.phase(Phase.DECODING)

    def _preview(self, step: int, latents: torch.Tensor) -> Preview | None:
        """The preview due at `step`, if any; one that cannot be made is skipped, never an error."""
        if self._project is None or self._preview_every <= 0 or step % self._preview_every:
            return None
        try:
            return Preview(step, self.total_steps, self._project(latents))
        except Exception as e:
            log.warning("no preview at step %d: %s: %s", step, type(e).__name__, e)
            return None

    def _checkpoint(self, step: int, latents: torch.Tensor) -> None:
        assert self._on_checkpoint is not None  # _every > 0 implies it
        state = ResumeState(
            step=step,
            total_steps=self.total_steps,
            latents=latents.detach().to("cpu", copy=True),
            fingerprint=self._fingerprint,
            model=self._model,
        )
        self._call(self._on_checkpoint, state)

    @staticmethod
    def _call(callback: Callable[[_T], None], value: _T) -> None:
        try:
            callback(value)
        except Exception as e:
            raise CallerError(e) from e
