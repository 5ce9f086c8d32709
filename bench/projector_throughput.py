"""Projector throughput end to end: Kafka to Postgres, events per second, on fresh topics and a fresh schema.

A producer process publishes a seeded log of realistic jobs (a request, a dispatch, a start, one progress
event per denoising step, a checkpoint every 10 steps, the decode/encode/upload phases, a success; jobs
run `slots` at a time, their events interleaved) to two fresh topics laid out like `jobs.requested` and
`jobs.events`. The real projector loop (`Projection.run`, `Store`) folds them into a fresh schema. Two
runs:

- live: the projector is running before the first record is produced; events/s = records / (first
  produce -> the transaction that commits the last offset).
- catch-up: the whole log is on Kafka before the projector starts (a restart after an outage, a replay);
  events/s = records / (projector start -> last offset committed).

The producer is its own process, as the api, scheduler and workers are; on a 2-core machine it, Kafka,
Postgres and the projector share the cores, as they do on the local stack.

    .venv/bin/python bench/projector_throughput.py                     # 100,000 events, both runs
    .venv/bin/python bench/projector_throughput.py --events 20000 --modes live
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from bench.fleet_procs import cpu_seconds  # noqa: E402
from schemas.envelope import encode_event  # noqa: E402
from schemas.events import (  # noqa: E402
    JobCheckpointed,
    JobDispatched,
    JobEvent,
    JobProgress,
    JobRequested,
    JobStarted,
    JobSucceeded,
    VideoResult,
)
from schemas.jobs import Phase, ResolvedRequest  # noqa: E402
from schemas.samples import resolved_request  # noqa: E402
from schemas.topics import BROKER_TIMESTAMPS  # noqa: E402
from services.common.consumer import discover  # noqa: E402
from services.common.db import make_engine  # noqa: E402
from services.common.runtime import settle_heap  # noqa: E402
from services.projector.consumer import Projection, open_clients  # noqa: E402
from services.projector.settings import ProjectorSettings  # noqa: E402
from services.projector.store import BatchResult, Incoming, Store  # noqa: E402

TARGET = 10_000
PARTITIONS = 6  # topic_specs' default for both topics


def job_events(job: uuid.UUID, start: datetime, slot: int, steps: int) -> list[JobEvent]:
    """A job's `jobs.events` records, as the scheduler and a worker publish them for one attempt."""
    at = iter(start + timedelta(milliseconds=20 * i) for i in range(steps + 20))
    common: dict[str, Any] = {"job_id": job, "producer": "bench", "attempt": 1}
    events: list[JobEvent] = [
        JobDispatched(**common, occurred_at=next(at), slot=slot, request=resolved_request()),
        JobStarted(**common, occurred_at=next(at), slot=slot, worker_id=f"worker-{slot}"),
    ]
    for step in range(1, steps + 1):
        events.append(
            JobProgress(
                **common,
                occurred_at=next(at),
                phase=Phase.DENOISING,
                progress=0.9 * step / steps,
                step=step,
                total_steps=steps,
                seconds_per_step=0.02,
            )
        )
        if step % 10 == 0:
            key = f"checkpoints/{job}/1/{step}.pt"
            events.append(
                JobCheckpointed(
                    **common, occurred_at=next(at), step=step, total_steps=steps, checkpoint_key=key
                )
            )
    for phase, done in ((Phase.DECODING, 0.92), (Phase.ENCODING_VIDEO, 0.96), (Phase.UPLOADING, 0.99)):
        events.append(JobProgress(**common, occurred_at=next(at), phase=phase, progress=done))
    result = VideoResult(
        video_key=f"jobs/{job}/attempt-1/video.mp4", poster_key=None, size_bytes=47201, width=848,
        height=480, fps=30, frames=31, duration_seconds=1.033,
    )  # fmt: skip
    events.append(JobSucceeded(**common, occurred_at=next(at), result=result, generation_seconds=1.0))
    return events


def event_log(events: int, steps: int, slots: int, seed: int) -> list[tuple[str, JobEvent]]:
    """About `events` records ("requested" or "events", event): all requests first, then the jobs
    `slots` at a time, their events interleaved as concurrent workers publish them."""
    rng = random.Random(seed)
    t0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    per_job = 1 + len(job_events(uuid.UUID(int=0), t0, 0, steps))
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(max(1, round(events / per_job)))]
    request = resolved_request()
    log: list[tuple[str, JobEvent]] = [("requested", requested(job, t0, request)) for job in ids]
    for wave in range(0, len(ids), slots):
        start = t0 + timedelta(seconds=wave)
        running = [job_events(job, start, slot, steps) for slot, job in enumerate(ids[wave : wave + slots])]
        log += [("events", event) for event in interleave(running)]
    return log


