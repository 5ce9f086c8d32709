"""Scheduler restart benchmark: restart-to-ready with a snapshot against a full replay, on a long history.

Writes a history of `--events` records (default 1,000,000) onto fresh topics laid out like the contract's:
finished jobs with their whole lifecycle (request, dispatch announcement and record, start, progress,
checkpoints, success; some retried after a lost slot, some preempted and resumed, some cancelled while
waiting), slot heartbeats, and a few open jobs (waiting, running). Then, with the scheduler's own code
(`services.scheduler.main.prepare`, the same clients `serve` builds):

1. a full replay (restoring off), after which the real snapshot writer stores a snapshot, as the live
   scheduler does at a clean shutdown;
2. `--tail` more records (new jobs, more heartbeats) that the snapshot does not reflect;
3. a restart from the snapshot, and a full replay of the same topics, each timed from building the clients
   to the end of the first planning round (ready to dispatch); both states must be equal.

Prints a table (measured against the 5 s target) and writes JSON (default out/scheduler_restart.json).
The history is produced fast: each job kind's records are encoded once, and every job of that kind is
the same bytes with its own job id, sent without awaiting each record (large batches, linger).

    uv run --no-sync python bench/scheduler_restart.py                 # 1,000,000 events, ~5 min on 2 cores
    uv run --no-sync python bench/scheduler_restart.py --events 50000  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from schemas.envelope import Record, encode_event, encode_heartbeat
from schemas.events import (
    JobCancelled,
    JobCancelRequested,
    JobCheckpointed,
    JobDispatched,
    JobPreempted,
    JobPreemptRequested,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    SlotState,
    VideoResult,
    WorkerHeartbeat,
)
from schemas.jobs import JobRequest, Phase, Priority, resolve
from schemas.topics import SNAPSHOT_MAX_BYTES
from services.common.kafka import make_consumer, make_producer
from services.common.runtime import settle_heap
from services.common.storage import checkpoint_key
from services.scheduler.main import Scheduler, prepare
from services.scheduler.plan import plan
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import SchedulerState
from services.scheduler.store import SnapshotWriter
from services.scheduler.topics import SchedulerTopics

TARGET_SECONDS: Final = 5.0
SLOTS: Final = 8
PARTITIONS: Final = 6
TEMPLATE_JOB: Final = uuid.UUID("00000000-0000-4000-8000-000000000000")
# Finished jobs by kind, per 100: most succeed at once, a few are retried, preempted or cancelled.
FINISHED_MIX: Final = (("succeeded", 88), ("retried", 5), ("preempted", 5), ("cancelled", 2))
Role = str  # which input topic a record goes to: requested, events, control, dispatch, heartbeat


def _request(priority: Priority) -> Any:
    return resolve(
        JobRequest(prompt="a red fox in fresh snow, slow pan", model="mochi-1-preview", priority=priority)
    )


def _result() -> VideoResult:
    return VideoResult(
        video_key="videos/x.mp4",
        poster_key="videos/x.jpg",
        size_bytes=120_000,
        width=96,
        height=64,
        fps=30,
        frames=7,
        duration_seconds=0.2,
    )


@dataclass
class _Job:
    """Builds one job's records in the order its producers publish them."""

    job_id: uuid.UUID
    slot: int
    at: datetime
    priority: Priority = Priority.INTERACTIVE

    def __post_init__(self) -> None:
        self.request = _request(self.priority)
        self.records: list[tuple[Role, BaseModel]] = []

    def tick(self, seconds: float = 0.5) -> datetime:
        self.at += timedelta(seconds=seconds)
        return self.at

    def add(self, role: Role, event: BaseModel) -> None:
        self.records.append((role, event))

    def common(self, producer: str, attempt: int) -> dict[str, Any]:
        return {"job_id": self.job_id, "producer": producer, "attempt": attempt, "occurred_at": self.tick()}

    def requested(self) -> None:
        self.add("requested", JobRequested(**self.common("api", 0), request=self.request, request_hash="h"))

    def dispatched(self, attempt: int, checkpoint: str | None = None) -> None:
        event = JobDispatched(
            **self.common("scheduler", attempt),
            slot=self.slot,
            request=self.request,
            resume_checkpoint=checkpoint,
        )
        self.add("events", event)
        self.add("dispatch", event)

    def run(self, attempt: int, first: int, last: int, checkpoint_every: int = 8) -> None:
        worker = f"worker-{self.slot}"
        self.add("events", JobStarted(**self.common(worker, attempt), slot=self.slot, worker_id=worker))
        total = self.request.num_inference_steps
        for step in range(first + 1, last + 1):
            if step % 3 == 0 or step == last:
                self.add(
                    "events",
                    JobProgress(
                        **self.common(worker, attempt),
                        phase=Phase.DENOISING,
                        progress=step / total,
                        step=step,
                        total_steps=total,
                        seconds_per_step=0.5,
                    ),
                )
            if step % checkpoint_every == 0:
                key = self.checkpoint_key(attempt, step)
                self.add(
                    "events",
                    JobCheckpointed(
                        **self.common(worker, attempt), step=step, total_steps=total, checkpoint_key=key
                    ),
                )

    def succeed(self, attempt: int) -> None:
        worker = f"worker-{self.slot}"
        self.add(
            "events",
            JobProgress(**self.common(worker, attempt), phase=Phase.ENCODING_VIDEO, progress=1.0),
        )
        self.add(
            "events", JobSucceeded(**self.common(worker, attempt), result=_result(), generation_seconds=9)
        )

    def checkpoint_key(self, attempt: int, step: int) -> str:
        return checkpoint_key(self.job_id, attempt, step)


