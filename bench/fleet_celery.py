"""The Celery+Redis peer on the fleet benchmark's workload: the seed's design as a baseline.

The design of `../shared/peers/celery_seed/` (peer.py, bench.py): Celery on Redis, one solo worker
process per GPU slot, a job hash per job in Redis, `acks_late` with `reject_on_worker_lost` so a killed
worker's task comes back, prefetch 1, two queues (`short-low` for the interactive lane, `long-high` for
the batch lane). Modes, as the seed's bench names them:

- `priority`: every worker reads both queues, short first (the Redis transport's
  `queue_order_strategy=priority`);
- `shared`: every worker reads both queues, round robin (Celery's default);
- `split`: the seed's pools, `--long-slots` (4) workers on `long-high`, the others on `short-low`.

The task spends the same simulated time as a reelstream slot (`fleet_stats`: prompt encode, steps,
VAE decode, then the MP4 encode, on the same worker: the seed encodes inside the task) with plain
sleeps, and writes its progress to the job hash after every step as the seed does. It stores no video.

    python -m celery -A bench.fleet_celery worker --pool solo -Q short-low,long-high   (one per slot)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import redis
from celery import Celery
from celery.signals import worker_ready

from bench.fleet_stats import (
    KINDS,
    BenchJob,
    Outcome,
    decode_seconds,
    encode_seconds,
    prompt_seconds,
    step_seconds,
)

PORT: Final = int(os.environ.get("PEER_REDIS_PORT", "6391"))  # bench/peer_celery.py uses 6390
REDIS_URL: Final = os.environ.get("PEER_REDIS_URL", f"redis://127.0.0.1:{PORT}/0")
MODES: Final = ("priority", "shared", "split")
QUEUES: Final = {"interactive": "short-low", "batch": "long-high"}

app = Celery("fleet-peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUES["interactive"],
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": 3600,  # Celery's default for Redis, as the seed
        "queue_order_strategy": os.environ.get("PEER_QUEUE_ORDER", "round_robin"),
    },
)
_redis = redis.Redis.from_url(REDIS_URL)


@worker_ready.connect
def _announce(**_: Any) -> None:
    _redis.sadd("workers-ready", os.environ.get("PEER_SLOT", "?"))


@app.task(name="fleet-generate")  # type: ignore[untyped-decorator]
def generate(job_id: str, kind: str, scale: float, costs: bool = True) -> str:
    """One job: the GPU's time as sleeps, the progress in the job hash, then the encode."""
    job = KINDS[kind]
    key = f"job:{job_id}"
    _redis.hincrby(key, "attempts", 1)
    _redis.hset(key, mapping={"status": "RUNNING", "started": time.time(), "slot": os.environ["PEER_SLOT"]})
    if costs:
        time.sleep(prompt_seconds(scale))
    per_step = step_seconds(job.num_frames, scale)
    for step in range(1, job.steps + 1):
        time.sleep(per_step)
        _redis.hset(key, mapping={"progress": int(100 * step / job.steps), "step": step})
    if costs:
        time.sleep(decode_seconds(job.num_frames, scale))
    _redis.hset(key, "generated", time.time())
    if costs:
        time.sleep(encode_seconds(job.num_frames, scale))
    _redis.hset(key, mapping={"status": "SUCCEEDED", "finished": time.time()})
    return job_id


# ---- the driver (in the benchmark's process) ------------------------------------------------------
def worker_queues(mode: str, slot: int, long_slots: int) -> tuple[str, dict[str, str]]:
    """The queues a slot's worker reads (in order) and its environment, by mode."""
    both = f"{QUEUES['interactive']},{QUEUES['batch']}"
    if mode == "split":
        queues = QUEUES["batch"] if slot < long_slots else QUEUES["interactive"]
        return queues, {"PEER_QUEUE_ORDER": "round_robin"}
    if mode in ("priority", "shared"):
        return both, {"PEER_QUEUE_ORDER": "priority" if mode == "priority" else "round_robin"}
    raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")


def worker_argv(queues: str, slot: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.fleet_celery",
        "worker",
        "--pool",
        "solo",
        "-Q",
        queues,
        "-n",
        f"slot{slot}@%h",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "WARNING",
    ]


def redis_argv() -> list[str]:
    return ["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def wait_redis(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _redis.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Peer:
    """The driver's side of one mode: its own Redis database, so the three modes' workers can all be up
    (idle) at once and each run needs no worker start."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.url = f"redis://127.0.0.1:{PORT}/{MODES.index(mode) + 1}"
        self.redis = redis.Redis.from_url(self.url)
        self.client = Celery(f"fleet-peer-{mode}", broker=self.url)

    def env(self, slot: int) -> dict[str, str]:
        return {"PEER_REDIS_URL": self.url, "PEER_SLOT": str(slot)}

    def wait_workers(self, slots: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.redis.scard("workers-ready") < slots:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.mode}: {self.redis.scard('workers-ready')} of {slots} workers ready"
                )
            time.sleep(0.3)

    def forget_jobs(self) -> None:
        """Drop the last phase's job hashes (the queues are empty once every job succeeded)."""
        keys = list(self.redis.scan_iter("job:*", count=1000))
        if keys:
            self.redis.delete(*keys)

    async def run_workload(
        self, jobs: Sequence[BenchJob], scale: float, costs: bool, limit_s: float
    ) -> list[Outcome]:
        """Submit `jobs` on their arrival times as the seed's api does (job hash, then the task),
        wait until every job succeeded or `limit_s` passed, and read what happened from the hashes."""
        loop = asyncio.get_running_loop()
        t0, keys = loop.time(), []
        for job in jobs:
            if (delay := t0 + job.arrival - loop.time()) > 0:
                await asyncio.sleep(delay)
            job_id = str(uuid.uuid4())
            self.redis.hset(f"job:{job_id}", mapping={"submitted": time.time(), "lane": job.kind.lane})
            args = (job_id, job.kind.name, scale, costs)
            self.client.send_task("fleet-generate", args=args, queue=QUEUES[job.kind.lane])
            keys.append(job_id)
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            states = self.redis.pipeline()
            for key in keys:
                states.hget(f"job:{key}", "status")
            if all(s == b"SUCCEEDED" for s in await asyncio.to_thread(states.execute)):
                break
            await asyncio.sleep(0.2)
        return [outcome(job, self._hash(key)) for job, key in zip(jobs, keys, strict=True)]

    def _hash(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(f"job:{job_id}").items()}


def outcome(job: BenchJob, h: dict[str, str]) -> Outcome:
    """A job hash as the benchmark's `Outcome` (one attempt: the seed keeps no history of attempts)."""
    o = Outcome(job.kind, float(h["submitted"]), tenant=job.tenant)
    if "started" in h:
        o.started, o.slot = float(h["started"]), int(h["slot"])
        o.spans[1] = [o.slot, o.started, float(h["generated"]) if "generated" in h else None]
    if h.get("status") == "SUCCEEDED":
        o.ended, o.status = float(h["finished"]), "succeeded"
    return o
