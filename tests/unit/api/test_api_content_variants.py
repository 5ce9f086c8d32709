"""Which object each content variant of a job is, and the links the job view gives to them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from services.api.content import ContentMissing, ContentVariant, StepRequired, variant_key
from services.api.errors import Conflict
from services.api.feeds import frame
from services.api.views import _result, links
from services.common.readmodel import Job, JobEventRow

JOB = uuid.UUID("0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40")
BASE = "http://api.example"
RESULT: dict[str, Any] = {
    "video_key": f"jobs/{JOB}/attempt-2/video.mp4",
    "poster_key": f"jobs/{JOB}/attempt-2/poster.jpg",
    "thumbnail_key": f"jobs/{JOB}/attempt-2/thumbnail.jpg",
    "spritesheet_key": f"jobs/{JOB}/attempt-2/spritesheet.jpg",
    "spritesheet": {
        "columns": 4,
        "rows": 1,
        "tile_width": 96,
        "tile_height": 64,
        "frame_indices": [0, 8, 16, 24],
    },
    "size_bytes": 100,
    "width": 96,
    "height": 64,
    "fps": 30,
    "frames": 25,
    "duration_seconds": 0.83,
}
OLD_RESULT = {k: v for k, v in RESULT.items() if k not in {"thumbnail_key", "spritesheet_key", "spritesheet"}}


def job(status: str = "succeeded", result: dict[str, Any] | None = RESULT) -> Job:
    return Job(id=JOB, status=status, attempt=2, result=result if status == "succeeded" else None)


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        ("video", "video.mp4"),
        ("poster", "poster.jpg"),
        ("thumbnail", "thumbnail.jpg"),
        ("spritesheet", "spritesheet.jpg"),
    ],
)
def test_each_variant_of_a_result(variant: str, name: str) -> None:
    assert variant_key(job(), ContentVariant(variant)) == f"jobs/{JOB}/attempt-2/{name}"


def test_a_result_made_before_stills_has_no_thumbnail_404_naming_it() -> None:
    with pytest.raises(ContentMissing, match="has no thumbnail") as info:
        variant_key(job(result=OLD_RESULT), ContentVariant.THUMBNAIL)
    assert info.value.status == 404
    assert variant_key(job(result=OLD_RESULT), ContentVariant.VIDEO).endswith("video.mp4")


def test_stills_of_a_running_job_are_a_conflict() -> None:
    with pytest.raises(Conflict, match="is running"):
        variant_key(job("running"), ContentVariant.POSTER)


def test_a_preview_is_of_a_step_and_of_the_current_attempt_by_default() -> None:
    assert (
        variant_key(job("running"), ContentVariant.PREVIEW, step=4)
        == f"jobs/{JOB}/attempt-2/preview-step-00004.jpg"
    )
    assert variant_key(job(), ContentVariant.PREVIEW, 4, 1) == f"jobs/{JOB}/attempt-1/preview-step-00004.jpg"
    with pytest.raises(StepRequired) as info:
        variant_key(job("running"), ContentVariant.PREVIEW)
    assert info.value.status == 422 and info.value.extra["errors"][0]["field"] == "step"


def test_the_view_links_the_stills_a_result_has() -> None:
    out = links(BASE, JOB, True, RESULT)
    assert out["thumbnail"] == f"{BASE}/v1/jobs/{JOB}/content?variant=thumbnail"
    assert out["poster"] == f"{BASE}/v1/jobs/{JOB}/content?variant=poster"
    assert out["spritesheet"] == f"{BASE}/v1/jobs/{JOB}/content?variant=spritesheet"
    old = links(BASE, JOB, True, OLD_RESULT)
    assert "poster" in old and "thumbnail" not in old and "spritesheet" not in old
    assert "poster" not in links(BASE, JOB, False)


def test_the_result_carries_urls_and_the_layout_but_no_keys() -> None:
    result = _result(RESULT, BASE, JOB)
    assert result is not None
    assert result.thumbnail_url == f"{BASE}/v1/jobs/{JOB}/content?variant=thumbnail"
    assert result.spritesheet is not None and result.spritesheet.frame_indices == [0, 8, 16, 24]
    dumped = result.model_dump()
    assert not any(key.endswith("_key") for key in dumped)
    old = _result(OLD_RESULT, BASE, JOB)
    assert old is not None and old.thumbnail_url is None and old.poster_url is not None


def test_a_preview_frame_on_sse_carries_the_url_that_serves_it() -> None:
    payload = {"type": "job.preview", "job_id": str(JOB), "attempt": 2, "step": 4, "preview_key": "k"}
    row = JobEventRow(seq=7, type="job.preview", payload=payload)
    text = frame(row).decode()
    assert text.startswith("id: 7\nevent: job.preview\ndata: ")
    data = json.loads(text.split("data: ", 1)[1])
    assert data["url"] == f"/v1/jobs/{JOB}/content?variant=preview&step=4&attempt=2"
    other = frame(JobEventRow(seq=8, type="job.progress", payload={"type": "job.progress", "step": 4}))
    assert "url" not in json.loads(other.decode().split("data: ", 1)[1])
