"""Fleet benchmark: reelstream's scheduler against the naive design, on the real local stack.

Eight simulated GPU slots (bench/fleet_worker.py: the real worker process, sleeping Mochi's H100 step
time / --scale per step) run behind the real scheduler, Kafka, Postgres and S3. The same seeded workload
then runs on the naive design (bench/naive_worker.py: eight processes in one consumer group reading the
requests directly). Phases:

1. burst: --jobs jobs at once, 20% long (64 steps at 163 frames, batch lane), 80% short (16 steps at 31
   frames, interactive lane); makespan and utilisation against work / slots, waits per lane, ETA error;
2. poisson: the same mix arriving as a Poisson stream at --load of the fleet's capacity;
3. kill: kill -9 the slot of a long job mid-denoise (once left dead, once restarted as Kubernetes would)
   and measure when the job resumed and how much GPU work was lost.

It takes the services lock (.run/services.lock), stops the normal services, runs its own processes, and
restores the normal services at the end, also on failure. Output: a markdown table on stdout and JSON.

    .venv/bin/python bench/fleet.py                      # everything, about 20 minutes
    .venv/bin/python bench/fleet.py --jobs 60 --poisson-seconds 30 --skip-naive   # a smoke run
    .venv/bin/python bench/fleet.py --only kill
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fleet_kafka as fk
import fleet_report
import httpx
from fleet_procs import Procs, settle
from fleet_stats import (
    LONG,
    PACING_HELP,
    PACINGS,
    SHORT,
    BenchJob,
    Outcome,
    QueueView,
    burst,
    noisy_neighbour,
    poisson,
    summarize,
)

from schemas.topics import JOBS_DISPATCH, JOBS_EVENTS, JOBS_REQUESTED
from services.cli.config import auth_headers
from services.common.kafka import make_producer
from services.common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run" / "bench-fleet"
LOCK = ROOT / ".run" / "services.lock"
API = "http://127.0.0.1:8000"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=300, help="jobs in the burst")
    p.add_argument("--scale", type=float, default=50.0, help="H100 step times are divided by this")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--long-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--poisson-seconds", type=float, default=180.0, help="how long arrivals last")
    p.add_argument("--load", type=float, default=0.8, help="offered load of the Poisson stream")
    p.add_argument("--only", choices=("burst", "poisson", "tenants", "kill"), action="append")
    p.add_argument("--noisy-jobs", type=int, default=48, help="tenants phase: the noisy tenant's burst")
    p.add_argument("--quiet-jobs", type=int, default=6, help="tenants phase: the quiet tenant's jobs")
    p.add_argument("--quiet-every", type=float, default=8.0, help="tenants phase: seconds between them")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--no-api", action="store_true", help="skip the api/projector (no api ETA)")
    p.add_argument("--api-sample", type=int, default=3, help="ask the api for the ETA of every n-th job")
    p.add_argument("--checkpoint-every", type=int, default=8, help="denoising steps")
    p.add_argument(
        "--checkpoint-min-seconds",
        type=float,
        default=0.6,
        help="workers: no checkpoint within this long of the start or the last one (production's 30 s / 50)",
    )
    p.add_argument("--progress-interval", type=float, default=0.5, help="seconds between progress events")
    p.add_argument(
        "--control-plane-nice",
        type=int,
        default=10,
        help="nice level of the api and projector (0: the same priority as the fleet)",
    )
    p.add_argument("--step-pacing", choices=PACINGS, default="gpu", help=PACING_HELP)
    p.add_argument("--dead-after", type=float, default=5.0, help="scheduler: heartbeat silence = dead")
    p.add_argument("--lost-grace", type=float, default=3.0, help="scheduler: restarted-slot grace")
    p.add_argument("--tick", type=float, default=0.2, help="scheduler: longest wait between plans")
    p.add_argument(
        "--lookahead", type=float, default=0.5, help="scheduler: dispatch this long before a slot is free"
    )
    p.add_argument(
        "--balance-gain",
        type=float,
        default=1.2,
        help="scheduler: least slot time a preemption must save (its default 60 s / scale); 0 = no balancing",
    )
    p.add_argument("--json", type=Path, default=ROOT / "out" / "fleet.json")
    args = p.parse_args(argv)
    args.phases = args.only or ["burst", "poisson", "tenants", "kill"]
    return args


# ---- the shared services ------------------------------------------------------------------------
@contextlib.contextmanager
def services_lock() -> Iterator[None]:
    """Hold the lock every user of the running services takes (e2e tests, benchmarks)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def normal_services(action: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    result = Procs.run_script(["bash", "infra/services.sh", action], ROOT, env)
    if result != 0:
        print(f"warning: infra/services.sh {action} exited with {result}")


# ---- one design, one phase ----------------------------------------------------------------------
class Design:
    """One system under test: where its requests go, who reads its events, whether its api answers."""

    def __init__(self, name: str, requested: str, events: str, args: argparse.Namespace) -> None:
        self.name, self.requested, self.args = name, requested, args
        self.settings = CommonSettings()
        self.collector = fk.Collector(self.settings, events, args.slots, args.scale)
        self.producer = make_producer(self.settings, f"bench-fleet-{name}")
        self.api: httpx.AsyncClient | None = None
        self.keys: list[uuid.UUID] = []

    async def start(self, with_api: bool) -> None:
        await self.producer.start()
        await self.collector.start()
        if with_api:
            self.api = httpx.AsyncClient(base_url=API, timeout=10, headers=auth_headers(ROOT))

    async def close(self) -> None:
        await self.collector.stop()
        await self.producer.stop()
        if self.api is not None:
            await self.api.aclose()

    async def submit(self, phase: str, jobs: list[BenchJob]) -> list[uuid.UUID]:
        """Submit `jobs` on their arrival times; returns their ids once the last one is acknowledged."""
        self.collector.view = QueueView(self.args.slots, self.args.scale)
        tags = {"bench": "fleet", "design": self.name, "phase": phase}
        submitter = fk.Submitter(
            self.producer, self.requested, self.collector, self.api, self.args.api_sample
        )
        keys = await submitter.run(jobs, tags)
        self.keys += keys
        return keys

    async def wait(self, phase: str, keys: list[uuid.UUID], limit_s: float) -> None:
        if not await self.collector.wait_done(keys, limit_s):
            still = len(self.collector.open_jobs(keys))
            print(f"{self.name} {phase}: {still} jobs still open after {limit_s:.0f} s")

    async def run(self, phase: str, jobs: list[BenchJob], limit_s: float) -> list[uuid.UUID]:
        keys = await self.submit(phase, jobs)
        await self.wait(phase, keys, limit_s)
        return keys

    def outcomes(self, keys: list[uuid.UUID]) -> list[Outcome]:
        return [self.collector.tracks[k].outcome for k in keys]


async def measured_phase(design: Design, procs: Procs, phase: str, jobs: list[BenchJob]) -> dict[str, Any]:
    args = design.args
    work = sum(j.kind.work(args.scale) for j in jobs)
    limit_s = 120 + 4 * max(work / args.slots, *(j.arrival for j in jobs))
    settled_s, busy_before = await asyncio.to_thread(settle)
    load_before, started, cpu_before = os.getloadavg()[0], time.monotonic(), procs.cpu_snapshot()
    keys = await design.run(phase, jobs, limit_s)
    outcomes = design.outcomes(keys)
    summary = summarize(outcomes, jobs, args.slots, args.scale)
    summary |= {
        "design": design.name,
        "wall_s": time.monotonic() - started,
        "load_1min": [load_before, os.getloadavg()[0]],
        "settled": {"waited_s": settled_s, "busy_cores": busy_before},
        "cpu_s": procs.cpu_delta(cpu_before, procs.cpu_snapshot()),
        "jobs_detail": [dataclasses.asdict(o) | {"kind": o.kind.name} for o in outcomes],
    }
    print(f"{design.name} {phase}: {fleet_report.one_line(summary)}", flush=True)
    return summary


# Short jobs per slot before a design's first phase: every slot's first encode and S3 client, and enough
# traffic that a freshly started Kafka and S3Proxy have compiled their hot paths (2 per slot was not:
# a phase right after `make up` ran with S3 uploads ~7x slower).
WARMUP_PER_SLOT = 8


def warmup_jobs(count: int, longs: int) -> list[BenchJob]:
    """Every slot runs (first encode, S3 client) and the api learns both step times."""
    return [BenchJob(i, LONG) for i in range(longs)] + [BenchJob(longs + i, SHORT) for i in range(count)]


# ---- the kill test ------------------------------------------------------------------------------
async def running_at(design: Design, keys: list[uuid.UUID], step: int, skip: set[uuid.UUID]) -> uuid.UUID:
    """The first job (not in `skip`) whose first attempt has reached `step`."""
    while True:
        for key in keys:
            track = design.collector.tracks[key]
            if key not in skip and any(a == 1 and s >= step for a, s, _ in track.steps):
                return key
        await asyncio.sleep(0.02)


async def kill_phase(design: Design, procs: Procs) -> list[dict[str, Any]]:
    """kill -9 the slot of a long job mid-interval, twice: once left dead, once restarted at once."""
    args, every = design.args, design.args.checkpoint_every
    keys = await design.submit("kill", [BenchJob(i, LONG) for i in range(3)])
    kills: list[dict[str, Any]] = []
    for restart, step in ((False, 2 * every + every // 2), (True, 5 * every + every // 2)):
        key = await running_at(design, keys, step, {k["job"] for k in kills})
        slot = design.collector.tracks[key].slots[1]
        killed_at = time.time()
        procs.kill9(f"fleet-{slot}")
        if restart:
            procs.restart(f"fleet-{slot}")
        kills.append({"job": key, "slot": slot, "restarted": restart, "killed_at": killed_at})
    await design.wait("kill", keys, 180)
    return [fleet_report.kill_result(design.collector.tracks[k["job"]], k, args) for k in kills]


# ---- the whole run ------------------------------------------------------------------------------
async def bench(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    settings = CommonSettings()
    await fk.ensure_partitions(settings, JOBS_DISPATCH, args.slots)
    backlog = await fk.unread_dispatches(settings, args.slots)
    if any(backlog.values()):
        # The slots will run these first (the real worker does not skip them), which skews the numbers.
        print(f"warning: unread dispatch records per slot before the run: {backlog}")
    naive_needed = not args.skip_naive and any(p in args.phases for p in ("burst", "poisson"))
    ours = Design("reelstream", JOBS_REQUESTED, JOBS_EVENTS, args)
    tag = uuid.uuid4().hex[:12]
    requested, events = f"bench.naive.requested.{tag}", f"bench.naive.events.{tag}"
    naive_topics = {requested: args.slots, events: 3}
    naive = Design("naive", requested, events, args) if naive_needed else None
    if naive is not None:
        await fk.create_topics(settings, naive_topics)
    results: dict[str, Any] = {"phases": {}, "kill": [], "unread_dispatches_at_start": backlog}
    try:
        await start_fleet(args, procs, naive is not None, tag)
        results["rss_mb"] = procs.rss_mb()
        await ours.start(with_api=not args.no_api)
        if naive is not None:
            await naive.start(with_api=False)
        await run_phases(args, procs, ours, naive, results)
    finally:
        await finish(ours, naive, procs, settings, list(naive_topics))
    return results


async def start_fleet(args: argparse.Namespace, procs: Procs, naive: bool, tag: str) -> None:
    procs.start_scheduler(args)
    procs.start_workers(args)
    if not args.no_api:
        procs.start_api_and_projector(args)
    if naive:
        procs.start_naive(args, tag)
    await asyncio.to_thread(procs.wait_ready)
    if naive:
        await asyncio.to_thread(procs.wait_group_settled, args.slots)


async def run_phases(
    args: argparse.Namespace, procs: Procs, ours: Design, naive: Design | None, results: dict[str, Any]
) -> None:
    designs = [d for d in (ours, naive) if d is not None]
    for design in designs:
        await design.run("warmup", warmup_jobs(WARMUP_PER_SLOT * args.slots, 1 if design is ours else 0), 300)
    phases = results["phases"]
    if "burst" in args.phases:
        jobs = burst(args.jobs, args.long_share, args.seed)
        for design in designs:
            phases[f"{design.name} burst"] = await measured_phase(design, procs, "burst", jobs)
            save(results, args)
    if "poisson" in args.phases:
        jobs = poisson(
            args.poisson_seconds,
            load=args.load,
            slots=args.slots,
            long_share=args.long_share,
            scale=args.scale,
            seed=args.seed + 1,
        )
        for design in designs:
            phases[f"{design.name} poisson"] = await measured_phase(design, procs, "poisson", jobs)
            save(results, args)
    if "tenants" in args.phases:  # fair share between tenants: reelstream only (the baselines have none)
        jobs = noisy_neighbour(args.noisy_jobs, args.quiet_jobs, args.quiet_every)
        phases["reelstream tenants"] = await measured_phase(ours, procs, "tenants", jobs)
        save(results, args)
    if "kill" in args.phases:
        results["kill"] = await kill_phase(ours, procs)


async def finish(
    ours: Design, naive: Design | None, procs: Procs, settings: CommonSettings, topics: list[str]
) -> None:
    """Leave the queue clean: cancel what is still open, then stop the naive fleet and drop its topics.

    Best effort and bounded in time (Kafka may be the thing that failed); what is left is printed.
    """
    left = ours.collector.open_jobs(ours.keys)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(90):
            if left:
                print(f"cancelling {len(left)} open benchmark jobs")
                await fk.cancel(ours.producer, left)
                await ours.collector.wait_done(left, 60)
                left = ours.collector.open_jobs(ours.keys)
    if left:
        print(f"still open, cancel them by hand: {' '.join(map(str, left))}")
    for design in (ours, naive):
        if design is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await design.close()
    if naive is not None:
        procs.stop_matching("naive-")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await fk.delete_topics(settings, topics)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    RUN.mkdir(parents=True, exist_ok=True)
    # SIGTERM becomes an exception, so the finally below still restores the normal services.
    signal.signal(signal.SIGTERM, _terminated)
    with services_lock():
        normal_services("stop")
        procs = Procs(ROOT, RUN)
        try:
            results = asyncio.run(bench(args, procs))
            report(results, args)  # before the restore: the numbers survive whatever happens next
        finally:
            procs.stop_all()
            normal_services("start")
    return results


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the JSON (also after each phase, so a run cut short keeps what it measured)."""
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["machine"] = {"cpus": os.cpu_count(), "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_plain(results), indent=2, default=str))


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    save(results, args)
    print(fleet_report.render(results, args), flush=True)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def _plain(value: Any) -> Any:
    """JSON has no NaN: metrics without data become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


if __name__ == "__main__":
    main()
