"""Projector benchmark: what folding one event into the Postgres read model costs, per batch size.

The projector shares the cluster with everything else; in the fleet benchmark it shares two cores with
the simulated GPU slots, so its CPU per event is what it takes away from them. This applies a seeded
fleet-like event log (a burst of requests, then jobs running eight at a time, each with a dispatch, a
start, progress, checkpoints and a success: the mix the fleet benchmark's read model holds) through the
projector's own `Store.apply_batch` into a scratch schema, once per batch size, and prints per event:
wall time, the projector's CPU and Postgres's CPU. Live, the batches are small (each `getmany` returns
what arrived while the last transaction ran); a replay reads 500 at a time.

Kafka is left out of that table on purpose: its cost per record does not depend on the projector's code.
A second table (`bench/projector_throughput.py`) then measures the whole path, Kafka to Postgres, in
events per second against the projector's target of 10,000.

    .venv/bin/python bench/projector.py            # 300 jobs, batches of 1, 4, 16, 500; 100,000 events
    .venv/bin/python bench/projector.py --jobs 100 --batches 4 --e2e-events 0
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from schemas.events import (
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobProgress,
    JobRequested,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import Phase
from schemas.samples import resolved_request
from services.common.db import make_engine
from services.common.runtime import settle_heap
from services.common.settings import CommonSettings
from services.projector.store import Incoming, Store

TICKS = 100  # USER_HZ on Linux
CONSUMER = "bench-projector"


def job_events(job: uuid.UUID, start: datetime, slot: int, rng: random.Random) -> list[JobEvent]:
    """One short job's events after its request, as the fleet's workers and scheduler publish them."""
    at = iter(start + timedelta(milliseconds=40 * i) for i in range(100))
    common: dict[str, Any] = {"job_id": job, "producer": "bench", "attempt": 1}
    events: list[JobEvent] = [
        JobDispatched(**common, occurred_at=next(at), slot=slot, request=resolved_request()),
        JobStarted(**common, occurred_at=next(at), slot=slot, worker_id=f"worker-{slot}"),
    ]
    total = 16
    for step in range(2, total + 1, rng.choice((2, 3, 4))):
        events.append(
            JobProgress(
                **common,
                occurred_at=next(at),
                phase=Phase.DENOISING,
                progress=step / total,
                step=step,
                total_steps=total,
                seconds_per_step=0.02,
            )
        )
        if step % 8 == 0:
            key = f"checkpoints/{job}/1/{step}.pt"
            events.append(
                JobCheckpointed(
                    **common, occurred_at=next(at), step=step, total_steps=total, checkpoint_key=key
                )
            )
    result = VideoResult(
        video_key=f"videos/{job}/1.mp4", poster_key=None, size_bytes=47201, width=848, height=480, fps=30,
        frames=31, duration_seconds=1.033,
    )  # fmt: skip
    events.append(JobSucceeded(**common, occurred_at=next(at), result=result, generation_seconds=0.4))
    return events


def event_log(jobs: int, slots: int, seed: int) -> list[Incoming]:
    """A burst of `jobs` requests, then the jobs run `slots` at a time, their events interleaved."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(jobs)]
    requests = [
        JobRequested(
            job_id=job,
            occurred_at=t0,
            producer="bench",
            request=resolved_request(),
            tenant="bench",
            request_hash="0" * 64,
        )
        for job in ids
    ]
    log = [Incoming("requested", i % 6, i // 6, event) for i, event in enumerate(requests)]
    offsets = [0] * 6
    for wave in range(0, jobs, slots):
        running = [
            job_events(job, t0 + timedelta(seconds=wave), slot, rng)
            for slot, job in enumerate(ids[wave:][:slots])
        ]
        for event in interleave(running):
            partition = event.job_id.int % 6
            log.append(Incoming("events", partition, offsets[partition], event))
            offsets[partition] += 1
    return log


def interleave(streams: Sequence[list[JobEvent]]) -> Iterator[JobEvent]:
    longest = max(len(s) for s in streams)
    for i in range(longest):
        for stream in streams:
            if i < len(stream):
                yield stream[i]


def postgres_cpu_seconds() -> float:
    """User + system CPU of every `postgres` process (the server's backends and its workers)."""
    pids = subprocess.run(
        ["pgrep", "-x", "postgres"], check=False, capture_output=True, text=True
    ).stdout.split()
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def measure(store: Store, log: list[Incoming], batch: int) -> dict[str, float]:
    await store.create_schema()
    try:
        wall, cpu, pg = time.perf_counter(), time.process_time(), postgres_cpu_seconds()
        for start in range(0, len(log), batch):
            await store.apply_batch(CONSUMER, log[start : start + batch], notify=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pg = postgres_cpu_seconds() - pg
    finally:
        await store.drop_schema()
    n = len(log)
    return {
        "batch": batch,
        "events": n,
        "transactions": -(-n // batch),
        "events_per_s": n / wall,
        "wall_us_per_event": 1e6 * wall / n,
        "projector_cpu_us_per_event": 1e6 * cpu / n,
        "postgres_cpu_us_per_event": 1e6 * pg / n,
    }


async def run(args: argparse.Namespace) -> list[dict[str, float]]:
    log = event_log(args.jobs, args.slots, args.seed)
    engine = make_engine(CommonSettings(service_name="bench-projector"), pre_ping=False)  # as live
    store = Store(engine, f"bench_projector_{uuid.uuid4().hex[:8]}")
    try:
        await measure(store, log[: len(log) // 4], 16)  # warm-up: connections, statement caches
        return [await measure(store, log, batch) for batch in args.batches]
    finally:
        await engine.dispose()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 4, 16, 500])
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--e2e-events", type=int, default=100_000, help="events for the Kafka-to-Postgres run (0: skip it)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(argv)
    settle_heap()  # as every service does before it serves (`run_until_signalled`)
    results = asyncio.run(run(args))
    columns = ("events per batch", "transactions", "events/s", "wall µs/event", "projector CPU µs/event")
    print("| " + " | ".join((*columns, "postgres CPU µs/event")) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for r in results:
        cells = (
            r["batch"], r["transactions"], round(r["events_per_s"]), round(r["wall_us_per_event"]),
            round(r["projector_cpu_us_per_event"]), round(r["postgres_cpu_us_per_event"]),
        )  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.e2e_events:
        print()
        throughput().main(["--events", str(args.e2e_events)])
    return results


def throughput() -> ModuleType:
    """bench/projector_throughput.py, loaded by path: bench/ is not a package."""
    path = Path(__file__).with_name("projector_throughput.py")
    spec = importlib.util.spec_from_file_location("projector_throughput", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
