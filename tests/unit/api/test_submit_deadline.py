"""The submit deadline: a job.requested that the broker appended after its `accept_by` is not a job.

The rule itself, the projector (dead-letters such a record, and a replay skips it alike) and the
scheduler (skips it), with fakes: no Kafka, Postgres or S3. The api's side is in test_api_submit.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.dlq import DLQ_REASON
from schemas.envelope import encode_event
from schemas.events import JobRequested
from schemas.jobs import JobRequest, resolve
from schemas.topics import DLQ, JOBS_REQUESTED
from services.common.kafka import LOG_APPEND_TIME, Producer, append_time, missed_deadline
from services.projector.consumer import Clients, Projection, decode
from services.projector.settings import ProjectorSettings
from services.projector.store import BatchResult, Incoming, Store, event_as_read_now
from services.scheduler.main import Scheduler
from services.scheduler.settings import SchedulerSettings

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
CREATE_TIME = 0


def request(accept_by: datetime | None = T0, job_id: uuid.UUID | None = None) -> JobRequested:
    resolved = resolve(JobRequest(prompt="a heron at dusk", model="tiny-mochi", seed=3))
    return JobRequested(
        job_id=job_id or uuid.uuid4(),
        producer="api",
        occurred_at=T0 - timedelta(seconds=15),
        request=resolved,
        request_hash="h",
        accept_by=accept_by,
    )


def millis(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def record(
    event: JobRequested, appended: datetime, timestamp_type: int = LOG_APPEND_TIME, offset: int = 0
) -> ConsumerRecord[bytes, bytes]:
    wire = encode_event(event)
    return ConsumerRecord(
        JOBS_REQUESTED, 0, offset, millis(appended), timestamp_type, wire.key, wire.value, None,
        len(wire.key), len(wire.value), wire.headers,
    )  # fmt: skip


class FakeProducer:
    """Stands in for `services.common.kafka.Producer`: keeps what was sent, acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.sent.append((topic, list(kw.get("headers") or ())))


# --- the rule -------------------------------------------------------------------------------------------


def test_append_time_only_from_the_broker_and_to_the_millisecond() -> None:
    assert append_time(1_767_000_000_123, LOG_APPEND_TIME) == datetime(
        2025, 12, 29, 9, 20, 0, 123000, tzinfo=UTC
    )
    assert append_time(1_767_000_000_123, CREATE_TIME) is None
    assert append_time(-1, LOG_APPEND_TIME) is None


def test_late_means_appended_strictly_after_accept_by() -> None:
    event = request()
    assert not event.arrived_late(T0)
    assert event.arrived_late(T0 + timedelta(milliseconds=1))
    assert not event.arrived_late(None)
    # Records written before the field existed have no deadline: always a job.
    assert not request(accept_by=None).arrived_late(T0 + timedelta(days=1))


def test_missed_deadline_judges_only_the_brokers_append_time() -> None:
    event = request()
    reason = missed_deadline(event, record(event, T0 + timedelta(seconds=3)))
    assert reason is not None and "arrived after its submit deadline" in reason and "3.000 s late" in reason
    assert missed_deadline(event, record(event, T0)) is None
    # CreateTime is the producer's clock: it says nothing about when the broker took the record.
    assert missed_deadline(event, record(event, T0 + timedelta(hours=1), CREATE_TIME)) is None


# --- the projector --------------------------------------------------------------------------------------

SETTINGS = ProjectorSettings(requested_topic=JOBS_REQUESTED, events_topic="evt")


class FakeStore:
    """Keeps the batches the projection hands to Postgres."""

    def __init__(self) -> None:
        self.batches: list[list[Incoming]] = []

    async def apply_batch(self, consumer: str, batch: list[Incoming], *, notify: bool) -> BatchResult:
        self.batches.append(list(batch))
        return BatchResult(stored=sum(r.event is not None for r in batch))


def test_projector_decode_turns_a_late_request_away() -> None:
    event = request()
    late = decode(record(event, T0 + timedelta(seconds=1)), SETTINGS)
    assert "arrived after its submit deadline" in str(late)
    assert decode(record(event, T0 - timedelta(seconds=1)), SETTINGS) == event


async def _project(producer: FakeProducer | None, records: list[ConsumerRecord[bytes, bytes]]) -> FakeStore:
    """One batch through the projection: live with a DLQ producer, or as a replay without one."""
    store = FakeStore()
    clients = Clients(
        consumer=cast(AIOKafkaConsumer, None),
        admin=cast(AIOKafkaAdminClient, None),
        producer=cast(Producer | None, producer),
    )
    projection = Projection(SETTINGS, cast(Store, store), clients, notify=False)
    await projection.process({TopicPartition(JOBS_REQUESTED, 0): records})
    return store


async def test_projector_dead_letters_a_late_request_and_a_replay_skips_it_alike() -> None:
    late, on_time = request(), request()
    records = [
        record(late, T0 + timedelta(seconds=2), offset=0),
        record(on_time, T0 - timedelta(seconds=2), offset=1),
    ]
    producer = FakeProducer()
    live = await _project(producer, records)
    replay = await _project(None, records)

    (topic, headers), *more = producer.sent
    assert (topic, more) == (DLQ, [])
    assert "arrived after its submit deadline" in dict(headers)[DLQ_REASON].decode()
    # No row for the late one (event None), the offset still moves past it; a replay sees the same.
    expected = [Incoming(JOBS_REQUESTED, 0, 0, None), Incoming(JOBS_REQUESTED, 0, 1, on_time)]
    assert live.batches == replay.batches == [expected]


# --- the scheduler --------------------------------------------------------------------------------------


def scheduler(producer: FakeProducer) -> Scheduler:
    return Scheduler(SchedulerSettings(), cast(Producer, producer), cast(AIOKafkaConsumer, None))


def queued(s: Scheduler) -> set[uuid.UUID]:
    """Jobs the scheduler took in (their job.requested was folded)."""
    return {job_id for job_id, entry in s.state.jobs.items() if entry.created_at is not None}


async def test_scheduler_skips_a_late_request_without_dead_lettering_it() -> None:
    producer = FakeProducer()
    s = scheduler(producer)
    s.live = True
    job = uuid.uuid4()
    await s.apply(record(request(job_id=job), T0 + timedelta(seconds=1)))
    assert queued(s) == set()
    assert producer.sent == []  # the projector owns the dead letter

    # A retry of the same keyed job (same id) that made its own deadline is the job.
    retried = request(accept_by=T0 + timedelta(minutes=1), job_id=job)
    await s.apply(record(retried, T0 + timedelta(seconds=30), offset=1))
    assert queued(s) == {job}
    assert s.state.jobs[job].created_at == retried.occurred_at


async def test_scheduler_takes_requests_the_broker_did_not_stamp_or_without_a_deadline() -> None:
    s = scheduler(FakeProducer())
    old, create_time = request(accept_by=None), request()
    await s.apply(record(old, T0 + timedelta(days=1)))
    await s.apply(record(create_time, T0 + timedelta(days=1), CREATE_TIME, offset=1))
    assert queued(s) == {old.job_id, create_time.job_id}


def test_a_row_stored_before_accept_by_existed_equals_its_replay() -> None:
    """`compare` reads payloads as today's code does: an optional field added since is no difference."""
    payload = request(accept_by=None).model_dump(mode="json")
    older = {key: value for key, value in payload.items() if key != "accept_by"}
    row = {"event_id": uuid.uuid4(), "seq": 0, "applied": True}
    assert event_as_read_now({**row, "payload": older}) == event_as_read_now({**row, "payload": payload})
