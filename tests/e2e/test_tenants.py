"""Two tenants on the running services: each sees only its own jobs on every route; keys are made and
revoked over the admin routes; a tenant's queue quota answers 429 naming the limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import read_sse, submit, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def new_key(admin: httpx.AsyncClient, tenant: str) -> dict[str, Any]:
    response = await admin.post("/v1/admin/keys", json={"tenant": tenant, "name": "e2e"})
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    assert made["tenant"] == tenant and made["key"].startswith("rs_")
    return made


@pytest.fixture
async def tenants(client: httpx.AsyncClient, services: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Clients of two new tenants (a and b)."""
    run = uuid.uuid4().hex[:8]
    keys = [await new_key(client, f"e2e-{name}-{run}") for name in ("a", "b")]
    clients = [
        httpx.AsyncClient(
            base_url=services,
            timeout=httpx.Timeout(30, read=120),
            headers={"Authorization": f"Bearer {k['key']}"},
        )
        for k in keys
    ]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


async def test_another_tenants_job_is_a_404_on_every_route_and_missing_from_lists(
    tenants: list[httpx.AsyncClient],
) -> None:
    a, b = tenants
    job = await submit(a, seed=7)
    job_id = job["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/content"),
    ):
        response = await b.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert job_id in [j["id"] for j in (await a.get("/v1/jobs")).json()["data"]]
    assert job_id not in [j["id"] for j in (await b.get("/v1/jobs")).json()["data"]]
    done = await wait_terminal(a, job_id)
    assert done["status"] == "succeeded"
    assert (await a.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)).status_code == 302
    assert (await b.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)).status_code == 404


async def test_idempotency_keys_are_per_tenant(tenants: list[httpx.AsyncClient]) -> None:
    a, b = tenants
    body = {"prompt": "a kite over dunes", "model": "tiny-mochi", "quality": "low"}
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = await a.post("/v1/jobs", json=body, headers=key)
    again = await a.post("/v1/jobs", json=body, headers=key)
    other = await b.post("/v1/jobs", json=body, headers=key)
    assert [r.status_code for r in (first, again, other)] == [202, 202, 202]
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    for client, response in ((a, first), (b, other)):
        events = await read_sse(client, response.json()["id"])
        assert events[-1].event == "job.succeeded"


async def test_a_revoked_key_is_refused_within_the_key_cache_time(
    client: httpx.AsyncClient, services: str
) -> None:
    made = await new_key(client, f"e2e-revoked-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {made['key']}"}
    async with httpx.AsyncClient(base_url=services, headers=headers, timeout=30) as c:
        assert (await c.get("/v1/jobs")).status_code == 200
        revoked = await client.delete(f"/v1/admin/keys/{made['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        deadline = time.monotonic() + 15  # key_cache_seconds is 10 by default
        while (status := (await c.get("/v1/jobs")).status_code) == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    assert status == 401


async def test_a_tenant_over_its_queue_quota_gets_429_naming_the_limit(
    client: httpx.AsyncClient, services: str
) -> None:
    tenant = f"e2e-quota-{uuid.uuid4().hex[:8]}"
    limits = {"max_queued_jobs": 1, "max_running_jobs": 1}
    assert (await client.put(f"/v1/admin/tenants/{tenant}/limits", json=limits)).status_code == 200
    made = await new_key(client, tenant)
    headers = {"Authorization": f"Bearer {made['key']}"}
    async with httpx.AsyncClient(base_url=services, headers=headers, timeout=30) as c:
        body = {"prompt": "a slow river", "model": "tiny-mochi", "quality": "low"}
        answers = [await c.post("/v1/jobs", json=body) for _ in range(4)]
        statuses = [r.status_code for r in answers]
        assert statuses[0] == 202 and 429 in statuses, statuses
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["limit"] == "max_queued_jobs" and refused.headers["retry-after"]
        for accepted in (r for r in answers if r.status_code == 202):
            await c.post(f"/v1/jobs/{accepted.json()['id']}/cancel")


async def test_no_key_is_401_on_the_running_api(services: str) -> None:
    async with httpx.AsyncClient(base_url=services, timeout=30) as c:
        response = await c.get("/v1/jobs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
