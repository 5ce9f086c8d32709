"""The worker process of a slot around its runner: where it reads jobs.dispatch from, when it says it is
ready, and its exit when jobs are left open. Kafka is replaced by in-memory fakes of the two consumers and
the producer; the generator is the simulated one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from schemas.envelope import decode_heartbeat, encode_event
from schemas.events import EventType, JobDispatched, JobEvent, WorkerHeartbeat
from schemas.jobs import JobRequest, resolve
from schemas.topics import JOBS_DISPATCH, WORKERS_HEARTBEAT
from services.common.errors import BrokerUnavailable
from services.common.kafka import Producer
from services.common.runtime import serve_metrics
from services.worker.engine import SimulatedGenerator
from services.worker.runner import Backoff, JobRunner
from services.worker.settings import WorkerSettings
from services.worker.slot import Slot

TP = TopicPartition(JOBS_DISPATCH, 0)


class FakeDispatch:
    """The slot's partition of jobs.dispatch under a group whose coordinator answers after `delay` s
    (a fresh broker). An unresolved position resolves like aiokafka's: the committed offset, else
    "latest" (the end of the log at that moment)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.log: list[bytes] = []
        self.committed_offset: int | None = None
        self.offset: int | None = None
        self.appended = asyncio.Event()

    def append(self, value: bytes) -> None:
        self.log.append(value)
        self.appended.set()

    async def committed(self, tp: TopicPartition) -> int | None:
        await asyncio.sleep(self.delay)
        return self.committed_offset

    async def position(self, tp: TopicPartition) -> int:
        await asyncio.sleep(self.delay)
        if self.offset is None:
            self.offset = self.committed_offset if self.committed_offset is not None else len(self.log)
        return self.offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed_offset = offsets[TP]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int = 1) -> Any:
        offset = await self.position(TP)
        if offset >= len(self.log):
            self.appended.clear()
            try:
                await asyncio.wait_for(self.appended.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
        records = [self._record(o) for o in range(offset, min(len(self.log), offset + max_records))]
        self.offset = offset + len(records)
        return {TP: records}

    def _record(self, offset: int) -> ConsumerRecord[bytes, bytes]:
        value = self.log[offset]
        return ConsumerRecord(JOBS_DISPATCH, 0, offset, 0, 0, b"", value, None, 0, len(value), ())


class FakeControl:
    """jobs.control with no record in it."""

    async def getmany(self, timeout_ms: int = 0) -> Any:
        await asyncio.sleep(timeout_ms / 1000)
        return {}


class FakeProducer:
    """Records what is sent; `on_heartbeat` plays the scheduler hearing the slot."""

    def __init__(self) -> None:
        self.beats: list[WorkerHeartbeat] = []
        self.on_heartbeat: list[Any] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        if topic == WORKERS_HEARTBEAT:
            self.beats.append(decode_heartbeat(value))
            for hook in self.on_heartbeat:
                hook(self.beats[-1])


class Events:
    def __init__(self) -> None:
        self.sent: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> object:
        self.sent.append(event)
        return None


def make_worker(tmp_path: Path, producer: FakeProducer, events: Events) -> Slot:
    settings = WorkerSettings(slot=0, model="tiny-mochi", heartbeat_seconds=0.05, finish_timeout_seconds=5)
    runner = JobRunner(
        slot=0,
        generator=SimulatedGenerator("tiny-mochi", seconds_per_step=0),
        store=MemoryStore(),
        publish=events,
        scratch_dir=tmp_path,
        progress_interval=0,
        backoff=Backoff(first=0.01, cap=0.05),
    )
    return Slot(settings, cast(Producer, producer), runner)


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        self.objects[key] = Path(path).read_bytes()

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    async def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    async def delete_prefix(self, prefix: str) -> int:
        return 0


def job_record() -> tuple[JobDispatched, bytes]:
    request = resolve(JobRequest(prompt="a cat", model="tiny-mochi", quality="high", seed=3))
    job = JobDispatched(job_id=uuid.uuid4(), producer="scheduler", attempt=1, slot=0, request=request)
    return job, encode_event(job).value


async def operate(worker: Slot, dispatch: FakeDispatch, stop: asyncio.Event) -> asyncio.Task[None]:
    consumer = cast(AIOKafkaConsumer, dispatch)
    return asyncio.create_task(worker.operate(consumer, TP, cast(AIOKafkaConsumer, FakeControl()), stop))


async def test_a_job_dispatched_once_the_slot_announced_itself_is_read(tmp_path: Path) -> None:
    """The scheduler dispatches on the first heartbeat, while the group coordinator is still slow: the
    record lands after the position is fixed, and is read. A restart keeps that position."""
    dispatch, producer, events = FakeDispatch(delay=0.2), FakeProducer(), Events()
    dispatch.append(b"an old record, from before the slot ever ran")
    job, value = job_record()
    producer.on_heartbeat.append(lambda beat: dispatch.append(value) if len(producer.beats) == 1 else None)
    worker, stop = make_worker(tmp_path, producer, events), asyncio.Event()
    task = await operate(worker, dispatch, stop)
    deadline = time.monotonic() + 10
    while EventType.SUCCEEDED not in [e.type for e in events.sent] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert [e.job_id for e in events.sent if e.type is EventType.SUCCEEDED] == [job.job_id]
    assert producer.beats[0].dispatch_position == 1  # reported from the first beat: the job's offset
    assert dispatch.committed_offset == 2


async def test_the_position_of_a_new_group_is_committed_before_the_slot_announces_itself(
    tmp_path: Path,
) -> None:
    dispatch, producer = FakeDispatch(delay=0.05), FakeProducer()
    dispatch.append(b"an old record")
    seen: list[int | None] = []
    producer.on_heartbeat.append(lambda beat: seen.append(dispatch.committed_offset))
    worker, stop = make_worker(tmp_path, producer, Events()), asyncio.Event()
    task = await operate(worker, dispatch, stop)
    while not producer.beats:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert seen[0] == 1


async def test_the_slot_is_ready_only_once_its_position_is_fixed_and_not_while_stopping(
    tmp_path: Path,
) -> None:
    dispatch, producer = FakeDispatch(delay=0.3), FakeProducer()
    worker, stop = make_worker(tmp_path, producer, Events()), asyncio.Event()
    task = await operate(worker, dispatch, stop)
    await asyncio.sleep(0.1)
    assert not worker.ready.is_set() and producer.beats == []  # Kafka has not answered yet
    while not producer.beats:
        await asyncio.sleep(0.01)
    assert worker.ready.is_set()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not worker.ready.is_set()
    assert producer.beats[-1].state == "stopping"


async def test_a_stop_before_kafka_answers_ends_the_slot_without_a_heartbeat(tmp_path: Path) -> None:
    dispatch, producer = FakeDispatch(delay=60), FakeProducer()
    worker, stop = make_worker(tmp_path, producer, Events()), asyncio.Event()
    task = await operate(worker, dispatch, stop)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert producer.beats == [] and not worker.ready.is_set()


class RefusingEvents(Events):
    """Kafka refusing every terminal event of the slot."""

    async def __call__(self, event: JobEvent) -> object:
        if event.type in {EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED}:
            raise BrokerUnavailable("Kafka did not acknowledge")
        return await super().__call__(event)


async def test_a_stop_with_a_terminal_event_unpublished_leaves_the_job_to_the_scheduler(
    tmp_path: Path,
) -> None:
    """Until the stop the job is reported held; after it, the last beat no longer holds it and the
    process has a job to name as left open (`serve` raises, the process exits 3)."""
    dispatch, producer, events = FakeDispatch(delay=0.01), FakeProducer(), RefusingEvents()
    job, value = job_record()
    producer.on_heartbeat.append(lambda beat: dispatch.append(value) if len(producer.beats) == 1 else None)
    worker, stop = make_worker(tmp_path, producer, events), asyncio.Event()
    task = await operate(worker, dispatch, stop)
    while not any(job.job_id in {h.job_id for h in beat.finishing} for beat in producer.beats):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # retried for longer than a few beats
    assert job.job_id in {h.job_id for h in producer.beats[-1].finishing}
    stop.set()
    await asyncio.wait_for(task, 10)
    assert worker.unfinished() == [f"job-{job.job_id}"]
    last = producer.beats[-1]
    assert last.state == "stopping" and last.job_id is None and last.finishing == []


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_readyz_answers_503_until_ready_and_metrics_stay_served() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = threading.Event()
    serve_metrics(port, ready=ready.is_set)
    base = f"http://127.0.0.1:{port}"
    assert (await asyncio.to_thread(get, f"{base}/readyz"))[0] == 503
    ready.set()
    assert await asyncio.to_thread(get, f"{base}/readyz") == (200, b"ready\n")
    status, body = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200 and b"python_info" in body
    assert (await asyncio.to_thread(get, f"{base}/livez"))[0] == 200