def lifecycle(kind: str, job_id: uuid.UUID, slot: int, at: datetime) -> list[tuple[Role, BaseModel]]:
    """One job's records, by kind: finished ones (succeeded, retried, preempted, cancelled) and open
    ones (waiting, running: started and checkpointed, not finished; preempted_waiting: to resume)."""
    job = _Job(
        job_id,
        slot,
        at,
        Priority.BATCH if kind in ("preempted", "preempted_waiting") else Priority.INTERACTIVE,
    )
    job.requested()
    total = job.request.num_inference_steps
    if kind in ("waiting", "cancelled"):
        if kind == "cancelled":
            job.add("control", JobCancelRequested(**job.common("api", 0)))
            job.add("events", JobCancelled(**job.common("scheduler", 0)))
        return job.records
    job.dispatched(1)
    if kind == "retried":
        job.run(1, 0, total // 2)
        retrying = JobRetrying(**job.common("scheduler", 1), reason="slot silent", next_attempt=2)
        job.add("events", retrying)
        job.add("control", retrying)
        job.dispatched(2, job.checkpoint_key(1, 8))
        job.run(2, 8, total)
        job.succeed(2)
    elif kind in ("preempted", "preempted_waiting"):
        job.add("control", JobPreemptRequested(**job.common("scheduler", 1), at_step=8, reason="balance"))
        job.run(1, 0, 8)
        key = job.checkpoint_key(1, 8)
        job.add(
            "events",
            JobPreempted(
                **job.common(f"worker-{slot}", 1),
                step=8,
                total_steps=total,
                checkpoint_key=key,
                reason="asked",
            ),
        )
        if kind == "preempted":
            job.dispatched(2, key)
            job.run(2, 8, total)
            job.succeed(2)
    elif kind == "running":
        job.run(1, 0, total // 2)
    else:
        job.run(1, 0, total)
        job.succeed(1)
    return job.records


def heartbeat(slot: int, at: datetime, boot: uuid.UUID, job: uuid.UUID | None = None) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        producer=f"worker-{slot}",
        slot=slot,
        worker_id=f"worker-{slot}",
        boot_id=boot,
        state=SlotState.BUSY if job else SlotState.IDLE,
        occurred_at=at,
        job_id=job,
        attempt=1 if job else None,
        model="mochi-1-preview",
        seconds_per_step=0.5,
    )


def encode(role: Role, event: BaseModel) -> Record:
    if isinstance(event, WorkerHeartbeat):
        return encode_heartbeat(event)
    return encode_event(event)  # type: ignore[arg-type]


# ---- writing the history -----------------------------------------------------------------------------
@dataclass
class Template:
    """A job kind's records encoded once; a job of that kind is the same bytes with its own id."""

    records: list[tuple[Role, Record]]

    @classmethod
    def of(cls, kind: str, slot: int, at: datetime) -> Template:
        return cls([(role, encode(role, e)) for role, e in lifecycle(kind, TEMPLATE_JOB, slot, at)])

    def render(self, job_id: uuid.UUID) -> Iterator[tuple[Role, Record]]:
        old, new = str(TEMPLATE_JOB).encode(), str(job_id).encode()
        for role, r in self.records:
            headers = [(k, v.replace(old, new)) for k, v in r.headers]
            yield role, Record(r.key.replace(old, new), r.value.replace(old, new), headers)


def bench_topics(run: str) -> SchedulerTopics:
    p = f"bench.scheduler.{run}"
    return SchedulerTopics(
        requested=f"{p}.jobs.requested",
        events=f"{p}.jobs.events",
        control=f"{p}.jobs.control",
        dispatch=f"{p}.jobs.dispatch",
        heartbeat=f"{p}.workers.heartbeat",
        snapshot=f"{p}.scheduler.snapshot",
    )


def _new_topics(topics: SchedulerTopics) -> list[NewTopic]:
    compact = {"cleanup.policy": "compact"}
    layout = [
        (topics.requested, PARTITIONS, {}),
        (topics.events, PARTITIONS, {}),
        (topics.control, PARTITIONS, {}),
        (topics.dispatch, SLOTS, {}),
        (topics.heartbeat, PARTITIONS, compact),
        (topics.snapshot, 1, compact | {"max.message.bytes": str(SNAPSHOT_MAX_BYTES)}),
    ]
    return [NewTopic(name, n, 1, topic_configs=c) for name, n, c in layout]


async def create_topics(bootstrap: str, topics: SchedulerTopics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-scheduler-restart")
    await admin.start()
    try:
        await admin.create_topics(_new_topics(topics))
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topics: SchedulerTopics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-scheduler-restart")
    await admin.start()
    try:
        await admin.delete_topics([*topics.inputs, topics.snapshot])
    finally:
        await admin.close()


class Writer:
    """Sends records without awaiting each: large batches, a linger, acks from the leader only (a
    benchmark's history, not a system of record)."""

    def __init__(self, bootstrap: str, topics: SchedulerTopics) -> None:
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="bench-scheduler-restart",
            acks=1,
            linger_ms=50,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        self.pending: list[asyncio.Future[Any]] = []
        self.sent = 0

    async def send(self, role: Role, record: Record) -> None:
        topic = getattr(self.topics, role)
        self.pending.append(
            await self.producer.send(topic, value=record.value, key=record.key, headers=record.headers)
        )
        self.sent += 1
        if len(self.pending) >= 50_000:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.gather(*self.pending)
        self.pending.clear()


async def write_history(writer: Writer, events: int, start: datetime, open_jobs: int) -> dict[str, int]:
    """About `events` records: finished jobs in the mix, a heartbeat per slot every few jobs, then
    `open_jobs` open ones (most waiting, one running per slot, some preempted, waiting to resume)."""
    templates = {
        (kind, slot): Template.of(kind, slot, start) for kind, _ in FINISHED_MIX for slot in range(SLOTS)
    }
    per_job = sum(len(templates[k, 0].records) * n for k, n in FINISHED_MIX) / 100 + 1
    finished = max(int((events - open_jobs * 1.2) / per_job), 0)
    kinds = [k for k, n in FINISHED_MIX for _ in range(n)]
    boots = [uuid.uuid4() for _ in range(SLOTS)]
    counts: dict[str, int] = {}
    for i in range(finished):
        kind, slot = kinds[i % len(kinds)], i % SLOTS
        for role, record in templates[kind, slot].render(uuid.uuid4()):
            await writer.send(role, record)
        await writer.send("heartbeat", encode_heartbeat(heartbeat(slot, start, boots[slot])))
        counts[kind] = counts.get(kind, 0) + 1
    now = datetime.now(UTC)
    for i in range(open_jobs):
        kind = "running" if i < SLOTS else ("preempted_waiting" if i % 10 == 0 else "waiting")
        for role, event in lifecycle(kind, uuid.uuid4(), i % SLOTS, now):
            await writer.send(role, encode(role, event))
        counts[kind] = counts.get(kind, 0) + 1
    for slot in range(SLOTS):
        await writer.send("heartbeat", encode_heartbeat(heartbeat(slot, now, boots[slot])))
    await writer.flush()
    return counts


async def write_tail(writer: Writer, records: int) -> int:
    """New jobs after the snapshot, as `records` more records: what a restart from it must fold."""
    now, written = datetime.now(UTC), 0
    while written < records:
        for role, event in lifecycle("succeeded", uuid.uuid4(), written % SLOTS, now):
            await writer.send(role, encode(role, event))
            written += 1
    await writer.flush()
    return written


# ---- restarting --------------------------------------------------------------------------------------
async def restart(settings: SchedulerSettings, topics: SchedulerTopics) -> tuple[float, Scheduler, bool]:
    """What `serve` does before its first decision, timed from building the clients to the end of the
    first planning round. Returns the seconds, the scheduler (clients stopped) and whether a snapshot
    was used.

    The heap is settled first, as the service does before it serves (`run_until_signalled`): what this
    process made so far (the history's writer, an earlier restart's state) stays out of the collector's
    walks, as it would be absent from a fresh scheduler's process."""
    settle_heap()
    started = time.monotonic()
    producer = make_producer(settings, "bench-scheduler")
    consumer = make_consumer(settings, group_id=None, client_id="bench-scheduler")
    await producer.start()
    await consumer.start()
    try:
        scheduler = Scheduler(settings, producer, consumer, topics)
        used = await prepare(scheduler, asyncio.Event())
        plan(scheduler.state, datetime.now(UTC))
        seconds = time.monotonic() - started
        snapshot = await scheduler.snapshot() if not used else None
    finally:
        await consumer.stop()
        await producer.stop()
    if snapshot is not None:
        writer = SnapshotWriter(settings, topics.snapshot)
        await writer.start()
        try:
            await writer.finish(snapshot)
        finally:
            await writer.stop()
    return seconds, scheduler, used


def summary(state: SchedulerState) -> Any:
    """What any two restarts agree on whatever order they read the partitions in: which jobs are open,
    which ended, and the slot table. The rest of a job's bookkeeping (which job of a slot is current, a
    dispatch's boot id) can depend on that order, in two full replays alike; the unit tests compare it
    exactly, folding one order."""
    return set(state.jobs), state.done, state.slots


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    topics = bench_topics(run_id)
    base = SchedulerSettings(gpu_slots=SLOTS, snapshot_interval_seconds=1)
    await create_topics(base.kafka_bootstrap, topics)
    try:
        writer = Writer(base.kafka_bootstrap, topics)
        await writer.producer.start()
        try:
            t0 = time.monotonic()
            counts = await write_history(
                writer, args.events, datetime.now(UTC) - timedelta(days=1), args.open_jobs
            )
            history, produce_s = writer.sent, time.monotonic() - t0
            print(f"wrote {history} records in {produce_s:.1f} s ({history / produce_s:,.0f}/s): {counts}")
            full_s, _, _ = await restart(base.model_copy(update={"snapshot_restore": False}), topics)
            print(f"full replay of the history: {full_s:.2f} s; snapshot written")
            tail = await write_tail(writer, args.tail)
        finally:
            await writer.producer.stop()
        snap_s, from_snapshot, used = await restart(base, topics)
        print(f"restart from the snapshot (+{tail} records): {snap_s:.2f} s, snapshot used: {used}")
        replay_s, replayed, _ = await restart(base.model_copy(update={"snapshot_restore": False}), topics)
        print(f"full replay of history + tail: {replay_s:.2f} s")
        equal = summary(from_snapshot.state) == summary(replayed.state)
        return {
            "date": datetime.now(UTC).date().isoformat(),
            "events": history + tail,
            "history_records": history,
            "tail_records": tail,
            "jobs": counts,
            "open_jobs": len(replayed.state.jobs),
            "ended_jobs": len(replayed.state.done),
            "produce_seconds": round(produce_s, 2),
            "restart_with_snapshot_seconds": round(snap_s, 3),
            "restart_full_replay_seconds": round(replay_s, 3),
            "first_full_replay_seconds": round(full_s, 3),
            "snapshot_used": used,
            "states_equal": equal,
            "target_seconds": TARGET_SECONDS,
        }
    finally:
        if not args.keep:
            await delete_topics(base.kafka_bootstrap, topics)


def table(r: dict[str, Any]) -> str:
    def row(name: str, seconds: float) -> str:
        verdict = "meets" if seconds <= TARGET_SECONDS else "misses"
        return f"| {name} | {seconds:.2f} s | {TARGET_SECONDS:.0f} s | {verdict} |"

    return "\n".join(
        [
            f"{r['events']:,} records ({r['tail_records']:,} after the snapshot); "
            f"{r['open_jobs']} open jobs, {r['ended_jobs']:,} ended; states equal: {r['states_equal']}",
            "",
            "| restart | to ready (first planning round) | target | |",
            "|---|---|---|---|",
            row("from the snapshot, then the tail", r["restart_with_snapshot_seconds"]),
            row("full replay", r["restart_full_replay_seconds"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=1_000_000, help="records of history before the snapshot")
    p.add_argument("--tail", type=int, default=10_000, help="records written after the snapshot")
    p.add_argument("--open-jobs", type=int, default=2_000, help="jobs still open in the history")
    p.add_argument("--json", type=Path, default=Path("out/scheduler_restart.json"))
    p.add_argument("--keep", action="store_true", help="keep the topics afterwards")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["states_equal"] and result["snapshot_used"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
