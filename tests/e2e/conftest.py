"""The whole stack as separate processes, driven over HTTP and SSE like a user would.

If the services already run (`make run` / `make services`), the tests use them; otherwise the session
starts them with infra/services.sh on the stack from `make up` and stops them at the end.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.config import auth_headers

API = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parents[2]


def _healthy() -> bool:
    try:
        return httpx.get(f"{API}/healthz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def services() -> Iterator[str]:
    # One user of the running services at a time: benchmarks and chaos tests take the same lock.
    (ROOT / ".run").mkdir(exist_ok=True)
    with open(ROOT / ".run" / "services.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _services()


def _services() -> Iterator[str]:
    if _healthy():
        yield API
        return
    started = subprocess.run(["bash", "infra/services.sh", "start"], cwd=ROOT, check=False)
    if started.returncode != 0:
        pytest.fail("the services did not start; see .run/logs/ (is the stack up? `make up`)")
    try:
        yield API
    finally:
        subprocess.run(["bash", "infra/services.sh", "stop"], cwd=ROOT, check=False)


@pytest.fixture
async def client(services: str) -> AsyncIterator[httpx.AsyncClient]:
    timeout = httpx.Timeout(30, read=120)
    async with httpx.AsyncClient(base_url=services, timeout=timeout, headers=auth_headers(ROOT)) as c:
        yield c


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: dict[str, Any] = field(default_factory=dict)


async def read_sse(
    client: httpx.AsyncClient, job_id: str, last_event_id: str | None = None, stop_after: int | None = None
) -> list[SseEvent]:
    """Read a job's stream until the server ends it (or `stop_after` identified events)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: list[SseEvent] = []
    current: dict[str, str] = {}
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line == "":
                if "event" in current:
                    events.append(SseEvent(current.get("id"), current["event"], json.loads(current["data"])))
                    if stop_after is not None and sum(1 for e in events if e.id) >= stop_after:
                        break
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse in a storm", "model": "tiny-mochi", "quality": "low", **body}
    response = await client.post("/v1/jobs", json=payload)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    return job


async def wait_terminal(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    events = await read_sse(client, job_id)
    assert events[-1].event in {"job.succeeded", "job.failed", "job.cancelled"}
    job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
    return job
