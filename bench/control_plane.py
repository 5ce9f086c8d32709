"""Control-plane benchmark: what the api, projector and scheduler cost a user, from outside, on the local
stack, with the workers on the simulated generator (so that the CPU the tiny model would burn does not
count), beside the seed's Celery+Redis design behind a REST face of the same shape (bench/peer_celery.py).

    .venv/bin/python bench/control_plane.py [--seconds 20] [--clients 32] [--watchers 2000]

Phases, in this order so that each starts from an idle queue where it should:
1. per-job overhead at 10 jobs/s (an open loop: each job starts on its schedule, whatever the ones before
   it take): submit -> worker start (started_at - created_at) and worker end -> `job.succeeded` seen by
   an SSE client (receipt - the event's occurred_at);
2. watchers: N SSE streams on one job, opened before it starts; delay of every event to every client,
   and how many streams saw the terminal event. The target's job runs at a real job's pace (an H100's
   step, production's checkpoint and preview settings: `REAL_PACE`) and waits for a slot behind a job
   on each while its streams open; then the same on a job of the other phases' pace (0.02 s a step, a
   checkpoint every 2 steps; the workers paused while the streams open), for information: its events
   come 50 times as often as a real job's;
3. submit: `--clients` closed-loop clients POST for `--seconds`; every 10th 202 is read back at once;
4. reads: GET job and GET list while the jobs of phase 3 wait (their number is printed);
5. the peer: submit rate and per-job overhead of Celery+Redis on the same loads.

Each design first runs `WARMUP_SECONDS` of phase 1's load, not measured: the services and the peer are
started by the benchmark, and a long-running deployment's consumers have made their first fetches and
its processes their first connections long before a user's job comes.

While they work through the burst's backlog (phases 3 and 4, and while they start), the workers (ours and
the peer's) run at nice 19: what they spend themselves, encoding and uploading the simulated videos, is a
GPU node's CPU in a deployment, so it yields to the control plane here; everything they publish is still
consumed. With one job at a time (phases 1, 2 and 5's overhead) they run at nice 0, as a niced worker's
events would wait for CPU before they are even published.

It holds `.run/services.lock`, restarts the services with simulated workers, and restarts them as they
were at the end. It prints one table (measured, target, ratio) and writes raw JSON under out/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from bench.control_load import Submits, Watch, hops_probe, paced, pct, read_load, submit_load, watch
from bench.fleet_settings import production
from bench.fleet_stats import step_seconds
from schemas.topics import JOBS_EVENTS
from services.cli.config import auth_headers
from services.common.readmodel import NOTIFY_CHANNEL

ROOT = Path(__file__).resolve().parents[1]
API = "http://127.0.0.1:8000"
KAFKA = "127.0.0.1:9092"
PEER_API = "http://127.0.0.1:8100"
PEER_REDIS_PORT = 6390
DSN = "postgresql://reelstream:reelstream@127.0.0.1:5432/reelstream"
WARMUP_SECONDS = 3.0  # of phase 1's load, before each design's measured overhead
BACKLOG_NICE = 19  # the workers' CPU priority while they work through a burst (see the docstring)
SIMULATED = {
    "REELSTREAM_SIMULATE": "true",
    "REELSTREAM_SIMULATED_SECONDS_PER_STEP": "0.02",
}
# The watched job of phase 2 at a real job's pace: an H100's step (Mochi, 31 frames) and production's
# worker settings (k8s/base/kustomization.yaml: a checkpoint every 8 steps and 30 s at most, a preview
# every 4 steps and 5 s at most, progress every 0.25 s), so its events come as often as a real job's.
# At 0.02 s a step with the local services' checkpoint every 2 steps, a job sends an event every few ms.
WORKER_KNOBS = ("checkpoint_every", "checkpoint_min_seconds", "preview_every_steps", "preview_min_seconds")
REAL_PACE = {
    **SIMULATED,
    "REELSTREAM_SIMULATED_SECONDS_PER_STEP": str(step_seconds(31, 1.0)),
    **{f"REELSTREAM_{k.upper()}": str(v) for k, v in production().items() if k in WORKER_KNOBS},
}


def job_body(n: int, priority: str = "batch", quality: str = "low") -> dict[str, Any]:
    return {
        "prompt": f"control plane #{n}: a harbour at dawn",
        "model": "tiny-mochi",
        "quality": quality,
        "num_frames": 7,
        "width": 64,
        "height": 64,
        "priority": priority,
    }


# --- the services ----------------------------------------------------------------------------------


def services(command: str, env: dict[str, str] | None = None) -> None:
    run = subprocess.run(
        ["bash", "infra/services.sh", command],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        sys.exit(f"infra/services.sh {command} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def worker_pids() -> list[int]:
    """The running workers (a pid file left by a stopped one may name another process by now)."""
    pids = []
    for pid_file in (ROOT / ".run").glob("worker-*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().strip())
            if b"services.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def nice(pid: int, value: int) -> None:
    """Set the CPU priority of `pid`, a session leader. With the kernel's autogroups on, as they are on a
    desktop or a CI runner, a session's nice is that of its autogroup; without them, that of each thread."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(value))
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), value)