def requested(job: uuid.UUID, at: datetime, request: ResolvedRequest) -> JobRequested:
    return JobRequested(
        job_id=job, occurred_at=at, producer="bench", request=request, tenant="bench", request_hash="0" * 64
    )


def interleave(streams: Sequence[list[JobEvent]]) -> Iterator[JobEvent]:
    for i in range(max(len(s) for s in streams)):
        for stream in streams:
            if i < len(stream):
                yield stream[i]


# --- the producer process ------------------------------------------------------------------------------


async def produce(bootstrap: str, topics: dict[str, str], events: int, steps: int, seed: int) -> None:
    """Encode the log, say "ready", wait for "go" on stdin, publish it all, print the first send's time."""
    records = [(topics[kind], encode_event(event)) for kind, event in event_log(events, steps, 8, seed)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024, client_id="bench-projector-throughput",
    )  # fmt: skip
    await producer.start()
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        first = time.time()
        sends = [
            await producer.send(topic, value=r.value, key=r.key, headers=r.headers) for topic, r in records
        ]
        await asyncio.gather(*sends)
        print(json.dumps({"first_send": first, "acked": time.time(), "records": len(records)}), flush=True)
    finally:
        await producer.stop()


# --- the projector side --------------------------------------------------------------------------------


class TimedStore(Store):
    """The real store, noting when each batch committed and how big it was; `done` is set once
    `expected` records are committed."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        super().__init__(engine, schema)
        self.commits: list[tuple[float, int]] = []
        self.cpu_at_start: dict[str, dict[int, float]] = {}
        self.cpu_at_end: dict[str, dict[int, float]] = {}
        self.applied = 0
        self.expected = 1 << 62
        self.done = asyncio.Event()

    async def apply_batch(self, consumer: str, batch: Sequence[Incoming], *, notify: bool) -> BatchResult:
        result = await super().apply_batch(consumer, batch, notify=notify)
        self.commits.append((time.time(), len(batch)))
        self.applied += len(batch)
        if self.applied >= self.expected and not self.done.is_set():
            self.cpu_at_end = stack_cpu()
            self.done.set()
        return result

    def expect(self, records: int) -> None:
        self.expected = records
        if self.applied >= records and not self.done.is_set():
            self.cpu_at_end = stack_cpu()
            self.done.set()


def stack_cpu() -> dict[str, dict[int, float]]:
    """CPU seconds so far, by process, of the projector (this process), Postgres and Kafka's broker.

    CPU time, unlike events per second, hardly moves with what else the machine runs; so it is the figure
    to compare across days. The producer is its own process and is not counted."""
    found: dict[str, dict[int, float]] = {"projector": {0: time.process_time()}, "postgres": {}, "kafka": {}}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            kafka = comm == "java" and b"kafka" in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if comm == "postgres" or kafka:
            found["kafka" if kafka else "postgres"][int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def cpu_per_event(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], events: int
) -> dict[str, float]:
    """µs of CPU per event by part, from two `stack_cpu` readings (a process that ended in between is
    left out; one that started counts from zero)."""
    return {
        part: sum(seconds - before[part].get(pid, 0.0) for pid, seconds in after[part].items()) / events * 1e6
        for part in after
    }


async def new_topics(admin: AIOKafkaAdminClient) -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    topics = {"requested": f"bench.projector.{tag}.requested", "events": f"bench.projector.{tag}.events"}
    await admin.create_topics(
        [
            NewTopic(topics["requested"], PARTITIONS, 1, topic_configs=dict(BROKER_TIMESTAMPS)),
            NewTopic(topics["events"], PARTITIONS, 1),
        ]
    )
    return topics


async def wait_created(admin: AIOKafkaAdminClient, topics: dict[str, str]) -> None:
    """Until the metadata shows every partition of the topics created just before."""
    deadline = time.monotonic() + 30
    while len(await discover(admin, topics.values())) < len(topics) * PARTITIONS:
        if time.monotonic() > deadline:
            raise RuntimeError("the bench topics never showed up")
        await asyncio.sleep(0.2)


class ProducerProcess:
    """`produce` in a child process, driven over its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, settings: ProjectorSettings, topics: dict[str, str], args: argparse.Namespace
    ) -> ProducerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--produce", json.dumps(topics), "--events", str(args.events),
            "--steps", str(args.steps), "--seed", str(args.seed), "--bootstrap", settings.kafka_bootstrap,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        child = cls(proc)
        line = await child.line()
        if line != "ready":
            raise RuntimeError(f"producer did not start: {line!r}")
        return child

    async def line(self) -> str:
        assert self.proc.stdout is not None
        return (await self.proc.stdout.readline()).decode().strip()

    async def go(self) -> dict[str, Any]:
        """Start publishing; returns the producer's report once every record is acknowledged."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        report: dict[str, Any] = json.loads(await self.line())
        await self.proc.wait()
        return report


async def project_until_done(
    settings: ProjectorSettings, store: TimedStore, producer: ProducerProcess, live: bool
) -> tuple[dict[str, Any], float]:
    """Run the live loop (started before the producer when `live`, after it otherwise) until every
    produced record is committed; returns the producer's report and when the clock started."""
    report: dict[str, Any] = {}
    if not live:
        report = await producer.go()
    stop = asyncio.Event()
    async with open_clients(settings, dead_letters=True) as clients:
        projection = Projection(settings, store, clients)
        store.cpu_at_start = stack_cpu()
        began = time.time()
        await projection.assign()
        task = asyncio.create_task(projection.run(stop))
        try:
            if live:
                report = await producer.go()
                began = report["first_send"]
            store.expect(report["records"])
            finished = asyncio.create_task(store.done.wait())
            await asyncio.wait([finished, task], return_when=asyncio.FIRST_COMPLETED)
            if not store.done.is_set():
                raise RuntimeError("the projector stopped before committing every record")
        finally:
            stop.set()
            await task
    return report, began


