"""Speed tiers through the running services: /v1/models lists them, fast and fastest tiny-mochi jobs run
end to end to a playable video, and an unknown tier is a 422 naming the tiers."""

from __future__ import annotations

import io

import av
import httpx
import pytest

from tests.e2e.conftest import submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_models_list_each_tier_with_its_recipe_speedup_and_cost(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()["data"]
    tiny = next(m for m in models if m["name"] == "tiny-mochi")
    assert list(tiny["speeds"]) == ["exact", "fast", "fastest"]
    for tier in tiny["speeds"].values():
        assert tier["recipe"] and tier["quality_cost"] and tier["speedup_basis"]
        assert tier["expected_speedup"] >= 1.0
    assert tiny["speeds"]["fastest"]["cache"] == "taylorseer_lite"


@pytest.mark.parametrize("speed", ["fast", "fastest"])
async def test_a_tiered_job_runs_end_to_end(client: httpx.AsyncClient, speed: str) -> None:
    # 8 steps (quality high): enough for both recipes to skip steps on tiny-mochi.
    job = await submit(client, speed=speed, quality="high", num_frames=7, seed=5)
    assert job["request"]["speed"] == speed

    done = await wait_terminal(client, job["id"])

    assert done["status"] == "succeeded", done.get("error")
    assert done["request"]["speed"] == speed and done["request"]["num_inference_steps"] == 8
    video = await client.get(f"/v1/jobs/{job['id']}/content")
    assert video.status_code == 200
    with av.open(io.BytesIO(video.content)) as container:
        assert len(list(container.decode(container.streams.video[0]))) == 7


async def test_an_unknown_tier_is_a_422_naming_the_tiers(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a lighthouse in a storm", "model": "tiny-mochi", "speed": "turbo"}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "speed" in response.text and "'exact', 'fast' or 'fastest'" in response.text


async def test_a_tier_the_model_lacks_is_a_422_naming_the_tiers_it_has(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()["data"]
    lacking = [(m["name"], list(m["speeds"])) for m in models if "fast" not in m["speeds"]]
    if not lacking:
        pytest.skip("every model these services serve offers every tier")
    name, tiers = lacking[0]
    body = {"prompt": "a lighthouse in a storm", "model": name, "speed": "fast"}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    [problem] = [p for p in response.json()["errors"] if p["field"] == "speed"]
    assert problem["allowed"] == ", ".join(tiers)
    assert "has no 'fast' speed tier" in problem["message"]