def nice_workers(value: int) -> None:
    for pid in worker_pids():
        nice(pid, value)


def start_services(env: dict[str, str] = SIMULATED) -> None:
    """`services.sh start` with simulated workers, each at BACKLOG_NICE from the moment its pid file names
    it (its start, importing torch, is a GPU node's CPU too), at nice 0 once all are ready."""
    done = threading.Event()

    def nice_new_workers() -> None:
        niced: set[int] = set()
        while not done.wait(0.05):
            for pid in set(worker_pids()) - niced:
                nice(pid, BACKLOG_NICE)
                niced.add(pid)

    watcher = threading.Thread(target=nice_new_workers, daemon=True)
    watcher.start()
    try:
        services("start", env)
    finally:
        done.set()
        watcher.join()
    nice_workers(0)


def stop_workers() -> None:
    """SIGTERM every worker and wait until they are gone (the other services stay up)."""
    pids = worker_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)


@contextlib.contextmanager
def services_lock() -> Iterator[None]:
    lock = ROOT / ".run" / "services.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as handle:
        print("waiting for .run/services.lock ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- phases ----------------------------------------------------------------------------------------


async def overhead(http: aiohttp.ClientSession, rate: float, seconds: float) -> dict[str, Any]:
    """Jobs at `rate`/s (an open loop, as the peer's), each followed over SSE; per job submit -> start
    and end -> seen."""

    async def one(n: int) -> tuple[str, Watch]:
        async with http.post(f"{API}/v1/jobs", json=job_body(n, priority="interactive")) as response:
            job_id = (await response.json())["id"]
        w = Watch()
        await watch(API, job_id, w, within=120)
        return job_id, w

    async with hops_probe(KAFKA, JOBS_EVENTS, DSN, NOTIFY_CHANNEL) as hops:
        watches, kept = await paced(rate, seconds, one)
    to_start, to_seen, hops_seen = [], [], []
    for job_id, w in watches:
        async with http.get(f"{API}/v1/jobs/{job_id}") as response:
            job = await response.json()
        if job["status"] != "succeeded" or w.terminal != "job.succeeded" or not w.delays or not w.terminal_at:
            continue
        created = datetime.fromisoformat(job["created_at"])
        to_start.append((datetime.fromisoformat(job["started_at"]) - created).total_seconds())
        to_seen.append(w.delays[-1])
        if (split := hops.split(job_id, w.terminal_at - w.delays[-1], w.terminal_at)) is not None:
            hops_seen.append(split)
    return {
        "jobs": len(watches),
        "rate": kept,
        "succeeded": len(to_start),
        "submit_to_start": to_start,
        "end_to_seen": to_seen,
        "end_to_seen_hops": hops_seen,
    }


def signal_workers(signum: int) -> None:
    for pid in worker_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def watchers(
    http: aiohttp.ClientSession, count: int, env: dict[str, str], *, blockers: bool
) -> dict[str, Any]:
    """`count` streams on one job, opened before it starts; the workers are restarted with `env` first.

    blockers: every slot first takes a job of its own (at `env`'s pace, 8 steps), and the watched job
    waits for a slot while its streams open, as a job waits in production. Else the workers are paused
    (SIGSTOP) while the streams open, and go on after: a faster job ends before blockers could be
    counted on, and a worker restarted while the job is dispatched would spend its first second
    importing torch, which is not what a watcher waits for in production. The streams open in a few
    seconds, within the scheduler's 10 s before it counts a paused slot dead."""
    await asyncio.to_thread(stop_workers)
    await asyncio.to_thread(start_services, env)
    if blockers:
        for n in range(len(worker_pids())):
            async with http.post(f"{API}/v1/jobs", json=job_body(-1 - n, "batch", "high")) as response:
                response.raise_for_status()
        await wait_running(len(worker_pids()), within=60)
    else:
        signal_workers(signal.SIGSTOP)
    async with http.post(f"{API}/v1/jobs", json=job_body(0, "interactive", "high")) as response:
        job_id = (await response.json())["id"]
    streams = [Watch() for _ in range(count)]
    tasks = []
    rss_before = api_rss_mib()
    opened = time.perf_counter()
    for w in streams:
        tasks.append(asyncio.create_task(watch(API, job_id, w, within=240)))
        await asyncio.sleep(0)  # let each connect in turn rather than 2,000 handshakes at once
    await asyncio.gather(*(w.connected.wait() for w in streams))
    open_seconds = time.perf_counter() - opened
    rss = api_rss_mib()
    if not blockers:
        signal_workers(signal.SIGCONT)
    cpu_before = api_cpu_seconds()
    await asyncio.gather(*tasks)
    cpu = api_cpu_seconds() - cpu_before
    delays = [d for w in streams for d in w.delays]
    return {
        "streams": count,
        "open_seconds": open_seconds,
        "api_rss_mib_before": rss_before,
        "api_rss_mib_with_streams": rss,
        "terminal_seen": sum(w.terminal is not None for w in streams),
        "errors": sorted({w.error for w in streams if w.error}),
        "delays": delays,
        "api_cpu_seconds": cpu,
        "api_cpu_us_per_frame": 1e6 * cpu / max(len(delays), 1),
    }


def api_cpu_seconds() -> float:
    """User and system CPU of the api process so far (0 when it cannot be read)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((ROOT / ".run" / "api.pid").read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def api_rss_mib() -> float | None:
    pid_file = ROOT / ".run" / "api.pid"
    with contextlib.suppress(OSError, ValueError):
        status = Path(f"/proc/{int(pid_file.read_text())}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def queued_count() -> int:
    conn = await asyncpg.connect(DSN)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'queued'"))
    finally:
        await conn.close()


async def wait_running(count: int, within: float) -> None:
    """Wait until `count` jobs run (each slot has taken one)."""
    conn = await asyncpg.connect(DSN)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'running'")) >= count:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def wait_idle(within: float) -> int:
    """Wait until no job waits or runs (a run's leftovers being cancelled would delay the next phase);
    returns how many still did at the end."""
    conn = await asyncpg.connect(DSN)
    deadline = time.monotonic() + within
    try:
        while True:
            left = int(await conn.fetchval("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"))
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def cancel_all(http: aiohttp.ClientSession, ids: list[str]) -> None:
    """Cancel what phase 3 left waiting, so that the stack ends idle."""
    conn = await asyncpg.connect(DSN)
    try:
        rows = await conn.fetch(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND id = ANY($1::uuid[])", ids
        )
    finally:
        await conn.close()
    pending = [str(r["id"]) for r in rows]
    limit = asyncio.Semaphore(16)

    async def cancel(job_id: str) -> None:
        async with limit, http.post(f"{API}/v1/jobs/{job_id}/cancel") as response:
            await response.read()

    await asyncio.gather(*(cancel(job_id) for job_id in pending))


# --- the peer --------------------------------------------------------------------------------------


def peer_commands(slots: int) -> list[list[str]]:
    """redis-server, one solo Celery worker per slot, and the peer's REST face."""
    redis_server = f"redis-server --port {PEER_REDIS_PORT} --bind 127.0.0.1 --save '' --appendonly no"
    celery = "-m celery -A bench.peer_celery worker --pool solo -Q peer --without-heartbeat --without-gossip"
    workers = [
        [sys.executable, *celery.split(), "--without-mingle", "--loglevel", "WARNING", "-n", f"peer{slot}@%h"]
        for slot in range(slots)
    ]
    api = "-m uvicorn bench.peer_celery:api --port 8100 --log-level warning --no-access-log"
    return [shlex.split(redis_server), *workers, [sys.executable, *api.split()]]


def start_peer(slots: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PEER_REDIS_URL": f"redis://127.0.0.1:{PEER_REDIS_PORT}/0",
        "PEER_STEP_SECONDS": SIMULATED["REELSTREAM_SIMULATED_SECONDS_PER_STEP"],
    }
    procs = []
    for argv in peer_commands(slots):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, **quiet)
        if "celery" in argv:
            nice(proc.pid, BACKLOG_NICE)  # while it starts; see `peer`
        procs.append(proc)
        if argv[0] == "redis-server":
            time.sleep(0.5)
    deadline = time.monotonic() + 60
    while not answers(f"{PEER_API}/openapi.json"):
        if time.monotonic() > deadline:
            stop_peer(procs)
            sys.exit("the Celery peer did not start")
        time.sleep(0.3)
    time.sleep(3)  # the Celery workers connect
    return procs


def stop_peer(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


@contextlib.asynccontextmanager
async def peer(slots: int) -> AsyncIterator[Callable[[int], None]]:
    """The peer, running; what it yields sets its workers' nice."""
    procs = await asyncio.to_thread(start_peer, slots)

    def nice_peer_workers(value: int) -> None:
        for proc in procs:
            if "celery" in proc.args:
                nice(proc.pid, value)

    try:
        yield nice_peer_workers
    finally:
        await asyncio.to_thread(stop_peer, procs)


async def peer_overhead(http: aiohttp.ClientSession, rate: float, seconds: float) -> dict[str, Any]:
    """The same jobs at `rate`/s on the peer; the end is seen by polling its GET every 20 ms (it has no
    stream)."""

    async def one(n: int) -> tuple[float, float] | None:
        async with http.post(f"{PEER_API}/v1/jobs", json=job_body(n, priority="interactive")) as response:
            job_id = (await response.json())["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            async with http.get(f"{PEER_API}/v1/jobs/{job_id}") as response:
                job = await response.json()
            if job.get("status") == "succeeded":
                return job["started"] - job["created"], time.time() - job["finished"]
            await asyncio.sleep(0.02)
        return None

    results, kept = await paced(rate, seconds, one)
    done = [r for r in results if r is not None]
    return {
        "jobs": len(results),
        "rate": kept,
        "succeeded": len(done),
        "submit_to_start": [a for a, _ in done],
        "end_to_seen": [b for _, b in done],
    }


def warmup_summary(warmup: dict[str, Any]) -> dict[str, int]:
    """What a warm-up is kept as: how many of its jobs ran to the end."""
    return {"jobs": warmup["jobs"], "succeeded": warmup["succeeded"]}


# --- the table -------------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[tuple[str, float, float, str, str]]:
    """(what, measured, target, unit, better) for every target."""
    sub: Submits = r["submit"]
    over, peer_over, w, reads = r["overhead"], r["peer_overhead"], r["watchers"], r["reads"]
    ms = 1000
    out = [
        ("overhead: jobs started a second (the load)", over["rate"], 10, "/s", "info"),
        ("submit: accepted/s (32 clients)", sub.rate, 500, "/s", "higher"),
        ("submit: p99 latency", pct(sub.latencies, 99) * ms, 50, "ms", "lower"),
        ("submit: GET right after 202 is 404", sub.read_after.get(404, 0), 0, "", "lower"),
        ("watchers: event -> client p99 (a real job's pace)", pct(w["delays"], 99) * ms, 100, "ms", "lower"),
        ("watchers: streams without the terminal event", w["streams"] - w["terminal_seen"], 0, "", "lower"),
        (f"reads: GET job p99 ({reads['queued']} queued)", pct(reads["get"], 99) * ms, 20, "ms", "lower"),
        (f"reads: GET list p99 ({reads['queued']} queued)", pct(reads["list"], 99) * ms, 20, "ms", "lower"),
        ("overhead: submit -> worker start p50", pct(over["submit_to_start"], 50) * ms, 50, "ms", "lower"),
        ("overhead: worker end -> succeeded seen p50", pct(over["end_to_seen"], 50) * ms, 50, "ms", "lower"),
    ]
    hops = over.get("end_to_seen_hops") or []
    for n, hop in enumerate(("worker -> a Kafka consumer", "-> projected (NOTIFY)", "-> the SSE client")):
        out.append((f"overhead: end -> seen, {hop} p50", pct([h[n] for h in hops], 50) * ms, 0, "ms", "info"))
    before, after = w.get("api_rss_mib_before"), w.get("api_rss_mib_with_streams")
    if before is not None and after is not None:
        out.append(
            ("watchers: api memory per idle stream", (after - before) * 1024 / w["streams"], 0, "KiB", "info")
        )
    cpu = w["api_cpu_us_per_frame"]
    out.append(("watchers: api CPU per live frame delivered", cpu, 0, "µs", "info"))
    if (fast := r.get("watchers_fast")) is not None:
        quick = "watchers, a job 50x faster:"
        out += [
            ("watchers: live events per stream", len(w["delays"]) / w["streams"], 0, "", "info"),
            (f"{quick} event -> client p99", pct(fast["delays"], 99) * ms, 0, "ms", "info"),
            (f"{quick} streams without the end", fast["streams"] - fast["terminal_seen"], 0, "", "info"),
            (f"{quick} live events per stream", len(fast["delays"]) / fast["streams"], 0, "", "info"),
        ]
    if r.get("peer_submit") is not None:
        ps: Submits = r["peer_submit"]
        out += [
            ("peer: overhead jobs started a second", peer_over["rate"], 10, "/s", "info"),
            ("peer (Celery+Redis): accepted/s", ps.rate, 500, "/s", "higher"),
            ("peer: submit p99 latency", pct(ps.latencies, 99) * ms, 50, "ms", "lower"),
            (
                "peer: submit -> worker start p50",
                pct(peer_over["submit_to_start"], 50) * ms,
                50,
                "ms",
                "lower",
            ),
            (
                "peer: worker end -> seen p50 (20 ms polls)",
                pct(peer_over["end_to_seen"], 50) * ms,
                50,
                "ms",
                "lower",
            ),
        ]
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| what | measured | target | ratio | met |", "|---|---:|---:|---:|:-:|"]
    for what, measured, target, unit, better in rows(r):
        if better == "info":
            lines.append(f"| {what} | {measured:,.1f} {unit} | | | |")
            continue
        if better == "higher":
            ratio, met = (measured / target if target else float("inf")), measured >= target
        else:
            ratio, met = (measured / target if target else float(measured)), measured <= target
        verdict = "yes" if met else "NO"
        lines.append(f"| {what} | {measured:,.1f} {unit} | {target:,} {unit} | {ratio:.2f} | {verdict} |")
    return "\n".join(lines)


def raw(r: dict[str, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Submits):
            return {
                "seconds": value.seconds,
                "rate": value.rate,
                "statuses": dict(value.statuses),
                "read_after": dict(value.read_after),
                "latencies": value.latencies,
            }
        return value

    return {k: plain(v) for k, v in r.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {"args": vars(args)}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    headers = auth_headers(ROOT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as http:
        if left := await wait_idle(300):
            print(f"warning: {left} jobs still open before the run", flush=True)
        r["overhead_warmup"] = warmup_summary(await overhead(http, 10, WARMUP_SECONDS))
        await wait_idle(60)
        print("1. per-job overhead at 10 jobs/s", flush=True)
        r["overhead"] = await overhead(http, 10, args.seconds)
        print(f"2. {args.watchers} watchers on a job at a real job's pace, then 50x faster", flush=True)
        r["watchers"] = await watchers(http, args.watchers, REAL_PACE, blockers=True)
        await wait_idle(120)
        r["watchers_fast"] = await watchers(http, args.watchers, SIMULATED, blockers=False)  # phase 3's
        print(f"3. submit: {args.clients} clients for {args.seconds:.0f} s", flush=True)
        nice_workers(BACKLOG_NICE)
        r["submit"] = await submit_load(http, API, job_body, clients=args.clients, seconds=args.seconds)
        queued = await queued_count()
        print(f"4. reads with {queued} jobs queued", flush=True)
        r["reads"] = {"queued": queued, **await read_load(http, API, r["submit"].ids, clients=8, seconds=10)}
        await cancel_all(http, r["submit"].ids)
        r["left_open_after_cancel"] = await wait_idle(300)
        r["peer_submit"] = None
        if args.peer:
            print("5. the Celery+Redis peer: overhead at 10 jobs/s, then submit", flush=True)
            async with peer(slots=2) as nice_peer_workers:
                nice_peer_workers(0)
                r["peer_overhead_warmup"] = warmup_summary(await peer_overhead(http, 10, WARMUP_SECONDS))
                r["peer_overhead"] = await peer_overhead(http, 10, args.seconds)
                nice_peer_workers(BACKLOG_NICE)
                r["peer_submit"] = await submit_load(
                    http, PEER_API, job_body, clients=args.clients, seconds=args.seconds
                )
    return r


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=2000)
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with services_lock():
        were_running = answers(f"{API}/healthz")
        services("stop")
        start_services()
        try:
            # uvloop, as the api runs on: the load generator shares the two cores with what it measures.
            result = uvloop.run(run(args))
        finally:
            services("stop")
            if were_running:
                services("start")
    print(table(result))
    path = args.json or ROOT / "out" / f"control_plane-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(exist_ok=True)
    meta = {"commit": commit(), "date": datetime.now(UTC).isoformat(), "cores": os.cpu_count()}
    path.write_text(json.dumps({**meta, **raw(result)}, indent=1, default=str))
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
