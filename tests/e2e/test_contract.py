"""The edges of the public contract: bad input, unknown ids, listing, health, metrics, docs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import submit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
OK = {"prompt": "a cat", "model": "tiny-mochi"}


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({**OK, "width": 100}, "width", "multiples of 16 from 32 to 256"),
        ({**OK, "height": 4096}, "height", "multiples of 16 from 32 to 256"),
        ({**OK, "num_frames": 10}, "num_frames", "6k+1 between 7 and 49"),
        ({**OK, "num_frames": 601}, "num_frames", "6k+1 between 7 and 49"),
        ({**OK, "duration_seconds": 30}, "duration_seconds", "up to"),
        ({**OK, "model": "sora"}, "model", "mochi-1-preview"),
        ({**OK, "fps": 0}, "fps", "1 to 60"),
        ({**OK, "guidance_scale": 99}, "guidance_scale", "0.0 to 20.0"),
        ({**OK, "prompt": ""}, "prompt", None),
        ({**OK, "prompt": "x" * 10_000}, "prompt", None),
        ({**OK, "width": "wide"}, "width", "integer multiple of 16"),
        ({**OK, "quality": "ultra"}, "quality", None),
        ({**OK, "priority": "urgent"}, "priority", None),
        ({**OK, "colour": "blue"}, "colour", None),
        ({"model": "tiny-mochi"}, "prompt", None),
    ],
)
async def test_bad_requests_name_the_field_and_what_is_allowed(
    client: httpx.AsyncClient, body: dict[str, Any], field: str, allowed: str | None
) -> None:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and problem["title"] and problem["detail"]
    [error] = [e for e in problem["errors"] if e["field"] == field]
    if allowed is not None:
        assert allowed in error["allowed"]


async def test_not_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["", "/events", "/result", "/content"])
async def test_unknown_job_is_404_problem(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(f"/v1/jobs/{uuid.uuid4()}{path}")
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    assert (await client.post(f"/v1/jobs/{uuid.uuid4()}/cancel")).status_code == 404


async def test_malformed_id_and_cursor_are_client_errors(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/jobs/not-a-uuid")).status_code == 422
    assert (await client.get("/v1/jobs", params={"cursor": "garbage"})).status_code == 400
    assert (await client.get("/v1/jobs", params={"limit": 0})).status_code == 422


async def test_listing_is_newest_first_with_a_keyset_cursor(client: httpx.AsyncClient) -> None:
    mine = [(await submit(client, priority="batch"))["id"] for _ in range(3)]
    page = (await client.get("/v1/jobs", params={"limit": 2})).json()
    assert [j["id"] for j in page["data"]] == mine[::-1][:2]
    rest = (await client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert rest["data"][0]["id"] == mine[0]
    queued = (await client.get("/v1/jobs", params={"status": "queued", "limit": 100})).json()["data"]
    assert all(j["status"] == "queued" for j in queued)
    for job_id in mine:
        await client.post(f"/v1/jobs/{job_id}/cancel")


async def test_health_metrics_models_and_docs(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["checks"] == {"kafka": "ok", "postgres": "ok", "s3": "ok"}
    lag = health.json()["read_model"]
    assert lag["lag_seconds"] >= 0 and lag["unprojected_submits"] >= 0
    assert (await client.get("/livez")).status_code == 200
    metrics = (await client.get("/metrics/")).text
    assert "reelstream_api_submit_seconds_count" in metrics
    models = (await client.get("/v1/models")).json()["data"]
    assert {"mochi-1-preview", "tiny-mochi"} <= {m["name"] for m in models}
    assert (await client.get("/docs")).status_code == 200
    assert "/v1/jobs/{job_id}/events" in (await client.get("/openapi.json")).json()["paths"]
