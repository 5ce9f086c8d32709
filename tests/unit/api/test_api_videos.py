"""/v1/videos, the OpenAI-style facade: the mapping of OpenAI's fields onto the job request, the Video
object built from a job, and the official `openai` client creating a video against the app (a fake
publisher stands in for Kafka; no database is read on that path)."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import httpx2
import openai
import PIL.Image
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.catalog import CATALOG, DEFAULT_MODEL
from schemas.events import ErrorCode, JobError, JobRequested, TenantLimits
from schemas.jobs import JobRequest, JobStatus, Phase, resolve
from services.api.admission import QueueDepth
from services.api.auth import StaticKeys
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import Ack, JobPublisher
from services.api.routes.videos import (
    InvalidVideo,
    Upload,
    check,
    parse_multipart,
    video_of,
    video_request,
)
from services.api.settings import ApiSettings
from services.api.views import JobOut, links
from services.common.db import make_engine
from services.common.storage import Storage
from services.common.tenants import Caller

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
TINY = CATALOG["tiny-mochi"]
KEY = "rs_video-test-key"


def create(fields: dict[str, Any], as_text: bool) -> None:
    body, upload = video_request(fields, as_text)
    check(body, upload)


def refused(fields: dict[str, Any], as_text: bool = False) -> dict[str, Any]:
    """The single field error of a refused create body."""
    with pytest.raises(InvalidVideo) as info:
        create(fields, as_text)
    assert info.value.status == 422
    (error,) = info.value.extra["errors"]
    return cast(dict[str, Any], error)


def test_openai_fields_map_onto_the_job_request() -> None:
    body, upload = video_request(
        {"prompt": "a heron at dawn", "model": "tiny-mochi", "size": "128x96", "seconds": "1"}, True
    )
    assert upload is None
    assert body == JobRequest(
        prompt="a heron at dawn", model="tiny-mochi", width=128, height=96, duration_seconds=1.0
    )
    check(body, upload)  # the tiny model can do it
    resolved = resolve(body)
    assert (resolved.width, resolved.height, resolved.num_frames) == (128, 96, 31)


def test_the_defaults_are_the_catalogs_and_json_numbers_are_taken() -> None:
    body, _ = video_request({"prompt": "fog", "seconds": 2, "seed": 7, "quality": "low"}, False)
    assert (body.model, body.width, body.duration_seconds, body.seed) == (DEFAULT_MODEL, None, 2.0, 7)


def test_form_text_of_job_fields_is_read_as_their_type() -> None:
    fields = {"prompt": "fog", "model": "tiny-mochi", "seed": "42", "guidance_scale": "3.5", "fps": "24"}
    body, _ = video_request(fields, True)
    assert (body.seed, body.guidance_scale, body.fps) == (42, 3.5, 24)
    assert refused({"prompt": "fog", "seed": "many"}, True) == {
        "field": "seed",
        "message": "'many' is not a int",
        "allowed": "a int",
    }


def test_an_unknown_model_names_the_catalog() -> None:
    error = refused({"prompt": "fog", "model": "sora-2"})
    assert error["field"] == "model" and error["allowed"] == ", ".join(CATALOG)


@pytest.mark.parametrize("size", ["big", "720", "1280x", "-16x32", "16 by 32", " 96x64", "96X64"])
def test_a_size_that_is_not_wxh_names_the_sizes_of_the_model(size: str) -> None:
    error = refused({"prompt": "fog", "model": "tiny-mochi", "size": size})
    assert error["field"] == "size"
    assert error["allowed"] == "WxH, each side a multiple of 16 from 32 to 256 (default 96x64)"


def test_a_size_the_model_cannot_make_is_refused_as_size() -> None:
    error = refused({"prompt": "fog", "model": "tiny-mochi", "size": "1280x720"})
    assert error["field"] == "size" and "multiples of 16 from 32 to 256" in error["allowed"]
    assert error["message"] == (
        "width 1280 is not allowed for model tiny-mochi; height 720 is not allowed for model tiny-mochi"
    )


@pytest.mark.parametrize("seconds", ["soon", "0", "-1", "61", True, "1e0", " 1", "nan", 0, 61.0])
def test_seconds_that_are_not_a_duration_name_the_longest(seconds: object) -> None:
    error = refused({"prompt": "fog", "model": "tiny-mochi", "seconds": seconds})
    assert error["field"] == "seconds" and error["allowed"].endswith("up to 1.63 at 30 fps")


def test_seconds_longer_than_the_model_makes_are_refused_as_seconds() -> None:
    error = refused({"prompt": "fog", "model": "tiny-mochi", "seconds": "4"})
    assert error["field"] == "seconds" and "longer than model tiny-mochi can make" in error["message"]


def test_unknown_fields_and_a_missing_prompt_are_named() -> None:
    assert refused({"prompt": "fog", "width": 96})["field"] == "width"
    assert refused({"model": "tiny-mochi"})["field"] == "prompt"
    assert refused({"prompt": "  "})["field"] == "prompt"


def test_input_reference_as_an_image_url_or_a_file() -> None:
    body, upload = video_request(
        {"prompt": "fog", "input_reference": {"image_url": "https://example.com/a.png"}}, False
    )
    assert str(body.image_url) == "https://example.com/a.png" and upload is None
    assert refused({"prompt": "fog", "input_reference": {"file_id": "file_1"}})["field"] == "input_reference"
    error = refused({"prompt": "fog", "input_reference": {"image_url": "http://example.com/a.png"}})
    assert error["field"] == "input_reference.image_url"
    # A model without image-to-video refuses an uploaded image, naming the models that take one.
    image = Upload(b"\x89PNG", "image/png", "a.png")
    error = refused({"prompt": "fog", "model": "tiny-mochi", "input_reference": image})
    assert error["field"] == "input_reference" and "does not take an input image" in error["message"]
    # And a model that needs one says so in this api's name for it.
    assert refused({"prompt": "fog", "model": "tiny-wan-i2v"})["field"] == "input_reference"


def test_multipart_bodies_as_httpx_and_the_openai_client_write_them() -> None:
    png = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n"  # binary, with CRLFs inside
    request = httpx.Request(
        "POST",
        "http://api/v1/videos",
        data={"prompt": "a heron, «dawn»", "seconds": "1", "metadata[ref]": "x-1"},
        files={"input_reference": ("heron.png", png, "image/png")},
    )
    fields = parse_multipart(request.read(), request.headers["content-type"])
    upload = fields.pop("input_reference")
    assert fields == {"prompt": "a heron, «dawn»", "seconds": "1", "metadata[ref]": "x-1"}
    assert upload == Upload(png, "image/png", "heron.png")
    assert parse_multipart(b"not multipart", "multipart/form-data; boundary=x") == {}
    assert parse_multipart(b"", "text/plain") == {}


def job(status: JobStatus, **changes: Any) -> JobOut:
    job_id = uuid.UUID("01970000-0000-7000-8000-000000000001")
    created = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    request = resolve(JobRequest(prompt="a heron", model="tiny-mochi", width=128, height=96, num_frames=31))
    view = JobOut(
        id=job_id, status=status, phase=Phase.DENOISING, progress=0.426, step=2, total_steps=4,
        queue_position=None, attempt=1, created_at=created, dispatched_at=None, started_at=None,
        finished_at=None, updated_at=created, request=request, result=None, error=None,
        links=links("http://api", job_id, succeeded=False),
    )  # fmt: skip
    return view.model_copy(update=changes)


def test_a_running_job_is_in_progress_with_a_percentage() -> None:
    video = video_of(job(JobStatus.RUNNING), retention_days=None)
    assert (video.status, video.progress, video.size, video.seconds, video.model) == (
        "in_progress",
        43,
        "128x96",
        "1.03",
        "tiny-mochi",
    )
    assert video.created_at == 1772366400 and video.completed_at is None and video.expires_at is None
    assert video.links["self"] == f"http://api/v1/videos/{video.id}"
    assert video.links["events"].endswith(f"/v1/jobs/{video.id}/events")
    # The openai package's own model reads every field strictly, but the size: it lists Sora's four sizes
    # (its client reads answers leniently, so any WxH comes through; see the tests below).
    parsed = openai.types.Video.model_validate({**video.model_dump(mode="json"), "size": "1280x720"})
    assert parsed.status == "in_progress" and parsed.progress == 43 and parsed.seconds == "1.03"


def test_ends_map_onto_completed_and_failed() -> None:
    ended = datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    done = video_of(job(JobStatus.SUCCEEDED, progress=0.99, finished_at=ended), retention_days=7)
    assert (done.status, done.progress, done.completed_at) == ("completed", 100, int(ended.timestamp()))
    assert done.expires_at == int((ended + timedelta(days=7)).timestamp())
    error = JobError(code=ErrorCode.OUT_OF_MEMORY, message="CUDA out of memory")
    failed = video_of(job(JobStatus.FAILED, error=error, finished_at=ended), None)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "out_of_memory"
    cancelled = video_of(job(JobStatus.CANCELLED, finished_at=ended), None)
    assert (cancelled.status, cancelled.job_status) == ("failed", JobStatus.CANCELLED)
    assert cancelled.error is not None and cancelled.error.code == "cancelled"
    assert video_of(job(JobStatus.QUEUED, progress=0.0), None).status == "queued"


class AckingPublisher:
    """Kafka that acknowledges every job request at once."""

    def __init__(self) -> None:
        self.published: list[JobRequested] = []

    async def requested(self, event: JobRequested, wait_seconds: float) -> Ack:
        self.published.append(event)
        return Ack(partition=0, offset=len(self.published), appended_at=event.accept_by)


class EmptyQueue(QueueDepth):
    async def current(self, session: AsyncSession) -> int:
        return 0


class MemoryStorage:
    """S3 as a dictionary."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def openai_client(publisher: AckingPublisher, storage: MemoryStorage | None = None) -> openai.AsyncOpenAI:
    settings = ApiSettings()
    app = create_app(settings)
    caller = Caller(
        key_id=uuid.uuid4(), tenant="acme", admin=False, limits=TenantLimits(), max_queued_jobs=100,
        submits_per_second=1000.0, reads_per_second=1000.0,
    )  # fmt: skip
    state = app_state(
        settings,
        make_engine(settings),
        cast(JobPublisher, publisher),
        cast(Storage, storage),
        JobNotifier(settings.database_url.get_secret_value()),
        keys=StaticKeys({KEY: caller}),
    )
    state.queue = EmptyQueue()
    app.state.reelstream = state
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://api")
    return openai.AsyncOpenAI(
        api_key=KEY,
        base_url="http://api/v1",
        http_client=http,
        max_retries=0,
    )


