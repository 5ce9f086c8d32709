"""Fleet benchmark: reelstream's scheduler against competent baselines, on the real local stack.

Eight simulated GPU slots (bench/fleet_worker.py: the real worker process; the GPU's time is Mochi's on
an H100 / --scale: prompt encode, each step, VAE decode; the MP4 encode is stretched to 848x480's host
time) run behind the real scheduler, Kafka, Postgres and S3, with production's settings
(bench/fleet_settings.py; any deviation is printed with the table). The same seeded workload then runs,
in the same run, on the baselines:

- `kafka`: a Kafka consumer group, one requests topic per lane, each worker takes interactive first
  (bench/naive_worker.py, the same `JobRunner`, so the same GPU time, checkpoints, encode and upload);
- `celery-priority`, `celery-shared`, `celery-split`: the seed's Celery+Redis design
  (bench/fleet_celery.py), short-first, round robin, and 4 + 4 pools.

Phases (default: burst and kill):

1. burst: --jobs jobs at once, 20% long (64 steps at 163 frames, batch lane), 80% short (16 steps at 31
   frames, interactive lane); makespan and utilisation against the ideal, waits per lane, ETA error;
2. poisson: the same mix arriving as a Poisson stream at --load of the fleet's capacity;
3. tenants: a noisy tenant's batch backlog and a quiet tenant's jobs (reelstream only);
4. kill: 2 x slots long jobs, so every slot is busy; kill -9 the slot of one of them a quarter step
   before its checkpoint (the most work lost), once left dead, once restarted as Kubernetes would;
   when the job resumed and how much GPU work was lost.

--runs N repeats the measured phases N times on the same processes; each run's raw JSON goes to
bench/results/fleet-<UTC>-run<i>.json with the commit and date, and the table shows min / median / max
(`python -m bench.fleet_report FILES` prints it again from the files).

It takes the services lock (.run/services.lock), stops the normal services, runs its own processes, and
restores the normal services at the end, also on failure.

    python -m bench.fleet --runs 3                          # make bench-fleet: the docs' table, ~45 min
    python -m bench.fleet --jobs 60 --baselines kafka       # a smoke run
    python -m bench.fleet --only kill --baselines none
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
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import fleet_celery, fleet_report
from bench import fleet_kafka as fk
from bench.fleet_procs import Procs, settle
from bench.fleet_settings import as_row, deviations, resolve
from bench.fleet_stats import (
    LONG,
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
RESULTS = ROOT / "bench" / "results"
API = "http://127.0.0.1:8000"
BASELINES = ("kafka", *(f"celery-{m}" for m in fleet_celery.MODES))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=300, help="jobs in the burst")
    p.add_argument("--scale", type=float, default=50.0, help="H100 times are divided by this")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--long-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--runs", type=int, default=1, help="repeat the measured phases (min/median/max)")
    p.add_argument("--poisson-seconds", type=float, default=180.0, help="how long arrivals last")
    p.add_argument("--load", type=float, default=0.8, help="offered load of the Poisson stream")
    p.add_argument("--only", choices=("burst", "poisson", "tenants", "kill"), action="append")
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated, of {', '.join(BASELINES)}; 'none' for reelstream alone",
    )
    p.add_argument("--skip-naive", action="store_true", help=argparse.SUPPRESS)  # = --baselines none
    p.add_argument("--celery-long-slots", type=int, default=4, help="celery-split: slots of the long queue")
    p.add_argument("--noisy-jobs", type=int, default=48, help="tenants phase: the noisy tenant's burst")
    p.add_argument("--quiet-jobs", type=int, default=6, help="tenants phase: the quiet tenant's jobs")
    p.add_argument("--quiet-every", type=float, default=8.0, help="tenants phase: seconds between them")
    p.add_argument(
        "--settle-limit",
        type=float,
        default=20.0,
        help="before each phase, wait at most this long for less than one busy core (a shared machine is "
        "rarely that quiet)",
    )
    p.add_argument("--no-api", action="store_true", help="skip the api/projector (no api ETA)")
    p.add_argument("--api-sample", type=int, default=3, help="ask the api for the ETA of every n-th job")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one setting from production's (printed as a DEVIATION), see bench/fleet_settings.py",
    )
    p.add_argument(
        "--control-plane-nice",
        type=int,
        default=10,
        help="nice level of the api and projector (0: the same priority as the fleet)",
    )
    p.add_argument("--json", type=Path, default=None, help="default bench/results/fleet-<UTC>-run<i>.json")
    p.add_argument(
        "--services-root",
        type=Path,
        default=ROOT,
        help="the checkout whose stack and services run (its .run/: lock, pids, api key); the code "
        "measured is this one's (so a clean worktree of a commit can be measured)",
    )
    args = p.parse_args(argv)
    args.phases = args.only or ["burst", "kill"]
    none = args.baselines == "none" or args.skip_naive
    chosen = [] if none else [b for b in args.baselines.split(",") if b]
    unknown = set(chosen) - set(BASELINES)
    if unknown:
        p.error(f"--baselines: unknown {', '.join(sorted(unknown))}")
    args.baseline_list = chosen
    try:
        args.used = resolve(args.overrides, args.scale)
    except ValueError as e:
        p.error(str(e))
    return args


# ---- the shared services ------------------------------------------------------------------------
@contextlib.contextmanager
def services_lock(root: Path) -> Iterator[None]:
    """Hold the lock every user of the running services takes (e2e tests, benchmarks)."""
    lock_path = root / ".run" / "services.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def normal_services(action: str, root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")}
    result = Procs.run_script(["bash", "infra/services.sh", action], root, env)
    if result != 0:
        print(f"warning: infra/services.sh {action} exited with {result}")


# ---- one design, one phase ----------------------------------------------------------------------
class Design:
    """A system under test on Kafka: where its requests go (by lane), who reads its events, its api."""

    def __init__(self, name: str, requested: dict[str, str], events: str, args: argparse.Namespace) -> None:
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
            headers = auth_headers(self.args.services_root)
            self.api = httpx.AsyncClient(base_url=API, timeout=10, headers=headers)

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

    async def outcomes(self, phase: str, jobs: list[BenchJob], limit_s: float) -> list[Outcome]:
        keys = await self.submit(phase, jobs)
        await self.wait(phase, keys, limit_s)
        return [self.collector.tracks[k].outcome for k in keys]


class CeleryDesign:
    """The Celery+Redis peer in one mode: 8 solo workers on the mode's own Redis database, idle while
    the other designs run."""

    def __init__(self, mode: str, args: argparse.Namespace, procs: Procs) -> None:
        self.mode, self.args, self.procs = mode, args, procs
        self.name = f"celery-{mode}"
        self.peer = fleet_celery.Peer(mode)
        self.warm = False

    def start(self) -> None:
        self.peer.redis.flushdb()
        for slot in range(self.args.slots):
            queues, env = fleet_celery.worker_queues(self.mode, slot, self.args.celery_long_slots)
            argv = fleet_celery.worker_argv(queues, slot)
            self.procs.start(f"celery-{self.mode}-{slot}", argv, env | self.peer.env(slot), None)

    async def outcomes(self, phase: str, jobs: list[BenchJob], limit_s: float) -> list[Outcome]:
        args, costs = self.args, bool(self.args.used["costs"].value)
        await asyncio.to_thread(self.peer.forget_jobs)
        if not self.warm:  # each worker's first task (connections, imports)
            warm = [BenchJob(i, SHORT) for i in range(args.slots * 2)]
            await self.peer.run_workload(warm, args.scale, costs, 60)
            self.warm = True
            await asyncio.to_thread(settle, limit_s=args.settle_limit)
        return await self.peer.run_workload(jobs, args.scale, costs, limit_s)


AnyDesign = Design | CeleryDesign


def phase_limit(jobs: list[BenchJob], args: argparse.Namespace) -> float:
    """How long a phase may take: four times its work spread over the slots, its longest job or its last
    arrival, whichever is longest, and two minutes more (a long job alone lasts 504 s at --scale 1)."""
    work = [j.kind.work(args.scale) for j in jobs]
    return 120 + 4 * max(sum(work) / args.slots, *work, *(j.arrival for j in jobs))


async def measured_phase(design: AnyDesign, procs: Procs, phase: str, jobs: list[BenchJob]) -> dict[str, Any]:
    args = design.args
    limit_s = phase_limit(jobs, args)
    settled_s, busy_before = await asyncio.to_thread(settle, limit_s=args.settle_limit)
    load_before, started, cpu_before = os.getloadavg()[0], time.monotonic(), procs.cpu_snapshot()
    outcomes = await design.outcomes(phase, jobs, limit_s)
    summary = summarize(outcomes, jobs, args.slots, args.scale, bool(args.used["costs"].value))
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
KILL_BEFORE_STEPS = 0.25  # how long before the checkpoint's step ends the slot is killed, in steps


def busy_slots(collector: fk.Collector, keys: list[uuid.UUID]) -> set[int]:
    """Slots whose GPU side runs an attempt of one of `keys` (started, frames not made, not stopped)."""
    return {
        span[0]
        for key in keys
        for span in collector.tracks[key].outcome.spans.values()
        if span[2] is None and collector.tracks[key].outcome.ended is None
    }


def kill_moment(track: fk.Track, boundary: int, every: int, step_s: float) -> float | None:
    """When attempt 1 is `KILL_BEFORE_STEPS` short of the checkpoint at step `boundary` (epoch s),
    from its last published step in the interval before it; None if it has not reached that interval."""
    seen = [
        (step, t) for attempt, step, t in track.steps if attempt == 1 and boundary - every <= step < boundary
    ]
    if not seen:
        return None
    step, t = max(seen)
    return t + (boundary - step - KILL_BEFORE_STEPS) * step_s


async def before_checkpoint(
    design: Design,
    keys: list[uuid.UUID],
    boundary: int,
    dead: set[int],
    done: set[uuid.UUID],
    limit_s: float = 120,
) -> tuple[uuid.UUID, int, float, int] | None:
    """Wait for the worst moment: every live slot busy and a job a quarter step short of its checkpoint
    at `boundary`. Returns the job, its slot, the kill's time and the live slots busy then; None if that
    moment did not come within `limit_s`."""
    args, collector = design.args, design.collector
    every, step_s = int(args.used["checkpoint_every"].value), LONG.step_seconds(args.scale)
    live = set(range(args.slots)) - dead
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = busy_slots(collector, keys)
        if live <= busy:
            for key in keys:
                track = collector.tracks[key]
                slot = track.slots.get(1)
                at = kill_moment(track, boundary, every, step_s)
                if key in done or slot is None or slot in dead or at is None or at < time.time():
                    continue
                await asyncio.sleep(max(0.0, at - time.time()))
                if 2 not in track.started and track.outcome.ended is None:
                    return key, slot, at, len(busy_slots(collector, keys) & live)
        await asyncio.sleep(0.005)
    return None


async def kill_phase(design: Design, procs: Procs) -> list[dict[str, Any]]:
    """2 x slots long jobs; kill -9 the slot of one just before its checkpoint, twice: once left dead,
    once restarted at once."""
    args = design.args
    every = int(args.used["checkpoint_every"].value)
    keys = await design.submit("kill", [BenchJob(i, LONG) for i in range(2 * args.slots)])
    kills: list[dict[str, Any]] = []
    dead: set[int] = set()
    for restart, boundary in ((False, 2 * every), (True, 5 * every)):
        found = await before_checkpoint(design, keys, boundary, dead, {k["job"] for k in kills})
        if found is None:
            print(f"kill: no moment with every slot busy before the checkpoint at step {boundary}")
            continue
        key, slot, planned, busy = found
        killed_at = time.time()
        procs.kill9(f"fleet-{slot}")
        if restart:
            procs.restart(f"fleet-{slot}")
        else:
            dead.add(slot)
        kills.append(
            {
                "job": key,
                "slot": slot,
                "restarted": restart,
                "killed_at": killed_at,
                "planned_at": planned,
                "busy_slots": busy,
            }
        )
    await design.wait("kill", keys, 240)
    if dead:  # the next run needs every slot again
        for slot in dead:
            procs.restart(f"fleet-{slot}")
        await asyncio.to_thread(procs.wait_ready)
    return [fleet_report.kill_result(design.collector.tracks[k["job"]], k, args) for k in kills]


# ---- the whole run ------------------------------------------------------------------------------
async def bench(args: argparse.Namespace, procs: Procs) -> list[dict[str, Any]]:
    settings = CommonSettings()
    await fk.ensure_partitions(settings, JOBS_DISPATCH, args.slots)
    backlog = await fk.unread_dispatches(settings, args.slots)
    if any(backlog.values()):
        # The slots will run these first (the real worker does not skip them), which skews the numbers.
        print(f"warning: unread dispatch records per slot before the run: {backlog}")
    queued = any(p in args.phases for p in ("burst", "poisson"))
    ours = Design("reelstream", {"interactive": JOBS_REQUESTED, "batch": JOBS_REQUESTED}, JOBS_EVENTS, args)
    tag = uuid.uuid4().hex[:12]
    lanes = {lane: f"bench.lanes.{lane}.{tag}" for lane in ("interactive", "batch")}
    events = f"bench.lanes.events.{tag}"
    kafka_topics = {**dict.fromkeys(lanes.values(), args.slots), events: 3}
    kafka = Design("kafka", lanes, events, args) if queued and "kafka" in args.baseline_list else None
    celery = [
        CeleryDesign(b.removeprefix("celery-"), args, procs)
        for b in args.baseline_list
        if queued and b.startswith("celery-")
    ]
    if kafka is not None:
        await fk.create_topics(settings, kafka_topics)
    runs: list[dict[str, Any]] = []
    measured = commit()  # the code the processes start from, whatever is committed while they run
    try:
        await start_fleet(args, procs, kafka, lanes, events, tag, celery)
        rss = procs.rss_mb()
        await ours.start(with_api=not args.no_api)
        if kafka is not None:
            await kafka.start(with_api=False)
        for design in (d for d in (ours, kafka) if d is not None):
            warm = warmup_jobs(WARMUP_PER_SLOT * args.slots, int(design is ours))
            await design.outcomes("warmup", warm, max(300, phase_limit(warm, args)))  # a cold stack's too
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
        for run in range(1, args.runs + 1):
            results: dict[str, Any] = {"phases": {}, "kill": [], "unread_dispatches_at_start": backlog}
            results |= {"run": run, "runs": args.runs, "rss_mb": rss, "stamp": stamp, "commit": measured}
            runs.append(results)
            await run_phases(args, procs, ours, kafka, celery, results)
            report(results, args)
    finally:
        await finish(ours, kafka, procs, settings, list(kafka_topics))
    return runs


async def start_fleet(
    args: argparse.Namespace,
    procs: Procs,
    kafka: Design | None,
    lanes: dict[str, str],
    events: str,
    tag: str,
    celery: list[CeleryDesign],
) -> None:
    procs.start_scheduler(args)
    procs.start_workers(args)
    if not args.no_api:
        procs.start_api_and_projector(args)
    if kafka is not None:
        topics = [lanes["interactive"], lanes["batch"]]
        procs.start_naive(args, topics, events, f"bench-lanes-{tag}")
    if celery:
        procs.start("redis", fleet_celery.redis_argv(), {}, None)
        await asyncio.to_thread(fleet_celery.wait_redis)
        for design in celery:
            design.start()
    await asyncio.to_thread(procs.wait_ready)
    for design in celery:
        await asyncio.to_thread(design.peer.wait_workers, args.slots)
    if kafka is not None:
        await asyncio.to_thread(procs.wait_group_settled, args.slots, 2)


async def run_phases(
    args: argparse.Namespace,
    procs: Procs,
    ours: Design,
    kafka: Design | None,
    celery: list[CeleryDesign],
    results: dict[str, Any],
) -> None:
    designs: list[AnyDesign] = [d for d in (ours, kafka) if d is not None]
    designs += celery
    phases = results["phases"]

    async def each(phase: str, jobs: list[BenchJob]) -> None:
        for design in designs:
            phases[f"{design.name} {phase}"] = await measured_phase(design, procs, phase, jobs)
            save(results, args)

    if "burst" in args.phases:
        await each("burst", burst(args.jobs, args.long_share, args.seed))
    if "poisson" in args.phases:
        stream = poisson(
            args.poisson_seconds,
            load=args.load,
            slots=args.slots,
            long_share=args.long_share,
            scale=args.scale,
            seed=args.seed + 1,
        )
        await each("poisson", stream)
    if "tenants" in args.phases:  # fair share between tenants: reelstream only (the baselines have none)
        jobs = noisy_neighbour(args.noisy_jobs, args.quiet_jobs, args.quiet_every)
        phases["reelstream tenants"] = await measured_phase(ours, procs, "tenants", jobs)
        save(results, args)
    if "kill" in args.phases:
        await asyncio.to_thread(settle, limit_s=args.settle_limit)
        results["kill"] = await kill_phase(ours, procs)
        save(results, args)


async def finish(
    ours: Design, kafka: Design | None, procs: Procs, settings: CommonSettings, topics: list[str]
) -> None:
    """Leave the queue clean: cancel what is still open, then stop the baselines and drop their topics.

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
    for design in (ours, kafka):
        if design is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await design.close()
    procs.stop_matching("celery-")
    procs.stop_matching("redis")
    if kafka is not None:
        procs.stop_matching("naive-")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await fk.delete_topics(settings, topics)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    RUN.mkdir(parents=True, exist_ok=True)
    if dev := deviations(args.used):
        print("deviations from production's settings: " + "; ".join(dev))
    # SIGTERM becomes an exception, so the finally below still restores the normal services.
    signal.signal(signal.SIGTERM, _terminated)
    with services_lock(args.services_root):
        normal_services("stop", args.services_root)
        procs = Procs(ROOT, RUN, infra_root=args.services_root)
        try:
            runs = asyncio.run(bench(args, procs))
        finally:
            procs.stop_all()
            normal_services("start", args.services_root)
    if len(runs) > 1:
        print(fleet_report.render_runs(runs), flush=True)
    return runs


def commit() -> str:
    """HEAD, marked when the tree has changes: taken when a run starts, it names the code measured."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    head = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def path_of(results: dict[str, Any], args: argparse.Namespace) -> Path:
    if args.json is not None:
        return args.json if results["runs"] == 1 else args.json.with_suffix(f".run{results['run']}.json")
    return RESULTS / f"fleet-{results['stamp']}-run{results['run']}.json"


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the JSON (also after each phase, so a run cut short keeps what it measured)."""
    results["config"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "used"
    }
    results["settings"] = [as_row(u) for u in args.used.values()]
    results["machine"] = {
        "cpus": os.cpu_count(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_1_5_15": os.getloadavg(),
    }
    path = path_of(results, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(results), indent=2, default=str))


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    save(results, args)
    print(fleet_report.render(results), flush=True)


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
