"""A job's media through the running stack: previews on SSE, the stills of its result, the content
variants, and image-to-video requests the api refuses with a problem naming the field."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import read_sse, submit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    return body


async def jpeg(client: httpx.AsyncClient, url: str) -> Image.Image:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    return image


async def test_previews_on_sse_and_every_still_of_the_result(client: httpx.AsyncClient) -> None:
    # 8 steps: the workers' default preview_every_steps (4) gives previews at steps 4 and 8.
    job = await submit(client, quality="high")
    events = await read_sse(client, job["id"])
    assert events[-1].event == "job.succeeded", events[-1]
    previews = [e for e in events if e.event == "job.preview"]
    assert previews, [e.event for e in events]
    for preview in previews:
        assert preview.data["url"].startswith(f"/v1/jobs/{job['id']}/content?variant=preview&step=")
        image = await jpeg(client, preview.data["url"])
        assert image.size == (preview.data["width"], preview.data["height"])
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    result = done["result"]
    for variant in ("poster", "thumbnail", "spritesheet"):
        assert done["links"][variant] == result[f"{variant}_url"]
        assert result[f"{variant}_url"].endswith(f"/v1/jobs/{job['id']}/content?variant={variant}")
        await jpeg(client, f"/v1/jobs/{job['id']}/content?variant={variant}")
    sheet = await jpeg(client, f"/v1/jobs/{job['id']}/content?variant=spritesheet")
    layout = result["spritesheet"]
    assert sheet.size == (layout["columns"] * layout["tile_width"], layout["rows"] * layout["tile_height"])
    assert layout["frame_indices"][0] == 0 and layout["frame_indices"][-1] == result["frames"] - 1
    thumbnail = await jpeg(client, f"/v1/jobs/{job['id']}/content?variant=thumbnail")
    assert thumbnail.size == (result["width"], result["height"])  # tiny clips are narrower than 320
    video = await client.get(f"/v1/jobs/{job['id']}/content?variant=video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


async def test_bad_variants_are_problems_naming_what_is_allowed(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    await read_sse(client, job["id"])
    base = f"/v1/jobs/{job['id']}/content"
    body = problem(await client.get(f"{base}?variant=gif"), 422)
    assert body["errors"][0]["field"] == "query.variant"
    for name in ("video", "poster", "thumbnail", "spritesheet", "preview"):
        assert name in body["detail"]
    body = problem(await client.get(f"{base}?variant=preview"), 422)
    assert body["errors"][0]["field"] == "step"
    problem(await client.get(f"{base}?variant=preview&step=999"), 404)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {"model": "tiny-mochi", "image_url": "https://images.example.com/a.png"},
            "image_url",
            "tiny-wan-i2v",
        ),
        ({"model": "tiny-wan-i2v"}, "image_url", "input image only"),
        ({"model": "tiny-wan-i2v", "image_url": "http://images.example.com/a.png"}, "image_url", "https"),
        ({"model": "tiny-wan-i2v", "image_url": "https://127.0.0.1:9000/a.png"}, "image_url", "loopback"),
        (
            {"model": "tiny-wan-i2v", "image_url": "https://169.254.169.254/latest/"},
            "image_url",
            "link-local",
        ),
        (
            {"model": "tiny-wan-i2v", "image_url": "https://no-such-host.invalid/a.png"},
            "image_url",
            "unreachable",
        ),
    ],
)
async def test_image_to_video_requests_the_api_refuses(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post("/v1/jobs", json={"prompt": "a kite", **body})
    found = problem(response, 422)
    assert any(e["field"].endswith(field) for e in found["errors"]), found
    assert words in found["detail"] or any(words in str(e) for e in found["errors"]), found
