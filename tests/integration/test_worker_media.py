"""A job's media in the real S3, made by the real engine on the CPU: previews while it denoises, the
thumbnail and spritesheet beside the video, and image-to-video from an uploaded image (tiny-wan-i2v)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

from schemas.events import EventType, JobDispatched, JobEvent, JobPreview, JobSucceeded
from schemas.jobs import JobRequest, resolve
from services.api.images import ImageRejected, image_from_upload, image_from_url
from services.common.settings import CommonSettings
from services.common.storage import Storage, input_image_key, job_prefix
from services.worker.engine import DiffusersGenerator, EngineSettings
from services.worker.runner import JobRunner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> object:
        self.events.append(event)
        return None


@pytest.fixture
async def storage(settings: CommonSettings) -> AsyncIterator[Storage]:
    async with Storage(settings) as store:
        yield store


@pytest.fixture(scope="module")
def engine_settings(tmp_path_factory: pytest.TempPathFactory) -> EngineSettings:
    cache = os.environ.get("REELSTREAM_TINY_CACHE_DIR")
    folder = Path(cache) if cache else tmp_path_factory.mktemp("tiny-models")
    return EngineSettings(device="cpu", tiny_cache_dir=folder)


def dispatch(
    request_body: JobRequest, image_key: str | None = None, job_id: uuid.UUID | None = None
) -> JobDispatched:
    return JobDispatched(
        job_id=job_id or uuid.uuid4(),
        producer="scheduler",
        attempt=1,
        slot=0,
        request=resolve(request_body, image_key=image_key),
    )


async def run(
    storage: Storage, tmp_path: Path, generator: DiffusersGenerator, job: JobDispatched
) -> Recorder:
    publish = Recorder()
    runner = JobRunner(
        slot=0,
        generator=generator,
        store=storage,
        publish=publish,
        scratch_dir=tmp_path,
        progress_interval=0.0,
        preview_every=1,
    )
    assert await runner.run(job) == "succeeded", publish.events[-1]
    return publish


async def head_type(storage: Storage, key: str) -> str:
    return (await storage.head(key)).content_type


async def test_previews_thumbnail_and_spritesheet_land_in_s3(
    storage: Storage, engine_settings: EngineSettings, tmp_path: Path
) -> None:
    generator = DiffusersGenerator("tiny-mochi", engine_settings)
    job = dispatch(JobRequest(prompt="a lighthouse in a storm", model="tiny-mochi", quality="low", seed=5))
    try:
        publish = await run(storage, tmp_path, generator, job)
        previews = [e for e in publish.events if isinstance(e, JobPreview)]
        assert previews, "no preview was announced"
        for preview in previews:
            image = Image.open(io.BytesIO(await storage.get_bytes(preview.preview_key)))
            assert image.format == "JPEG" and image.size == (preview.width, preview.height)
        result = next(e for e in publish.events if isinstance(e, JobSucceeded)).result
        assert result.thumbnail_key and result.spritesheet_key and result.spritesheet is not None
        for key in (result.poster_key, result.thumbnail_key, result.spritesheet_key):
            assert key is not None and await head_type(storage, key) == "image/jpeg"
        sheet = Image.open(io.BytesIO(await storage.get_bytes(result.spritesheet_key)))
        layout = result.spritesheet
        assert sheet.size == (layout.columns * layout.tile_width, layout.rows * layout.tile_height)
        assert publish.events[-1].type is EventType.SUCCEEDED
    finally:
        await storage.delete_prefix(job_prefix(job.job_id))


async def test_an_uploaded_image_becomes_a_video_on_the_cpu(
    storage: Storage, engine_settings: EngineSettings, tmp_path: Path
) -> None:
    job_id = uuid.uuid4()
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (230, 20, 20)).save(buffer, format="PNG")
    try:
        key = await image_from_upload(storage, job_id, buffer.getvalue(), "image/png", "input_reference")
        assert key == input_image_key(job_id) and await head_type(storage, key) == "image/png"
        body = JobRequest(
            prompt="a red kite", model="tiny-wan-i2v", image_url="https://images.example.com/kite.png", seed=2
        )
        generator = DiffusersGenerator("tiny-wan-i2v", engine_settings)
        publish = await run(storage, tmp_path, generator, dispatch(body, image_key=key, job_id=job_id))
        result = next(e for e in publish.events if isinstance(e, JobSucceeded)).result
        assert (result.width, result.height, result.frames) == (96, 64, 9)
        video = await storage.get_bytes(result.video_key)
        assert video[4:8] == b"ftyp"
        assert any(isinstance(e, JobPreview) for e in publish.events)
    finally:
        await storage.delete_prefix(job_prefix(job_id))


async def test_a_refused_image_url_stores_nothing(storage: Storage) -> None:
    job_id = uuid.uuid4()
    with pytest.raises(ImageRejected):
        await image_from_url(storage, job_id, "https://169.254.169.254/latest/meta-data/", "image_url")
    assert await storage.delete_prefix(job_prefix(job_id)) == 0
