"""Speed tiers at the api: /v1/models shows each model's tiers, and a tier the model lacks is a 422 that
names the tiers it has (the real app with a fake publisher, as in test_api_submit)."""

from __future__ import annotations

import pytest

from schemas.catalog import CATALOG, EXACT_TIER, Speed
from tests.unit.api.test_api_submit import FakePublisher, app_with


async def test_models_show_each_tiers_recipe_speedup_and_quality_cost() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    tiny = next(m for m in response.json()["data"] if m["name"] == "tiny-mochi")
    assert list(tiny["speeds"]) == ["exact", "fast", "fastest"]
    fast = tiny["speeds"]["fast"]
    assert fast["recipe"] == "first-block-cache-0.4" and fast["cache"] == "first_block"
    assert {"expected_speedup", "speedup_basis", "quality_cost"} <= set(fast)


async def test_a_tier_the_model_lacks_is_a_422_naming_the_tiers_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exact_only = CATALOG["tiny-mochi"].model_copy(update={"speeds": {Speed.EXACT: EXACT_TIER}})
    monkeypatch.setitem(CATALOG, "tiny-mochi", exact_only)
    publisher = FakePublisher()
    async with app_with(publisher) as client:
        response = await client.post(
            "/v1/jobs", json={"prompt": "a fox", "model": "tiny-mochi", "speed": "fast"}
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    text = response.text
    assert "speed" in text and "has no 'fast' speed tier" in text and "exact" in text
    assert publisher.published == []


async def test_an_unknown_tier_is_a_422_naming_the_tiers() -> None:
    async with app_with(FakePublisher()) as client:
        response = await client.post(
            "/v1/jobs", json={"prompt": "a fox", "model": "tiny-mochi", "speed": "turbo"}
        )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "speed" in response.text and "'exact', 'fast' or 'fastest'" in response.text
