"""The fleet benchmark's Kafka side: topics, submitting a workload, and reading what happened to it.

Jobs are submitted as `job.requested` records with the services' own producer (acks=all, idempotent);
outcomes are read from the events topic by a fresh consumer that starts at the end offsets taken before
the first submit, so every event of a benchmark job is seen and nothing older is.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from bench.fleet_stats import BenchJob, JobKind, Outcome, QueueView
from schemas.envelope import MalformedMessage, decode_event
from schemas.events import (
    TERMINAL_TYPES,
    JobCancelRequested,
    JobDispatched,
    JobEvent,
    JobPreempted,
    JobProgress,
    JobRequested,
    JobRetrying,
    JobStarted,
    JobSucceeded,
)
from schemas.jobs import JobRequest, Phase, resolve
from schemas.topics import JOBS_CONTROL, JOBS_DISPATCH
from services.api.ids import new_job_id
from services.common.kafka import Producer, make_consumer, partitions_of, publish_event
from services.common.settings import CommonSettings

MODEL = "mochi-1-preview"
PRODUCER = "bench-fleet"
WORKER_GROUP = "reelstream-worker"  # the group whose offsets the slots keep (services/worker/main.py)


def _admin(settings: CommonSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="bench-fleet-admin")


async def ensure_partitions(settings: CommonSettings, topic: str, count: int) -> int:
    """Grow `topic` to `count` partitions (partitions only grow; a larger topic is left alone)."""
    admin = _admin(settings)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        have = len(described["partitions"])
        if have < count:
            await admin.create_partitions({topic: NewPartitions(total_count=count)})
        return max(have, count)
    finally:
        await admin.close()


async def create_topics(settings: CommonSettings, names: dict[str, int]) -> None:
    admin = _admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()])
    finally:
        await admin.close()


async def delete_topics(settings: CommonSettings, names: list[str]) -> None:
    admin = _admin(settings)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def unread_dispatches(settings: CommonSettings, slots: int) -> dict[int, int]:
    """Dispatch records per slot that the workers' group has not committed past yet."""
    consumer = make_consumer(settings, group_id=WORKER_GROUP, client_id="bench-fleet-backlog")
    await consumer.start()
    try:
        partitions = [TopicPartition(JOBS_DISPATCH, slot) for slot in range(slots)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        return {tp.partition: end[tp] - (await consumer.committed(tp) or end[tp]) for tp in partitions}
    finally:
        await consumer.stop()


def requested_event(job: BenchJob, tags: dict[str, str]) -> JobRequested:
    """A `job.requested` for one benchmark job, resolved against the catalog like the api does."""
    body = JobRequest(
        prompt=f"fleet benchmark job {job.index}: a {job.kind.name} clip of a harbour at dusk",
        model=MODEL,
        num_frames=job.kind.num_frames,
        quality=job.kind.quality,  # type: ignore[arg-type]
        priority=job.kind.lane,  # type: ignore[arg-type]
        seed=job.index,
        metadata=tags,
    )
    request = resolve(body)
    assert request.num_inference_steps == job.kind.steps, "the catalog's steps changed"
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    return JobRequested(
        job_id=new_job_id(), producer=PRODUCER, request=request, request_hash=digest, tenant=job.tenant
    )


@dataclass
class Track:
    """Everything the events said about one benchmark job."""

    kind: JobKind
    outcome: Outcome
    started: dict[int, float] = field(default_factory=dict)  # attempt -> job.started time
    slots: dict[int, int] = field(default_factory=dict)  # attempt -> slot
    resume: dict[int, str | None] = field(default_factory=dict)  # attempt -> checkpoint it resumes
    steps: list[tuple[int, int, float]] = field(default_factory=list)  # (attempt, step, time)
    retried_at: float | None = None


class Collector:
    """Reads an events topic from fixed offsets and folds the events of tracked jobs."""

    def __init__(self, settings: CommonSettings, topic: str, slots: int, scale: float) -> None:
        self.settings, self.topic = settings, topic
        self.tracks: dict[uuid.UUID, Track] = {}
        self.view = QueueView(slots, scale)
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = make_consumer(self.settings, group_id=None, client_id="bench-fleet-events")
        await consumer.start()
        partitions = await partitions_of(self.settings, [self.topic])
        consumer.assign(partitions)
        for tp, offset in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, offset)
        self.consumer = consumer
        self.task = asyncio.create_task(self._run(consumer))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for msg in records:
                    try:
                        self.fold(decode_event(msg.value))
                    except MalformedMessage:
                        continue

    def fold(self, event: JobEvent) -> None:
        track = self.tracks.get(event.job_id)
        if track is None:
            return
        t, key, attempt = event.occurred_at.timestamp(), str(event.job_id), event.attempt
        outcome = track.outcome
        if isinstance(event, JobDispatched):
            track.slots[attempt], track.resume[attempt] = event.slot, event.resume_checkpoint
            outcome.dispatched = outcome.dispatched or t
        elif isinstance(event, JobStarted):
            outcome.spans.setdefault(attempt, [event.slot, t, None])
            track.started.setdefault(attempt, t)
            track.slots[attempt] = event.slot
            if outcome.started is None:
                outcome.started, outcome.slot = t, event.slot
            self.view.started(key, track.kind)
        elif isinstance(event, JobProgress):
            self._progress(track, key, event, t)
        elif isinstance(event, JobRetrying):
            track.retried_at = track.retried_at or t
        elif isinstance(event, JobPreempted):
            outcome.preemptions += 1
            self._gpu_done(outcome, attempt, t)
        elif event.type in TERMINAL_TYPES and track.outcome.ended is None:
            span = outcome.spans.get(attempt)
            if isinstance(event, JobSucceeded) and span is not None:
                # Frames made, by the worker's own clock: the encoding_video progress event is sent
                # only after the slot has already moved on to its next job.
                span[2] = span[1] + event.generation_seconds
            self._gpu_done(outcome, attempt, t)
            track.outcome.ended, track.outcome.status = t, event.type.removeprefix("job.")
            self.view.ended(key)

    @staticmethod
    def _gpu_done(outcome: Outcome, attempt: int, t: float) -> None:
        span = outcome.spans.get(attempt)
        if span is not None and span[2] is None:
            span[2] = t

    def _progress(self, track: Track, key: str, event: JobProgress, t: float) -> None:
        if event.phase in (Phase.ENCODING_VIDEO, Phase.UPLOADING):
            self._gpu_done(track.outcome, event.attempt, t)
        if event.phase is Phase.UPLOADING and track.outcome.uploading is None:
            track.outcome.uploading = t
        if event.step is not None:
            track.steps.append((event.attempt, event.step, t))
            self.view.progressed(key, event.step)

    def open_jobs(self, keys: list[uuid.UUID]) -> list[uuid.UUID]:
        return [k for k in keys if self.tracks[k].outcome.ended is None]

    async def wait_done(self, keys: list[uuid.UUID], limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while self.open_jobs(keys):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True


@dataclass
class Submitter:
    """Submits a workload on its arrival times to the requests topic of each job's lane; optionally asks
    the api for ETAs."""

    producer: Producer
    topics: dict[str, str]  # lane -> requests topic
    collector: Collector
    api: httpx.AsyncClient | None = None
    api_sample: int = 1  # ask the api about every n-th job only, to keep its load small
    _probe: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))

    async def run(self, jobs: list[BenchJob], tags: dict[str, str]) -> list[uuid.UUID]:
        loop = asyncio.get_running_loop()
        t0, tasks, keys = loop.time(), [], []
        for job in jobs:
            if (delay := t0 + job.arrival - loop.time()) > 0:
                await asyncio.sleep(delay)
            event = requested_event(job, tags)
            view = self.collector.view
            outcome = Outcome(
                job.kind, event.occurred_at.timestamp(), eta_wait=view.eta_wait(job.kind), tenant=job.tenant
            )
            view.submitted(str(event.job_id), job.kind)
            self.collector.tracks[event.job_id] = Track(job.kind, outcome)
            keys.append(event.job_id)
            probe = self.api is not None and job.index % self.api_sample == 0
            topic = self.topics[job.kind.lane]
            tasks.append(asyncio.create_task(self._submit(topic, event, outcome, probe)))
        await asyncio.gather(*tasks)
        return keys

    async def _submit(self, topic: str, event: JobRequested, outcome: Outcome, probe: bool) -> None:
        await publish_event(self.producer, topic, event)
        if probe and self.api is not None:
            async with self._probe:
                outcome.api_eta_start = await api_eta_start(self.api, event.job_id)


async def api_eta_start(api: httpx.AsyncClient, job_id: uuid.UUID) -> float | None:
    """When the api says a queued job will start (epoch seconds), or None if it gives no ETA."""
    try:
        response = await api.get(f"/v1/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    now = time.time()
    if response.status_code != 200:
        return None
    body = response.json()
    eta = body.get("eta")
    if body.get("status") != "queued" or body.get("dispatched_at") is not None or not eta:
        return None
    return now + float(eta["wait_seconds"])


async def cancel(producer: Producer, keys: list[uuid.UUID]) -> None:
    """Ask reelstream to cancel jobs (what POST /v1/jobs/{id}/cancel publishes)."""
    for key in keys:
        await publish_event(producer, JOBS_CONTROL, JobCancelRequested(job_id=key, producer=PRODUCER))
