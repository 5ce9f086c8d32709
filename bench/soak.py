"""Soak: the real local stack under a Poisson mix of tiny-mochi jobs and SSE watchers, with a random fault
every 30-60 s, then a drain and a check of every delivery guarantee (docs/benchmarks.md, "Soak").

    .venv/bin/python bench/soak.py --seconds 600 --seed 1       (make soak SOAK_SECONDS=600)

It holds `.run/services.lock` for the whole run, starts the services if they are not running (and stops
them at the end only then), prints a table, writes bench/results/soak-<time>.json, and exits 1 on any
violation: a lost, duplicated or stuck job, an orphan object, an undocumented 5xx, a watcher that did not
see its job end exactly once, a read model that differs from a replay, or a fault that failed its check.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from bench import soak_gather as gather
from bench.soak_check import TERMINAL_STATUSES, Observed, Submission, Verdict, WatcherResult, evaluate, table
from bench.soak_client import Api, PlannedJob, cancel, final_read, plan_jobs, submit, watch
from bench.soak_faults import FaultLog, plan_faults
from tests.e2e.chaos import SERVICES, pid_of, replay_differences, restore, sh, stack_up, start_services

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STACK = ("postgres", "kafka", "s3")


@dataclasses.dataclass(slots=True)
class Run:
    """One soak in progress: what it asked for and what the watchers saw."""

    args: argparse.Namespace
    t0: float
    name: str
    api: Api
    faults: FaultLog
    submissions: list[Submission] = dataclasses.field(default_factory=list)
    watchers: list[WatcherResult] = dataclasses.field(default_factory=list)
    sent: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)  # the submits
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)  # cancels and watchers

    @property
    def load_end(self) -> float:
        return self.t0 + float(self.args.seconds)

    @property
    def watch_until(self) -> float:
        return self.load_end + float(self.args.drain_seconds) + 60


def log(run: Run, text: str) -> None:
    print(f"[{time.monotonic() - run.t0:6.1f}s] {text}", flush=True)


async def follow(run: Run, job: PlannedJob, sub: Submission, sent: asyncio.Task[None]) -> None:
    """Once the submit is answered: perhaps cancel the job, and perhaps watch it to its end."""
    await sent
    if sub.job_id is None:
        return
    if job.cancel_after is not None:
        sub.cancel = True
        run.tasks.append(asyncio.create_task(cancel(run.api, sub.job_id, job.cancel_after)))
    if job.watch_after is not None:
        await asyncio.sleep(job.watch_after)
        result = WatcherResult(sub.job_id)
        run.watchers.append(result)
        await watch(run.api, result, job.drop_after, run.watch_until)


async def load(run: Run) -> None:
    jobs = plan_jobs(run.args.seed, run.args.seconds, run.args.mean_gap, run.args.max_jobs, run.name)
    due = run.t0
    for job in jobs:
        due += job.gap
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        key = f"soak-{run.name}-{job.n}"
        sub = Submission(job.n, key, job.body["prompt"], job.body, time.monotonic() - run.t0)
        run.submissions.append(sub)
        sent = asyncio.create_task(submit(run.api, sub, give_up_at=run.load_end + 30))
        run.sent.append(sent)
        run.tasks.append(asyncio.create_task(follow(run, job, sub, sent)))
    log(run, f"load done: {len(jobs)} jobs submitted or on their way")


async def faults(run: Run) -> None:
    """Inject the planned faults, one at a time, none starting in the last 20 s of the load."""
    started = run.t0
    for fault in plan_faults(run.args.seed, run.args.seconds):
        at = max(started + fault.gap, time.monotonic() + 5)
        if at > run.load_end - 20:
            return
        await asyncio.sleep(at - time.monotonic())
        started = time.monotonic()
        await run.faults.inject(fault, run.api)


async def drain(run: Run) -> dict[str, str]:
    """Everything running again, then wait (bounded) until every accepted job ends and the tasks finish."""
    try:
        if any(pid_of(part) is None for part in STACK):
            await stack_up()
        await restore()
    except (AssertionError, pytest.fail.Exception) as e:
        log(run, f"could not bring everything back before the drain: {str(e)[-800:]}")
    deadline = time.monotonic() + run.args.drain_seconds
    if run.sent:  # submits still retrying give up at the end of the load + 30 s
        await asyncio.wait(run.sent, timeout=max(1.0, run.load_end + 45 - time.monotonic()))
    accepted = [s.job_id for s in run.submissions if s.job_id]
    open_jobs = await gather.wait_terminal(accepted, run.args.drain_seconds)
    pending = [t for t in run.tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(5.0, deadline - time.monotonic()))
    for task in (*run.sent, *run.tasks):
        task.cancel()
    for result in run.watchers:
        if not result.terminals and not result.error:
            result.error = "still watching when the drain ended"
    log(run, f"drained: {len(accepted) - len(open_jobs)} of {len(accepted)} accepted jobs terminal")
    return open_jobs


async def observe(run: Run) -> Observed:
    accepted = [s.job_id for s in run.submissions if s.job_id]
    by_prompt = await gather.jobs_by_prompt(f"soak {run.name} #")
    ids = sorted(set(accepted) | {j for rows in by_prompt.values() for j in rows})
    views = await gather.views(ids)
    objects = await gather.settled_objects(ids)
    semaphore = asyncio.Semaphore(8)

    async def read(job_id: str) -> tuple[str, list[str] | str]:
        async with semaphore:
            return job_id, await final_read(run.api, job_id)

    finished = [j for j in ids if j in views and views[j].status in TERMINAL_STATUSES]
    sse = dict(await asyncio.gather(*(read(j) for j in finished)))
    poisons = [f["poison_job"] for f in run.faults.records if f.get("poison_job")]
    not_jobs = await gather.objects(poisons)
    rows = await gather.views(poisons)
    for job_id in poisons:
        not_jobs[job_id] += [f"read model row ({rows[job_id].status})"] if job_id in rows else []
    log(run, f"read back {len(views)} rows, {sum(map(len, objects.values()))} objects; replaying")
    return Observed(
        submissions=run.submissions,
        jobs=views,
        jobs_by_prompt=by_prompt,
        objects=objects,
        sse_terminals=sse,
        watchers=run.watchers,
        fivexx=run.api.fivexx,
        faults=run.faults.records,
        replay=await replay_differences("soak"),
        not_jobs=not_jobs,
    )


def report(run: Run, verdict: Verdict, obs: Observed, open_jobs: dict[str, str]) -> Path:
    extra = {
        "api down (refused connections)": dict(run.api.api_down),
        "requests cut or timed out": dict(run.api.transport),
        "services that exited in stack restarts": [
            n for f in run.faults.records for n in f.get("exited", [])
        ],
        "watcher reconnects (early hang-ups)": (
            f"{sum(max(0, w.connections - 1) for w in run.watchers)} "
            f"({sum(w.early_disconnects for w in run.watchers)})"
        ),
    }
    print(table(verdict.counts, extra))
    for note in verdict.notes:
        print(f"note: {note}")
    for violation in verdict.violations:
        print(f"VIOLATION: {violation}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"soak-{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}.json"
    raw: dict[str, Any] = {
        "run": run.name,
        "args": vars(run.args),
        "counts": verdict.counts,
        "extra": extra,
        "violations": verdict.violations,
        "notes": verdict.notes,
        "open_after_drain": open_jobs,
        "answers": dict(run.api.answers),
        "observed": dataclasses.asdict(obs),
    }
    path.write_text(json.dumps(raw, indent=1, default=str))
    print(f"raw results: {path.relative_to(ROOT)}")
    return path


async def soak(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    fault_log = FaultLog(t0)
    name = f"{datetime.now(UTC):%Y%m%d%H%M%S}-s{args.seed}-{uuid.uuid4().hex[:4]}"
    run = Run(args, t0, name, Api(t0, fault_log.now), fault_log)
    log(run, f"soak {name}: {args.seconds:.0f}s of load, seed {args.seed}")
    try:
        await asyncio.gather(load(run), faults(run))
        open_jobs = await drain(run)
        obs = await observe(run)
    finally:
        await run.api.close()
    verdict = evaluate(obs)
    report(run, verdict, obs, open_jobs)
    return 1 if verdict.violations else 0


async def main(args: argparse.Namespace) -> int:
    """Bring up what is down; run the soak; stop the services at the end only if none ran before."""
    if any(pid_of(part) is None for part in STACK):
        rc, out = await sh("make", "up", timeout=300)
        if rc != 0:
            print(out[-3000:], file=sys.stderr)
            return 2
    none_ran = all(pid_of(name) is None for name in SERVICES)
    await start_services()
    try:
        return await soak(args)
    finally:
        if none_ran:
            await sh("bash", "infra/services.sh", "stop", timeout=120)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600, help="load and faults (default 600)")
    p.add_argument("--seed", type=int, default=1, help="draws the jobs and the faults (default 1)")
    p.add_argument("--mean-gap", type=float, default=3.0, help="mean seconds between submits (default 3)")
    p.add_argument("--max-jobs", type=int, default=400, help="at most this many submits (default 400)")
    p.add_argument("--drain-seconds", type=float, default=90, help="bound on the drain (default 90)")
    p.add_argument("--lock-wait", type=float, default=900, help="wait for the services lock (default 900)")
    return p.parse_args()


def holders(lock: Path) -> list[str]:
    """The processes that have the lock file open (a service started under the shell's `flock` keeps it)."""
    out = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.resolve() == lock:
                cmd = (fd.parents[1] / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                out.append(f"{fd.parents[1].name}: {cmd}")
        except OSError:
            continue
    return sorted(set(out))


def locked(lock: Path, wait: float) -> IO[str] | None:
    """The open `lock`, taken (waiting up to `wait` seconds); held while the handle stays open."""
    handle = lock.open("w")
    deadline = time.monotonic() + wait
    print(f"waiting for {lock.relative_to(ROOT)} (at most {wait:.0f}s) ...", flush=True)
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(1)
        else:
            return handle


if __name__ == "__main__":
    arguments = parse()
    LOCK = ROOT / ".run" / "services.lock"
    LOCK.parent.mkdir(exist_ok=True)
    # One user of the running services at a time, as the e2e tests and benchmarks do.
    held = locked(LOCK, arguments.lock_wait)
    if held is None:
        print(f"{LOCK} is still held after {arguments.lock_wait:.0f}s, by:", *holders(LOCK), sep="\n  ")
        sys.exit(3)
    with held:
        sys.exit(asyncio.run(main(arguments)))
