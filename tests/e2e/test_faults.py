"""Faults and bad input from outside, against the running services: nothing frozen, nothing starved."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from services.cli.config import auth_headers
from tests.e2e.conftest import read_sse, submit, wait_terminal

WATCHERS = 60  # four times the api's database pool (5 + 10 overflow)


async def test_a_nul_in_a_prompt_is_refused_and_the_read_model_goes_on(client: httpx.AsyncClient) -> None:
    refused = await client.post("/v1/jobs", json={"prompt": "fox\u0000snow", "model": "tiny-mochi"})
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["prompt"]
    bad_meta = await client.post(
        "/v1/jobs", json={"prompt": "fox", "model": "tiny-mochi", "metadata": {"k": "v\u0000"}}
    )
    assert bad_meta.status_code == 422, bad_meta.text
    job = await submit(client)
    assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200
    await client.post(f"/v1/jobs/{job['id']}/cancel")


async def test_many_watchers_starve_no_read_and_every_one_sees_the_end(services: str) -> None:
    limits = httpx.Limits(max_connections=WATCHERS + 20)
    timeout, headers = httpx.Timeout(30, read=180), auth_headers(Path(__file__).resolve().parents[2])
    async with httpx.AsyncClient(base_url=services, timeout=timeout, limits=limits, headers=headers) as c:
        job = await submit(c, quality="medium")
        watchers = [asyncio.create_task(read_sse(c, job["id"])) for _ in range(WATCHERS)]
        await asyncio.sleep(1.0)  # the streams are open and following
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            response = await c.get(f"/v1/jobs/{job['id']}")
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200, response.text
            listed = await c.get("/v1/jobs", params={"limit": 5})
            assert listed.status_code == 200, listed.text
        assert slowest < 2.0, f"a read took {slowest:.2f} s with {WATCHERS} streams open"
        seen = await asyncio.wait_for(asyncio.gather(*watchers), timeout=170)
        ends = {events[-1].event for events in seen}
        assert ends == {"job.succeeded"}, ends
        finished = await wait_terminal(c, job["id"])
        assert finished["phase"] == "succeeded"
        backwards = await c.get(f"/v1/jobs/{job['id']}/content", headers={"Range": "bytes=500-100"})
        assert backwards.status_code == 416
        assert backwards.headers["content-type"] == "application/problem+json"
        ranged = await c.get(f"/v1/jobs/{job['id']}/content", headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and ranged.headers["content-range"].startswith("bytes 0-99/")