async def test_the_openai_client_creates_a_video_as_a_job() -> None:
    publisher = AckingPublisher()
    client = openai_client(publisher)
    video = await client.videos.create(
        prompt="a heron at dawn", model="tiny-mochi", size="128x96", seconds="1"
    )  # type: ignore[arg-type]
    (sent,) = publisher.published
    assert video.id == str(sent.job_id) and video.status == "queued" and video.progress == 0
    assert (sent.tenant, sent.request.width, sent.request.height, sent.request.num_frames) == (
        "acme",
        128,
        96,
        31,
    )
    assert video.model == "tiny-mochi" and video.seconds == "1.03" and video.prompt == "a heron at dawn"


async def test_the_openai_client_sees_a_refusal_naming_the_field() -> None:
    client = openai_client(AckingPublisher())
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.videos.create(prompt="a heron", model="tiny-mochi", size="1280x720")
    body = cast(dict[str, Any], info.value.body)
    assert body["errors"][0]["message"].startswith("width 1280 is not allowed")
    body = cast(dict[str, Any], info.value.body)
    assert info.value.response.headers["content-type"] == "application/problem+json"
    assert body["errors"][0]["field"] == "size"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.videos.create(prompt="a heron", model="sora-2")
    assert cast(dict[str, Any], info.value.body)["errors"][0]["field"] == "model"


