"""Previews and input images in the attempt flow: stored, announced, droppable, never fatal."""

from __future__ import annotations

import io
import itertools
import uuid
from pathlib import Path

from PIL import Image

from schemas.events import ErrorCode, EventType, JobDispatched, JobEvent, JobFailed, JobPreview
from schemas.jobs import JobRequest, resolve
from services.common.errors import StorageUnavailable
from services.common.storage import ObjectMissing, input_image_key, preview_key
from services.worker.engine import SimulatedGenerator
from services.worker.runner import Backoff, JobRunner


class Store:
    """An S3 stand-in; keys containing `refuse` fail like an unreachable store."""

    def __init__(self, refuse: str | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.refuse = refuse

    def _check(self, key: str) -> None:
        if self.refuse is not None and self.refuse in key:
            raise StorageUnavailable(f"{key}: store is down")

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        self._check(key)
        self.objects[key] = Path(path).read_bytes()

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._check(key)
        self.objects[key] = data

    async def get_bytes(self, key: str) -> bytes:
        self._check(key)
        if key not in self.objects:
            raise ObjectMissing(key)
        return self.objects[key]

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [k for k in self.objects if k.startswith(prefix)]
        for key in doomed:
            del self.objects[key]
        return len(doomed)


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> object:
        self.events.append(event)
        return None


def dispatch(image_key: str | None = None) -> JobDispatched:
    request = resolve(JobRequest(prompt="a cat", model="tiny-mochi", quality="high", seed=3))
    return JobDispatched(
        job_id=uuid.uuid4(),
        producer="scheduler",
        attempt=1,
        slot=0,
        request=request.model_copy(update={"image_key": image_key}),
    )


def runner(
    tmp_path: Path,
    store: Store,
    publish: Recorder,
    generator: SimulatedGenerator,
    every: int,
    min_seconds: float = 0.0,
) -> JobRunner:
    return JobRunner(
        slot=0,
        generator=generator,
        store=store,
        publish=publish,
        scratch_dir=tmp_path,
        progress_interval=0.0,
        upload_retry_seconds=0.3,
        backoff=Backoff(first=0.01, cap=0.05),
        preview_every=every,
        preview_min_seconds=min_seconds,
    )


async def test_previews_are_stored_and_announced_before_the_end(tmp_path: Path) -> None:
    store, publish, job = Store(), Recorder(), dispatch()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.02)
    assert await runner(tmp_path, store, publish, generator, every=2).run(job) == "succeeded"
    previews = [e for e in publish.events if isinstance(e, JobPreview)]
    assert previews, "no job.preview"
    steps = [p.step for p in previews]
    # Droppable: one in flight at a time, so some may be skipped, but those sent are every 2nd step.
    assert all(step % 2 == 0 for step in steps) and steps == sorted(steps)
    for event in previews:
        assert event.preview_key == preview_key(job.job_id, 1, event.step)
        assert event.total_steps == job.request.num_inference_steps
        image = Image.open(io.BytesIO(store.objects[event.preview_key]))
        assert image.format == "JPEG" and image.size == (event.width, event.height)
    types = [e.type for e in publish.events]
    assert types[-1] is EventType.SUCCEEDED and types.index(EventType.PREVIEW) < len(types) - 1


async def test_previews_keep_their_minimum_interval_and_a_short_job_gets_none(tmp_path: Path) -> None:
    # 8 steps, a preview offered at each; the clock moves 0.05 s a reading (the start, then each offer),
    # so with 0.12 s between previews only steps 3 and 6 may go (6 is dropped if 3 is still on its way).
    store, publish = Store(), Recorder()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.01)
    job = runner(tmp_path, store, publish, generator, every=1, min_seconds=0.12)
    readings = itertools.count(1)
    job.artifacts.preview_clock = lambda: next(readings) * 0.05
    assert await job.run(dispatch()) == "succeeded"
    steps = [e.step for e in publish.events if isinstance(e, JobPreview)]
    assert steps and steps[0] == 3 and set(steps) <= {3, 6}, steps
    # A job over before the interval: no preview at all.
    store, publish = Store(), Recorder()
    job = runner(tmp_path, store, publish, generator, every=1, min_seconds=60)
    assert await job.run(dispatch()) == "succeeded"
    assert not any(isinstance(e, JobPreview) for e in publish.events)


async def test_no_previews_when_off(tmp_path: Path) -> None:
    store, publish = Store(), Recorder()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.01)
    assert await runner(tmp_path, store, publish, generator, every=0).run(dispatch()) == "succeeded"
    assert not any(isinstance(e, JobPreview) for e in publish.events)
    assert not any("preview" in key for key in store.objects)


async def test_a_failed_preview_upload_never_fails_the_job(tmp_path: Path) -> None:
    store, publish = Store(refuse="preview-step"), Recorder()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.01)
    assert await runner(tmp_path, store, publish, generator, every=1).run(dispatch()) == "succeeded"
    assert not any(isinstance(e, JobPreview) for e in publish.events)
    assert publish.events[-1].type is EventType.SUCCEEDED


async def test_the_input_image_reaches_the_generator(tmp_path: Path) -> None:
    store, publish = Store(), Recorder()
    job = dispatch(image_key=input_image_key(uuid.uuid4()))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="PNG")
    store.objects[str(job.request.image_key)] = buffer.getvalue()
    generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.0)
    assert await runner(tmp_path, store, publish, generator, every=0).run(job) == "succeeded"
    assert generator.last_image is not None and generator.last_image.size == (40, 30)
    assert generator.last_image.getpixel((0, 0)) == (200, 10, 10)


async def test_a_missing_or_unreadable_input_image_fails_the_job_for_good(tmp_path: Path) -> None:
    for stored, code in (
        (None, ErrorCode.INVALID_REQUEST),
        (b"not an image", ErrorCode.MODEL_REJECTED_INPUT),
    ):
        store, publish = Store(), Recorder()
        job = dispatch(image_key=input_image_key(uuid.uuid4()))
        if stored is not None:
            store.objects[str(job.request.image_key)] = stored
        generator = SimulatedGenerator("tiny-mochi", seconds_per_step=0.0)
        assert await runner(tmp_path, store, publish, generator, every=0).run(job) == "failed"
        failed = publish.events[-1]
        assert isinstance(failed, JobFailed) and failed.error.code is code and not failed.error.retryable
