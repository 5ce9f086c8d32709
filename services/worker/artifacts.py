"""What an attempt stores: its checkpoints while it denoises, then its video and poster.

Object keys come from `services.common.storage` only. Checkpoints are stored while denoising goes on
(at most one in flight, so they land in order); the encoded video waits on the scratch dir while its
upload is retried, so a storage outage costs a wait, not the GPU work.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Protocol

import PIL.Image

from schemas.events import ErrorCode, JobCheckpointed, JobDispatched, JobPreview, VideoResult
from schemas.jobs import Phase
from services.common import tracing
from services.common.errors import ReelstreamError, RetryableError
from services.common.runtime import retry
from services.common.storage import (
    ObjectMissing,
    attempt_prefix,
    checkpoint_key,
    checkpoint_prefix,
    poster_key,
    preview_key,
    spritesheet_key,
    thumbnail_key,
    video_key,
)
from services.worker.attempt import Attempt, Backoff, Superseded
from services.worker.engine.generator import GeneratedVideo, GenerationError, Preview, ResumeState
from services.worker.engine.preview import preview_jpeg
from services.worker.engine.video import encode_mp4, poster_jpeg, spritesheet_jpeg, thumbnail_jpeg
from services.worker.telemetry import CHECKPOINT_FAILURES, UPLOAD_FAILURES

log = logging.getLogger("reelstream.worker")
PREVIEW_UPLOAD_SECONDS: Final = 10.0
"""A preview that S3 has not taken by then is dropped: a newer one is on its way."""


class ArtifactStore(Protocol):
    async def put_file(self, key: str, path: str, content_type: str) -> None: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def delete_prefix(self, prefix: str) -> int: ...


class Artifacts:
    """The slot's checkpoints and results in the object store."""

    def __init__(
        self,
        store: ArtifactStore,
        scratch_dir: Path,
        *,
        checkpoint_every: int,
        checkpoint_min_seconds: float,
        upload_retry_seconds: float,
        backoff: Backoff,
        preview_min_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.scratch_dir = scratch_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_min_seconds = checkpoint_min_seconds
        self.upload_retry_seconds = upload_retry_seconds
        self.backoff = backoff
        self.preview_min_seconds = preview_min_seconds
        self.preview_clock: Callable[[], float] = time.monotonic

    # ---- the input image ------------------------------------------------------------------------------
    async def load_image(self, d: JobDispatched) -> PIL.Image.Image | None:
        """The input image of an image-to-video job (None for text-to-video). Missing: INVALID_REQUEST;
        unreadable: MODEL_REJECTED_INPUT; S3 away: the storage error stands (retryable)."""
        key = d.request.image_key
        if key is None:
            return None
        try:
            data = await retry("read input image", lambda: self.store.get_bytes(key))
        except ObjectMissing as e:
            raise GenerationError(ErrorCode.INVALID_REQUEST, f"the input image {key} is not stored") from e
        try:
            return await asyncio.to_thread(_decode_image, data)
        except (OSError, ValueError) as e:
            msg = f"the input image {key} is not a readable image: {e}"
            raise GenerationError(ErrorCode.MODEL_REJECTED_INPUT, msg) from e

    # ---- previews ------------------------------------------------------------------------------------
    def start_preview(self, attempt: Attempt, preview: Preview, loop: asyncio.AbstractEventLoop) -> None:
        """From the generation thread: store the preview and announce it (`job.preview`) while denoising
        goes on. Previews are droppable: while one is on its way, newer ones are skipped, and so is one
        within `preview_min_seconds` of the start of generation or of the last preview (a short job,
        over in seconds, gets none: it pays for no uploads and events nobody has time to look at)."""
        now = self.preview_clock()
        if now - attempt.previewed_at < self.preview_min_seconds:
            return
        if attempt.previewing is not None and not attempt.previewing.done():
            log.debug(
                "job=%s: preview of step %d skipped, the previous one is on its way",
                attempt.job_id,
                preview.step,
            )
            return
        attempt.previewed_at = now
        attempt.previewing = asyncio.run_coroutine_threadsafe(self._save_preview(attempt, preview), loop)

    async def _save_preview(self, attempt: Attempt, preview: Preview) -> None:
        """One try to store and announce a preview; any failure is logged and never fails the job."""
        d = attempt.dispatch
        key = preview_key(d.job_id, d.attempt, preview.step)
        try:
            data = await asyncio.to_thread(preview_jpeg, preview.image)
            async with asyncio.timeout(PREVIEW_UPLOAD_SECONDS):
                await self.store.put_bytes(key, data, "image/jpeg")
            await attempt.emit_droppable(
                JobPreview,
                step=preview.step,
                total_steps=preview.total_steps,
                preview_key=key,
                width=preview.width,
                height=preview.height,
            )
        except Exception as e:  # a preview is a nicety: whatever went wrong, the job goes on
            log.warning(
                "job=%s: preview of step %d dropped: %s: %s", d.job_id, preview.step, type(e).__name__, e
            )

    # ---- checkpoints -------------------------------------------------------------------------------
    async def load_resume(self, d: JobDispatched) -> ResumeState | None:
        """The checkpoint the dispatch resumes from; none (start over) when it cannot be read."""
        if d.resume_checkpoint is None:
            return None
        try:
            data = await retry("read checkpoint", lambda: self.store.get_bytes(str(d.resume_checkpoint)))
            state = await asyncio.to_thread(ResumeState.from_bytes, data)
        except (ReelstreamError, ValueError) as e:
            log.warning("job=%s starts over: checkpoint %s unusable: %s", d.job_id, d.resume_checkpoint, e)
            return None
        log.info("job=%s attempt=%d resumes at step %d", d.job_id, d.attempt, state.step)
        return state

    def checkpoint_wanted(self, attempt: Attempt, step: int) -> bool:
        """The one the attempt stops at (a preemption, a shutdown), at the first step it can; otherwise
        every `checkpoint_every` steps, but not within `checkpoint_min_seconds` of the attempt's start
        or its last checkpoint: re-running that little work after a crash costs less than storing,
        announcing and deleting a checkpoint for every job."""
        if attempt.drain.is_set() or (attempt.preempt_at is not None and step >= attempt.preempt_at):
            return True
        if step % self.checkpoint_every:
            return False
        return time.monotonic() - attempt.unsaved_since >= self.checkpoint_min_seconds

    def start_checkpoint(self, attempt: Attempt, state: ResumeState, loop: asyncio.AbstractEventLoop) -> None:
        """From the generation thread: store `state` while denoising goes on, once the previous
        checkpoint has landed (they land in order)."""
        attempt.unsaved_since, attempt.stored_checkpoints = time.monotonic(), True
        self.settle(attempt)
        attempt.saving = asyncio.run_coroutine_threadsafe(self._save_checkpoint(attempt, state), loop)

    async def _save_checkpoint(self, attempt: Attempt, state: ResumeState) -> int:
        d = attempt.dispatch
        key = checkpoint_key(d.job_id, d.attempt, state.step)
        parent = attempt.phases.context() if attempt.phases is not None else None
        with tracing.span(
            "worker", "worker.checkpoint", parent=parent, attributes={"reelstream.step": state.step}
        ):
            data = await asyncio.to_thread(state.to_bytes)
            await retry(
                "save checkpoint", lambda: self.store.put_bytes(key, data, "application/octet-stream")
            )
            await attempt.emit(
                JobCheckpointed, step=state.step, total_steps=state.total_steps, checkpoint_key=key
            )
        return state.step

    @staticmethod
    def settle(attempt: Attempt) -> None:
        """Wait (on a thread, never the loop) for the checkpoint in flight, if any."""
        saving, attempt.saving = attempt.saving, None
        if saving is None:
            return
        try:
            attempt.last_checkpoint_step = saving.result(timeout=120)
        except (RetryableError, TimeoutError) as e:
            CHECKPOINT_FAILURES.inc()
            log.warning("a checkpoint of job=%s was not saved: %s", attempt.job_id, e)

    async def settled(self, attempt: Attempt) -> None:
        """From the event loop: wait for the checkpoint in flight, if any."""
        if attempt.saving is not None:
            await asyncio.to_thread(self.settle, attempt)

    async def delete_checkpoints(self, attempt: Attempt) -> None:
        """Delete every attempt's checkpoints; a first attempt that stored none has none to delete."""
        if attempt.dispatch.attempt == 1 and not attempt.stored_checkpoints:
            return
        try:
            await self.store.delete_prefix(checkpoint_prefix(attempt.job_id))
        except RetryableError as e:
            log.warning("checkpoints of job=%s not deleted: %s", attempt.job_id, e)

    # ---- the result ------------------------------------------------------------------------------------
    async def store_video(self, attempt: Attempt, video: GeneratedVideo) -> VideoResult:
        """Encode the MP4, render the poster, thumbnail and spritesheet, and upload them under the
        attempt's keys."""
        d = attempt.dispatch
        attempt.offer(Phase.ENCODING_VIDEO)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        path = self.scratch_dir / f"{d.job_id}-attempt-{d.attempt}.mp4"
        try:
            await asyncio.to_thread(encode_mp4, video.frames, video.fps, path)
            poster = await asyncio.to_thread(poster_jpeg, video.frames)
            thumbnail = await asyncio.to_thread(thumbnail_jpeg, video.frames)
            sheet, layout = await asyncio.to_thread(spritesheet_jpeg, video.frames)
            tkey, skey = thumbnail_key(d.job_id, d.attempt), spritesheet_key(d.job_id, d.attempt)
            attempt.offer(Phase.UPLOADING)
            vkey, pkey = video_key(d.job_id, d.attempt), poster_key(d.job_id, d.attempt)
            if attempt.superseded.is_set():
                raise Superseded("superseded before its upload")
            deadline = asyncio.get_running_loop().time() + self.upload_retry_seconds
            await self._upload(attempt, deadline, lambda: self.store.put_file(vkey, str(path), "video/mp4"))
            await self._upload(attempt, deadline, lambda: self.store.put_bytes(pkey, poster, "image/jpeg"))
            await self._upload(attempt, deadline, lambda: self.store.put_bytes(tkey, thumbnail, "image/jpeg"))
            await self._upload(attempt, deadline, lambda: self.store.put_bytes(skey, sheet, "image/jpeg"))
            if attempt.superseded.is_set():  # told during the upload: take back what this attempt stored
                await self.store.delete_prefix(attempt_prefix(d.job_id, d.attempt))
                raise Superseded("superseded during its upload")
            frames, height, width = video.frames.shape[0], video.frames.shape[1], video.frames.shape[2]
            return VideoResult(
                video_key=vkey,
                poster_key=pkey,
                size_bytes=path.stat().st_size,
                width=width - width % 2,
                height=height - height % 2,
                fps=video.fps,
                frames=frames,
                duration_seconds=frames / video.fps,
                thumbnail_key=tkey,
                spritesheet_key=skey,
                spritesheet=layout,
            )
        finally:
            path.unlink(missing_ok=True)

    async def _upload(self, attempt: Attempt, deadline: float, put: Callable[[], Awaitable[None]]) -> None:
        """Store one artifact, retried with backoff until `deadline` (loop time). The encoded video waits
        on the scratch dir and the slot denoises its next job meanwhile. Past the deadline the storage
        error stands (the job fails, retryable)."""
        loop, delays = asyncio.get_running_loop(), self.backoff.delays()
        while True:
            try:
                await put()
                return
            except RetryableError as e:
                UPLOAD_FAILURES.inc()
                left = deadline - loop.time()
                if left <= 0:
                    raise
                if attempt.superseded.is_set():
                    raise Superseded("superseded while its upload was retried") from e
                delay = min(next(delays), left)
                log.warning(
                    "job=%s: upload failed, retrying in %.1f s (%.0f s left): %s",
                    attempt.job_id,
                    delay,
                    left,
                    e,
                )
            attempt.offer(Phase.UPLOADING)  # the job is still uploading, not stuck
            await asyncio.sleep(delay)


def _decode_image(data: bytes) -> PIL.Image.Image:
    """The input image as RGB, fully read (PIL reads lazily)."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
