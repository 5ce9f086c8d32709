"""Keys, tenants and request rates at the api's door (the app in process, keys given up front)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

import httpx

from schemas.events import TenantLimits
from services.api.auth import RateLimits
from services.api.main import app_state, create_app
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.settings import ApiSettings
from services.common.db import make_engine
from services.common.storage import Storage
from services.common.tenants import Caller
from tests.unit.api.test_api_faults import NOWHERE, problem_of
from tests.unit.api.test_api_submit import FakePublisher, static_keys

SLOW = Caller(uuid.uuid4(), "slow", False, TenantLimits(), 100, submits_per_second=1.0, reads_per_second=2.0)
METERED = Caller(
    uuid.uuid4(),
    "metered",
    False,
    TenantLimits(gpu_seconds_per_day=60),
    2,
    submits_per_second=99,
    reads_per_second=99,
)
BODY = {"prompt": "a lighthouse in fog", "model": "tiny-mochi"}


def client(key: str | None, view: dict[str, object] | None = None) -> httpx.AsyncClient:
    settings = ApiSettings(database_url=NOWHERE, rate_burst_seconds=1.0)
    app = create_app(settings)
    app.state.reelstream = app_state(
        settings,
        make_engine(settings),
        cast(JobPublisher, FakePublisher()),
        cast(Storage, None),
        JobNotifier(settings.database_url.get_secret_value()),
        keys=static_keys(**{"rs_slow": SLOW, "rs_metered": METERED}),
    )
    if view is not None:
        app.state.reelstream.queue_view.take(json.dumps(view).encode())
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers)


async def test_no_key_is_a_401_problem_with_a_bearer_challenge() -> None:
    async with client(None) as c:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{uuid.uuid4()}")):
            response = await c.request(method, path, json=BODY if method == "POST" else None)
            problem = problem_of(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in str(problem["detail"])


async def test_an_unknown_key_is_a_401_and_a_basic_scheme_is_not_a_key() -> None:
    async with client("rs_nobody") as c:
        assert problem_of(await c.get("/v1/jobs"), 401)["detail"] == "this API key is unknown or revoked"
    async with client(None) as c:
        response = await c.get("/v1/jobs", headers={"Authorization": "Basic cnM6eA=="})
        problem_of(response, 401)


async def test_a_key_over_its_submit_rate_gets_429_with_retry_after_and_the_limit_named() -> None:
    async with client("rs_slow") as c:
        first = await c.post("/v1/jobs", json=BODY)
        assert first.status_code == 202, first.text
        second = await c.post("/v1/jobs", json=BODY)
    problem = problem_of(second, 429)
    assert problem["limit"] == "submits_per_second"
    assert int(second.headers["retry-after"]) >= 1


async def test_only_an_admin_key_reaches_the_admin_routes() -> None:
    async with client("rs_slow") as c:
        response = await c.post("/v1/admin/keys", json={"tenant": "acme"})
    assert "admin" in str(problem_of(response, 403)["detail"])


async def test_the_health_and_catalog_routes_need_no_key() -> None:
    async with client(None) as c:
        assert (await c.get("/livez")).status_code == 200
        assert (await c.get("/v1/models")).status_code == 200


def test_a_bucket_lets_its_burst_through_then_one_request_per_refill() -> None:
    now = [0.0]
    rates = RateLimits(burst_seconds=2.0, now=lambda: now[0])
    key = uuid.uuid4()
    assert [rates.take(key, "submit", 5.0) for _ in range(10)] == [0.0] * 10  # 2 s of 5/s
    assert rates.take(key, "submit", 5.0) == 0.2
    now[0] += 0.2
    assert rates.take(key, "submit", 5.0) == 0.0
    assert rates.take(key, "read", 5.0) == 0.0, "each kind has its own bucket"
    assert rates.take(uuid.uuid4(), "submit", 5.0) == 0.0, "each key has its own bucket"


def view_with(tenants: dict[str, list[float]]) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {"schema_version": 1, "generated_at": now, "lanes": {}, "held": [], "tenants": tenants}


async def test_a_tenant_with_its_queue_full_gets_429_naming_max_queued_jobs() -> None:
    async with client("rs_metered", view_with({"metered": [1, 0, 0.0], "other": [50, 0, 0.0]})) as c:
        assert (await c.post("/v1/jobs", json=BODY)).status_code == 202  # 1 waiting of 2
        refused = await c.post("/v1/jobs", json=BODY)  # the view lacks the first: counted locally
    problem = problem_of(refused, 429)
    assert problem["limit"] == "max_queued_jobs"
    assert "metered has 2 jobs waiting (at most 2)" in str(problem["detail"])
    assert refused.headers["retry-after"]


async def test_a_tenant_past_its_gpu_seconds_today_gets_429_until_midnight_utc() -> None:
    async with client("rs_metered", view_with({"metered": [0, 1, 61.0]})) as c:
        refused = await c.post("/v1/jobs", json=BODY)
    problem = problem_of(refused, 429)
    assert problem["limit"] == "gpu_seconds_per_day"
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert abs(int(refused.headers["retry-after"]) - (midnight - now).total_seconds()) < 5


async def test_without_a_fresh_queue_view_a_submit_is_admitted() -> None:
    stale = view_with({"metered": [5, 0, 100.0]})
    stale["generated_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    async with client("rs_metered", stale) as c:
        assert (await c.post("/v1/jobs", json=BODY)).status_code == 202
