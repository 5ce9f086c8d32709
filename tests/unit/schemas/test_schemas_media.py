"""Image-to-video in the request, and the media fields of results and previews."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.catalog import CATALOG, ModelSpec
from schemas.events import JOB_EVENT_ADAPTER, EventType, JobPreview, JobSucceeded, VideoResult
from schemas.jobs import JobRequest, RequestRejected, resolve

IMAGE = "https://images.example.com/fox.png"


def _i2v_only() -> ModelSpec:
    return CATALOG["mochi-1-preview"].model_copy(
        update={"name": "i2v-only", "text_to_video": False, "image_to_video": True}
    )


def test_image_url_must_be_https() -> None:
    with pytest.raises(ValidationError, match="allowed: https"):
        JobRequest(prompt="a fox", image_url="http://images.example.com/fox.png")
    assert str(JobRequest(prompt="a fox", image_url=IMAGE).image_url) == IMAGE


def test_an_image_for_a_text_only_model_names_the_models_that_take_one() -> None:
    with pytest.raises(RequestRejected) as info:
        resolve(JobRequest(prompt="a fox", model="mochi-1-preview", image_url=IMAGE))
    (problem,) = info.value.problems
    assert problem.field == "image_url"
    able = [name for name, spec in CATALOG.items() if spec.image_to_video]
    for name in able:
        assert name in problem.allowed


def test_an_uploaded_image_is_named_by_its_field() -> None:
    with pytest.raises(RequestRejected) as info:
        resolve(JobRequest(prompt="a fox", model="mochi-1-preview"), image_field="input_reference")
    assert info.value.problems[0].field == "input_reference"


def test_a_text_only_request_has_no_image_key() -> None:
    assert resolve(JobRequest(prompt="a fox")).image_key is None


def test_image_key_is_carried_into_the_resolved_request(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _i2v_only()
    monkeypatch.setitem(CATALOG, spec.name, spec)
    with pytest.raises(
        RequestRejected, match="image_url: model i2v-only makes video from an input image only"
    ):
        resolve(JobRequest(prompt="a fox", model=spec.name))
    resolved = resolve(JobRequest(prompt="a fox", model=spec.name, image_url=IMAGE), image_key="jobs/x/input")
    assert resolved.image_key == "jobs/x/input"


def test_a_result_stored_before_thumbnails_still_reads() -> None:
    old = {
        "video_key": "jobs/a/attempt-1/video.mp4",
        "poster_key": "jobs/a/attempt-1/poster.jpg",
        "size_bytes": 10,
        "width": 96,
        "height": 64,
        "fps": 30,
        "frames": 25,
        "duration_seconds": 0.83,
    }
    result = VideoResult.model_validate(old)
    assert (result.thumbnail_key, result.spritesheet_key, result.spritesheet) == (None, None, None)


def test_preview_is_a_job_event_and_not_terminal() -> None:
    event = JobPreview(
        job_id="0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40",
        producer="worker-0",
        attempt=1,
        step=2,
        total_steps=4,
        preview_key="jobs/x/attempt-1/preview-step-00002.jpg",
        width=48,
        height=32,
    )
    parsed = JOB_EVENT_ADAPTER.validate_json(event.model_dump_json())
    assert isinstance(parsed, JobPreview) and parsed.type is EventType.PREVIEW
    assert not isinstance(parsed, JobSucceeded)
