"""The production generator: one diffusers text-to-video pipeline, loaded once, run one job at a time."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import PIL.Image
import torch

from schemas.catalog import CATALOG
from schemas.events import ErrorCode
from schemas.jobs import Phase, ResolvedRequest
from services.worker.engine import loading, memory
from services.worker.engine.generator import (
    CheckpointCallback,
    EngineSettings,
    Frames,
    GeneratedVideo,
    GenerationError,
    PhaseCallback,
    ResumeState,
    StepCallback,
    request_fingerprint,
)
from services.worker.engine.preview import enlarged, latents_to_rgb
from services.worker.engine.progress import CallerError, StepTracker
from services.worker.engine.resume import check_resume, schedule_hook, scheduler_resumable
from services.worker.engine.speed import AppliedSpeed, SpeedTiers

log = logging.getLogger(__name__)

PipelineLoader = Callable[[], Any]
"""Builds a ready pipeline in place of loading catalog weights: the GPU benchmark passes one that builds
full-size random weights on the GPU."""


class DiffusersGenerator:
    """Runs a diffusers video pipeline behind the `Generator` interface.

    `load()` resolves the weights (see `loading`), places the pipeline per the memory mode, and compiles
    blocks if asked. `generate()` loads lazily if `load()` was not called.
    """

    def __init__(
        self, model_name: str, settings: EngineSettings, *, loader: PipelineLoader | None = None
    ) -> None:
        self.model_name = model_name
        self.settings = settings
        self.source = loading.source_for(model_name)
        self._loader = loader
        self._pipe: Any = None
        self._image: PIL.Image.Image | None = None  # the input image of the call under way
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.speeds = SpeedTiers(model_name, settings)
        self.last_speed: AppliedSpeed | None = None
        """What the last `generate()` ran with: its speed tier's recipe and the parts that applied."""

    @property
    def pipe(self) -> Any:
        """The loaded diffusers pipeline (loads it on first use)."""
        if self._pipe is None:
            self.load()
        return self._pipe

    @property
    def supports_resume(self) -> bool:
        """True when the noise scheduler's state is only the latents (first-order flow matching)."""
        return scheduler_resumable(self.pipe.scheduler)

    def load(self) -> None:
        """Load, place and optionally compile the pipeline. Idempotent."""
        if self._pipe is not None:
            return
        self.device = memory.resolve_device(self.settings)
        self.dtype = memory.resolve_dtype(self.settings, self.device)
        pipe: Any = None
        try:
            pipe = self._loader() if self._loader is not None else self._from_disk()
            memory.place(pipe, self.settings, self.device)
        except torch.OutOfMemoryError as e:
            pipe = None  # this frame outlives the raise (it is in the traceback): drop the weights now
            _drop_frames(e)
            memory.free_memory(self.device)
            msg = f"{self.model_name} does not fit on {self.device} with offload {self.settings.offload}: {e}"
            raise GenerationError(ErrorCode.OUT_OF_MEMORY, msg) from e
        memory.compile_blocks(pipe, self.settings)
        pipe.set_progress_bar_config(disable=True)  # progress goes out through on_step instead
        self._pipe = pipe

    def _from_disk(self) -> Any:
        folder = loading.locate(self.source, self.settings)
        return loading.load_pipeline(self.source, folder, self.settings, self.dtype)

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
        """Generate `request` into decoded frames.

        Phases go out as they start: `loading` (only if not loaded yet), `encoding_prompt`, `denoising`,
        `decoding`; the caller does `encoding_video`. After each step: a checkpoint when
        `checkpoint_every` divides the step (not after the last) and the noise scheduler can resume, then
        `on_step`. Raising `Cancelled` from a callback stops at once, without decoding; the pipeline stays
        usable. `resume` continues from a checkpoint of the same request, bit-identically to an
        uninterrupted run on the same device and dtype. Failures are `GenerationError` (OUT_OF_MEMORY,
        MODEL_REJECTED_INPUT, MODEL_UNAVAILABLE, INTERNAL); exceptions from the caller's callbacks pass
        through unchanged. Every `preview_every` steps the `StepInfo` carries a `Preview` of the latents
        (no VAE). `image` is the first frame of an image-to-video request; an image-to-video model
        without one, or an image for a text-to-video model, is MODEL_REJECTED_INPUT.
        """
        self._check_image(request, image)
        self._image = image
        started = time.perf_counter()
        tracker = StepTracker(
            total_steps=request.num_inference_steps,
            start_step=0,
            fingerprint=request_fingerprint(request),
            model=self.model_name,
            on_phase=on_phase,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            sync=self._sync,
            preview_every=preview_every,
            project=self._project,
        )
        try:
            frames = self._generate(request, tracker, resume, checkpoint_every)
        except CallerError as e:
            _drop_frames(e)
            original = e.original
        else:
            return tracker.video(frames, request.fps, time.perf_counter() - started)
        # Outside the handler, so the caller's exception does not carry the engine's wrapper as context.
        raise original

    def _generate(
        self,
        request: ResolvedRequest,
        tracker: StepTracker,
        resume: ResumeState | None,
        checkpoint_every: int,
    ) -> Frames:
        if self._pipe is None:
            tracker.phase(Phase.LOADING)
            self.load()
        resumable = self.supports_resume
        start_step = check_resume(resume, request) if resume is not None else 0
        if start_step and not resumable:
            log.warning("%s cannot resume with its noise scheduler; starting over", self.model_name)
            start_step = 0
        tracker.set_run(start_step=start_step, checkpoint_every=checkpoint_every if resumable else 0)
        tracker.phase(Phase.ENCODING_PROMPT)
        frames = self._run(request, resume if start_step else None, tracker)
        tracker.finish()
        return frames

    def _check_image(self, request: ResolvedRequest, image: PIL.Image.Image | None) -> None:
        takes_image = CATALOG[self.model_name].image_to_video
        if takes_image and image is None:
            msg = f"{self.model_name} makes video from an input image; the request has none"
            raise GenerationError(ErrorCode.MODEL_REJECTED_INPUT, msg)
        if not takes_image and (image is not None or request.image_key is not None):
            msg = f"{self.model_name} does not take an input image"
            raise GenerationError(ErrorCode.MODEL_REJECTED_INPUT, msg)

    def _project(self, latents: torch.Tensor) -> Frames:
        """A preview of `latents` with the family's latent-to-RGB factors."""
        return enlarged(latents_to_rgb(latents, CATALOG[self.model_name].family))

    def _sync(self) -> None:
        # Steps are queued asynchronously on a GPU; waiting here makes step times real, and costs only
        # the launch gap of one step (a few ms on a ~1 s step).
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run(self, request: ResolvedRequest, resume: ResumeState | None, tracker: StepTracker) -> Frames:
        pipe = self.pipe
        kwargs = self._call_kwargs(request, resume, tracker)
        try:
            with (
                self.speeds.applied(pipe, request.speed, self.device) as applied,
                schedule_hook(
                    pipe.scheduler,
                    skip_steps=tracker.start_step,
                    on_set=lambda: tracker.phase(Phase.DENOISING),
                ),
            ):
                self.last_speed = applied
                output = pipe(**kwargs)
            return to_uint8_frames(output.frames)
        except (CallerError, GenerationError):
            raise
        except torch.OutOfMemoryError as e:
            _drop_frames(e)
            memory.free_memory(self.device)
            raise GenerationError(ErrorCode.OUT_OF_MEMORY, f"{self.model_name}: out of memory: {e}") from e
        except ValueError as e:  # diffusers' check_inputs
            raise GenerationError(ErrorCode.MODEL_REJECTED_INPUT, f"{self.model_name}: {e}") from e
        except Exception as e:
            raise GenerationError(ErrorCode.INTERNAL, f"{self.model_name}: {type(e).__name__}: {e}") from e

    def _call_kwargs(
        self, request: ResolvedRequest, resume: ResumeState | None, tracker: StepTracker
    ) -> dict[str, Any]:
        def on_step_end(_pipe: Any, _index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            tracker.step_done(tensors["latents"])
            return {}

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "height": request.height,
            "width": request.width,
            "num_frames": request.num_frames,
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            # A CPU generator gives the same initial noise on every device, so a seed means one video.
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            "output_type": "pt",
            "callback_on_step_end": on_step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
            **self.source.call_kwargs,
        }
        if resume is not None:
            kwargs["latents"] = resume.latents
        if self._image is not None:
            kwargs["image"] = self._image
        return kwargs


def to_uint8_frames(video: torch.Tensor) -> Frames:
    """(1, F, C, H, W) floats in [0, 1] -> (F, H, W, C) uint8, converted on the device before the copy."""
    if video.ndim != 5 or video.shape[0] != 1:
        raise GenerationError(ErrorCode.INTERNAL, f"unexpected pipeline output shape {tuple(video.shape)}")
    as_bytes = (video[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    frames: Frames = as_bytes.contiguous().cpu().numpy()
    return frames


def _drop_frames(error: BaseException) -> None:
    # The traceback holds the pipeline's frames and so its tensors (latents, activations); clearing their
    # locals lets the memory go now instead of when the caller drops the exception.
    traceback.clear_frames(error.__traceback__)
    if error.__cause__ is not None:
        traceback.clear_frames(error.__cause__.__traceback__)