async def measure(mode: str, base: ProjectorSettings, args: argparse.Namespace) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=base.kafka_bootstrap, client_id="bench-projector-admin")
    await admin.start()
    engine = make_engine(base, pre_ping=False)
    topics = await new_topics(admin)
    settings = base.model_copy(
        update={
            "requested_topic": topics["requested"],
            "events_topic": topics["events"],
            "consumer_name": f"bench-projector-{uuid.uuid4().hex[:8]}",
        }
    )
    store = TimedStore(engine, f"bench_projector_tp_{uuid.uuid4().hex[:8]}")
    await store.create_schema()
    try:
        await wait_created(admin, topics)
        producer = await ProducerProcess.start(settings, topics, args)
        report, began = await project_until_done(settings, store, producer, mode == "live")
        return summary(mode, store, report, began)
    finally:
        await store.drop_schema()
        await admin.delete_topics(list(topics.values()))
        await admin.close()
        await engine.dispose()


def summary(mode: str, store: TimedStore, report: dict[str, Any], began: float) -> dict[str, Any]:
    commits = [(at, n) for at, n in store.commits if n]
    records = report["records"]
    sizes = [n for _, n in commits]
    seconds = commits[-1][0] - began
    return {
        "mode": mode,
        "events": records,
        "seconds": seconds,
        "events_per_s": records / seconds,
        "producer_events_per_s": records / (report["acked"] - report["first_send"]),
        "transactions": len(commits),
        "batch_mean": statistics.fmean(sizes),
        "batch_median": statistics.median(sizes),
        "batch_max": max(sizes),
        "cpu_us_per_event": cpu_per_event(store.cpu_at_start, store.cpu_at_end, records),
    }


def print_table(results: Sequence[dict[str, Any]], settings: ProjectorSettings) -> None:
    print(
        f"projector throughput, Kafka -> Postgres (batch_max_records={settings.batch_max_records},"
        f" batch_interval_ms={settings.batch_interval_ms})"
    )
    columns = ("run", "events", "seconds", "events/s", "target", "met", "producer events/s", "transactions",
               "batch mean / median / max", "CPU µs/event: projector / Postgres / Kafka")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for r in results:
        cells = (
            r["mode"], r["events"], f"{r['seconds']:.2f}", round(r["events_per_s"]), TARGET,
            "yes" if r["events_per_s"] >= TARGET else "NO", round(r["producer_events_per_s"]),
            r["transactions"], f"{r['batch_mean']:.0f} / {r['batch_median']:.0f} / {r['batch_max']}",
            " / ".join(f"{r['cpu_us_per_event'][part]:.0f}" for part in ("projector", "postgres", "kafka")),
        )  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = ProjectorSettings(service_name="bench-projector")
    return [await measure(mode, settings, args) for mode in args.modes]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=50, help="denoising steps (progress events) per job")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--modes", type=lambda s: s.split(","), default=["live", "catch-up"])
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--produce", help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.produce:
        asyncio.run(produce(args.bootstrap, json.loads(args.produce), args.events, args.steps, args.seed))
        return []
    settle_heap()  # as every service does before it serves (`run_until_signalled`)
    results = asyncio.run(run(args))
    print_table(results, ProjectorSettings(service_name="bench-projector"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
