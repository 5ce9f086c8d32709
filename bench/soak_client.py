"""The soak's outside client: a seeded plan of jobs, the submits (retried with the same Idempotency-Key, as
docs/design.md asks), cancels, and SSE watchers that come and go. Every answer the api gives is counted
by status and route; a 5xx is kept with its headers, and a refused connection counts as 'api down'.

The plan is drawn up front from the seed, so two runs with one seed ask for the same jobs at the same
moments; what the system does with them is up to its own timing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.soak_check import TERMINAL_TYPES, Answer, Submission, WatcherResult
from services.cli.config import auth_headers

API = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parents[1]
# Small, quick tiny-mochi jobs (2 or 4 steps): two CPU slots keep up with one every few seconds.
SIZES = ((64, 64, 7), (96, 64, 7), (96, 64, 13), (64, 96, 13), (128, 64, 7))
SUBMIT_TRIES = 8


@dataclass(frozen=True, slots=True)
class PlannedJob:
    n: int
    gap: float  # seconds after the previous submit (Poisson arrivals)
    body: dict[str, Any]
    watch_after: float | None  # a watcher joins this many seconds after the 202, or none does
    drop_after: int | None  # the watcher hangs up after this many events, then resumes (Last-Event-ID)
    cancel_after: float | None


def plan_jobs(seed: int, seconds: float, mean_gap: float, max_jobs: int, run: str) -> list[PlannedJob]:
    """The jobs of a run, drawn from `seed` alone: arrivals, sizes, lanes, watchers and cancels."""
    rng = random.Random(f"jobs-{seed}")
    jobs: list[PlannedJob] = []
    at = 0.0
    while len(jobs) < max_jobs:
        gap = rng.expovariate(1 / mean_gap)
        at += gap
        if at >= seconds:
            break
        width, height, frames = rng.choice(SIZES)
        body = {
            "prompt": f"soak {run} #{len(jobs)}: a paper boat on a rainy street",
            "model": "tiny-mochi",
            "quality": "low" if rng.random() < 0.7 else "medium",
            "priority": "interactive" if rng.random() < 0.6 else "batch",
            "width": width,
            "height": height,
            "num_frames": frames,
            "seed": rng.randrange(2**32),
        }
        watched = rng.random() < 0.6
        jobs.append(
            PlannedJob(
                n=len(jobs),
                gap=gap,
                body=body,
                watch_after=rng.uniform(0, 8) if watched else None,
                drop_after=rng.randint(1, 3) if watched and rng.random() < 0.4 else None,
                cancel_after=rng.uniform(0, 4) if rng.random() < 0.05 else None,
            )
        )
    return jobs


class Api:
    """An httpx client that counts every answer and keeps each 5xx; `fault_now` names the fault under way."""

    def __init__(self, t0: float, fault_now: Callable[[], str | None]) -> None:
        headers = auth_headers(ROOT)
        self.client = httpx.AsyncClient(base_url=API, timeout=httpx.Timeout(20, read=60), headers=headers)
        self.t0 = t0
        self.fault_now = fault_now
        self.answers: Counter[str] = Counter()
        self.api_down: Counter[str] = Counter()
        self.transport: Counter[str] = Counter()
        self.fivexx: list[Answer] = []

    async def close(self) -> None:
        await self.client.aclose()

    def record(self, route: str, response: httpx.Response, body: str = "") -> None:
        self.answers[f"{response.status_code} {route}"] += 1
        if response.status_code >= 500:
            self.fivexx.append(
                Answer(
                    route=route,
                    status=response.status_code,
                    content_type=response.headers.get("content-type", ""),
                    retry_after=response.headers.get("retry-after"),
                    at=time.monotonic() - self.t0,
                    during_fault=self.fault_now(),
                    body=body,
                )
            )

    def failed(self, route: str, error: httpx.TransportError) -> None:
        """A request that got no answer: refused (the api is down) or cut/timed out (counted apart)."""
        if isinstance(error, httpx.ConnectError):
            self.api_down[route] += 1
        else:
            self.transport[f"{type(error).__name__} {route}"] += 1

    async def request(self, method: str, route: str, url: str, **kwargs: Any) -> httpx.Response | None:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.TransportError as e:
            self.failed(route, e)
            return None
        self.record(route, response, response.text[:500] if response.status_code >= 500 else "")
        return response


def retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "2")), 10.0)
    except ValueError:
        return 2.0


async def submit(api: Api, sub: Submission, give_up_at: float) -> None:
    """POST until a 202 (or 200, a replayed key), a refusal, or `give_up_at`; every try has the same key."""
    last = "no answer"
    while sub.tries < SUBMIT_TRIES and time.monotonic() < give_up_at:
        sub.tries += 1
        response = await api.request(
            "POST", "POST /v1/jobs", "/v1/jobs", json=sub.body, headers={"Idempotency-Key": sub.key}
        )
        if response is None:
            last = "no answer"
            await asyncio.sleep(3)
            continue
        if response.status_code in (200, 202):
            sub.job_id, sub.outcome = response.json()["id"], "accepted"
            return
        if response.status_code not in (429, 503):
            sub.outcome = f"rejected {response.status_code}"
            return
        last = str(response.status_code)
        await asyncio.sleep(retry_after(response))
    sub.outcome = f"gave up ({last})"


async def cancel(api: Api, job_id: str, after: float) -> None:
    await asyncio.sleep(after)
    await api.request("POST", "POST /v1/jobs/{id}/cancel", f"/v1/jobs/{job_id}/cancel")


@dataclass(slots=True)
class SseEvent:
    id: int | None
    event: str
    data: dict[str, Any]


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in current:
                ident = int(current["id"]) if current.get("id") else None
                yield SseEvent(ident, current["event"], json.loads(current.get("data") or "{}"))
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value


async def _connection(api: Api, result: WatcherResult, drop_after: int | None) -> bool:
    """One connection of a watcher; True once the server ended the stream after a terminal event."""
    route = "GET /v1/jobs/{id}/events"
    last = result.ids[-1] if result.ids else None
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    result.connections += 1
    async with api.client.stream("GET", f"/v1/jobs/{result.job_id}/events", headers=headers) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")[:500]
            api.record(route, response, body)
            if response.status_code == 404:
                result.error = f"404 on the stream: {body[:200]}"
                return True
            await asyncio.sleep(retry_after(response))
            return False
        api.record(route, response)
        fresh = 0
        async for event in sse_events(response):
            if event.id is None:
                continue
            result.ids.append(event.id)
            fresh += 1
            if event.event in TERMINAL_TYPES:
                result.terminals.append(event.event)
            elif drop_after is not None and fresh >= drop_after:
                result.early_disconnects += 1
                return False
    return bool(result.terminals)


async def watch(api: Api, result: WatcherResult, drop_after: int | None, until: float) -> None:
    """Follow one job to its end, reconnecting with Last-Event-ID after a hang-up or a cut; what it sees
    goes into `result` as it comes (a watcher cut short by the drain's end still counts)."""
    while time.monotonic() < until:
        try:
            if await _connection(api, result, drop_after):
                return
        except httpx.TransportError as e:
            api.failed("GET /v1/jobs/{id}/events", e)
            await asyncio.sleep(1)
        drop_after = None  # hangs up once, then follows to the end
        await asyncio.sleep(0.2)
    result.error = result.error or f"no terminal event by the deadline ({len(result.ids)} events seen)"


async def final_read(api: Api, job_id: str) -> list[str] | str:
    """A full read of a finished job's stream from the start: its terminal event types (or what failed)."""
    why = ""
    for _ in range(3):
        result = WatcherResult(job_id)
        try:
            async with asyncio.timeout(30):
                await _connection(api, result, None)
        except httpx.TransportError as e:
            api.failed("GET /v1/jobs/{id}/events", e)
            why = type(e).__name__
        except TimeoutError:
            why = f"the stream did not end within 30 s ({len(result.ids)} events)"
        else:
            return result.error or result.terminals
        await asyncio.sleep(1)
    return f"no complete read in 3 tries: {why}"