async def test_the_openai_client_uploads_an_input_reference_for_image_to_video() -> None:
    publisher, storage = AckingPublisher(), MemoryStorage()
    client = openai_client(publisher, storage)
    image = png()
    video = await client.videos.create(
        prompt="the kite lifts off",
        model="tiny-wan-i2v",
        input_reference=("kite.png", image, "image/png"),
    )
    (sent,) = publisher.published
    assert video.id == str(sent.job_id) and sent.request.image_key == f"jobs/{sent.job_id}/input/image"
    assert storage.objects[sent.request.image_key] == (image, "image/png")
    # Not an image: refused naming the field, nothing stored, nothing published.
    with pytest.raises(openai.APIStatusError) as info:
        await client.videos.create(
            prompt="the kite lifts off",
            model="tiny-wan-i2v",
            input_reference=("kite.png", b"GIF89a", "image/png"),
        )
    assert info.value.status_code == 415
    assert cast(dict[str, Any], info.value.body)["errors"][0]["field"] == "input_reference"
    assert len(publisher.published) == 1 and len(storage.objects) == 1
    # A model that makes video from text only names the ones that take an image.
    with pytest.raises(openai.UnprocessableEntityError) as info:
        await client.videos.create(
            prompt="the kite", model="tiny-mochi", input_reference=("kite.png", image, "image/png")
        )
    error = cast(dict[str, Any], info.value.body)["errors"][0]
    assert error["field"] == "input_reference" and "tiny-wan-i2v" in error["allowed"]
