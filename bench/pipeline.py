"""Pipeline benchmark on the running local stack (tiny-mochi on the CPU): what reelstream itself costs.

1. submit latency: 200 sequential POST /v1/jobs (each answers after Kafka's acks=all);
2. orchestration overhead per job: (job.succeeded - job.requested) - the worker's own generation time,
   over 50 jobs run one after another so that no job waits behind another;
3. progress delivery: from a job.progress event being produced (its occurred_at) to an SSE client
   reading it.

    python bench/pipeline.py [--submits 200] [--jobs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from services.cli.config import auth_headers

API = "http://127.0.0.1:8000"
ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "prompt": "benchmark: a slow pan over a harbour",
    "model": "tiny-mochi",
    "quality": "low",
    "num_frames": 7,
    "width": 64,
    "height": 64,
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000) -> dict[str, Any]:
    row = {
        "metric": name,
        "n": len(values),
        "p50": pct(values, 50) * scale,
        "p95": pct(values, 95) * scale,
        "p99": pct(values, 99) * scale,
        "mean": statistics.fmean(values) * scale,
        "unit": unit,
    }
    print(
        f"{name:<44} n={row['n']:<4} p50={row['p50']:8.1f} p95={row['p95']:8.1f} "
        f"p99={row['p99']:8.1f} mean={row['mean']:8.1f} {unit}",
        flush=True,
    )
    return row


async def submit_latency(client: httpx.AsyncClient, n: int) -> list[float]:
    took, ids = [], []
    for i in range(n):
        started = time.perf_counter()
        response = await client.post("/v1/jobs", json={**BODY, "priority": "batch", "seed": i})
        took.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    # The jobs were only there to be accepted: cancel them so the next measurement starts idle.
    await asyncio.gather(*(client.post(f"/v1/jobs/{job_id}/cancel") for job_id in ids))
    return took


async def follow(client: httpx.AsyncClient, job_id: str) -> tuple[list[dict[str, Any]], list[float]]:
    """All SSE events of a job, and for each job.progress the delay from production to receipt."""
    events, delays, kind = [], [], ""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                received = time.time()
                data = json.loads(line[6:])
                events.append({"type": kind, **data})
                if kind == "job.progress":
                    delays.append(received - datetime.fromisoformat(data["occurred_at"]).timestamp())
    return events, delays


async def wait_idle(client: httpx.AsyncClient) -> None:
    for _ in range(600):
        busy = (await client.get("/v1/jobs", params={"status": "running", "limit": 1})).json()["data"]
        queued = (await client.get("/v1/jobs", params={"status": "queued", "limit": 1})).json()["data"]
        if not busy and not queued:
            return
        await asyncio.sleep(0.5)


async def overhead(client: httpx.AsyncClient, n: int) -> tuple[list[float], list[float], list[float]]:
    overheads, totals, delays = [], [], []
    for i in range(n):
        response = await client.post("/v1/jobs", json={**BODY, "seed": 1000 + i})
        events, job_delays = await follow(client, response.json()["id"])
        requested = next(e for e in events if e["type"] == "job.requested")
        succeeded = next(e for e in events if e["type"] == "job.succeeded")
        total = (
            datetime.fromisoformat(succeeded["occurred_at"])
            - datetime.fromisoformat(requested["occurred_at"])
        ).total_seconds()
        totals.append(total)
        overheads.append(total - succeeded["generation_seconds"])
        delays += job_delays
    return overheads, totals, delays


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    headers = auth_headers(ROOT)
    async with httpx.AsyncClient(
        base_url=API, timeout=httpx.Timeout(30, read=300), headers=headers
    ) as client:
        await wait_idle(client)
        rows.append(summary("submit latency (POST -> 202)", await submit_latency(client, args.submits)))
        await wait_idle(client)
        overheads, totals, delays = await overhead(client, args.jobs)
        rows.append(summary("orchestration overhead per job", overheads))
        rows.append(summary("requested -> succeeded per job", totals))
        rows.append(summary("job.progress produced -> SSE client", delays))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))  # noqa: ASYNC240 - once, at the end


if __name__ == "__main__":
    asyncio.run(main())
