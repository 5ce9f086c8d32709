"""Records the read model refuses, and the stall gauge: with a fake store and producer, no Postgres or Kafka.

A batch that Postgres refuses is split until the refused records are found; they go to the DLQ and
everything else is applied, offsets moving past both. The real database's refusal is in
tests/integration/test_projector.py.
"""

from __future__ import annotations

import gc
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.exc import DBAPIError

from schemas.dlq import DLQ_REASON
from schemas.envelope import encode_event
from schemas.events import JobDispatched, JobEvent
from schemas.samples import resolved_request
from schemas.topics import DLQ
from services.common.kafka import Producer
from services.projector.consumer import Clients, Progress, Projection
from services.projector.errors import RecordRefused, refusal
from services.projector.settings import ProjectorSettings
from services.projector.store import BatchResult, Incoming, Store

TOPIC = "evt"
SETTINGS = ProjectorSettings(requested_topic="req", events_topic=TOPIC)
REASON = "the read model refused it (SQLSTATE 22P05): unsupported Unicode escape sequence"
CREATE_TIME = 0


def event(n: int) -> JobDispatched:
    at = datetime(2026, 3, 1, 9, 30, n, tzinfo=UTC)
    return JobDispatched(
        job_id=uuid.uuid4(), occurred_at=at, producer="s", attempt=1, slot=1, request=resolved_request()
    )


def record(offset: int, ev: JobEvent) -> ConsumerRecord[bytes, bytes]:
    wire = encode_event(ev)
    return ConsumerRecord(
        TOPIC, 0, offset, 0, CREATE_TIME, wire.key, wire.value, None, len(wire.key), len(wire.value),
        wire.headers,
    )  # fmt: skip


class RefusingStore:
    """Refuses, like Postgres, every transaction that holds one of the `refused` events; commits others.

    Checks that a commit never skips a record: each one starts where the last one of its partition ended.
    """

    def __init__(self, refused: set[uuid.UUID], *, offsets_too: bool = False) -> None:
        self.refused = refused
        self.offsets_too = offsets_too
        self.applied: list[JobEvent] = []
        self.next_offset = 0

    async def apply_batch(self, consumer: str, batch: list[Incoming], *, notify: bool) -> BatchResult:
        if self.offsets_too or any(r.event is not None and r.event.event_id in self.refused for r in batch):
            raise RecordRefused(REASON)
        for r in batch:
            assert r.offset == self.next_offset, f"offset {r.offset} committed before {self.next_offset}"
            self.next_offset = r.offset + 1
        events = [r.event for r in batch if r.event is not None]
        self.applied += events
        return BatchResult(stored=len(events), applied=len(events))


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.sent.append((topic, value, dict(kw.get("headers") or ())))


async def project(store: RefusingStore, events: list[JobDispatched], producer: FakeProducer) -> BatchResult:
    clients = Clients(
        consumer=cast(AIOKafkaConsumer, None),
        admin=cast(AIOKafkaAdminClient, None),
        producer=cast(Producer, producer),
    )
    projection = Projection(SETTINGS, cast(Store, store), clients)
    records = [record(offset, ev) for offset, ev in enumerate(events)]
    return await projection.process({TopicPartition(TOPIC, 0): records})


@pytest.mark.parametrize("size", [1, 2, 5, 8])
async def test_every_refused_record_is_dead_lettered_and_every_other_applied(size: int) -> None:
    events = [event(n) for n in range(size)]
    for refused in itertools.chain.from_iterable(itertools.combinations(events, k) for k in range(size + 1)):
        store, producer = RefusingStore({ev.event_id for ev in refused}), FakeProducer()
        result = await project(store, events, producer)

        kept = [ev for ev in events if ev not in refused]
        assert store.applied == kept
        assert result.applied == len(kept)
        assert store.next_offset == size, "the offsets move past the refused records too"
        assert [value for _, value, _ in producer.sent] == [encode_event(ev).value for ev in refused]
        assert all(
            topic == DLQ and headers[DLQ_REASON].decode() == REASON for topic, _, headers in producer.sent
        )


async def test_a_refusal_that_no_record_causes_is_raised_not_dead_lettered() -> None:
    store, producer = RefusingStore(set(), offsets_too=True), FakeProducer()
    with pytest.raises(RecordRefused):
        await project(store, [event(0), event(1)], producer)
    # The first record went to the DLQ before its offsets alone were refused as well: then the fault is
    # not in any record, and the error stops the loop instead of emptying the batch into the DLQ.
    assert len(producer.sent) == 1


class CollectorWatchingStore(RefusingStore):
    def __init__(self) -> None:
        super().__init__(set())
        self.collector_on: list[bool] = []

    async def apply_batch(self, consumer: str, batch: list[Incoming], *, notify: bool) -> BatchResult:
        self.collector_on.append(gc.isenabled())
        return await super().apply_batch(consumer, batch, notify=notify)


async def test_a_batch_is_applied_with_the_cyclic_collector_paused_and_it_is_back_on_after() -> None:
    store = CollectorWatchingStore()
    assert gc.isenabled()
    await project(store, [event(0), event(1)], FakeProducer())
    assert store.collector_on == [False], "a batch's objects all die with it: nothing to walk meanwhile"
    assert gc.isenabled()


class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the SQLSTATE on it, the server's detail on its cause."""

    def __init__(self, message: str, sqlstate: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail


def dbapi_error(sqlstate: str) -> DBAPIError:
    orig = DriverError("unsupported Unicode escape sequence", sqlstate)
    orig.__cause__ = DriverError("", sqlstate, detail="\\u0000 cannot be converted to text.")
    return DBAPIError("INSERT ...", {}, orig)


@pytest.mark.parametrize("sqlstate", ["22P05", "22021", "22003", "23505", "23502"])
def test_data_and_integrity_errors_are_refusals(sqlstate: str) -> None:
    refused = refusal(dbapi_error(sqlstate))
    assert refused is not None
    assert str(refused) == (
        f"the read model refused it (SQLSTATE {sqlstate}): unsupported Unicode escape sequence"
        " (\\u0000 cannot be converted to text.)"
    )


@pytest.mark.parametrize("sqlstate", ["08006", "57P01", "40001", "53300", "42601", ""])
def test_unavailability_and_our_own_bugs_are_not_refusals(sqlstate: str) -> None:
    # Connection lost, admin shutdown, serialization failure, too many connections: retryable. A syntax
    # error is a bug: dead-lettering every record for it would empty the topic into the DLQ.
    assert refusal(dbapi_error(sqlstate)) is None


def test_the_drivers_own_errors_are_refusals_by_their_sqlstate() -> None:
    """A COPY on the driver's connection raises asyncpg's errors unwrapped, the detail on the error."""
    error = asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape sequence")
    error.detail = "\\u0000 cannot be converted to text."
    assert str(refusal(error)) == (
        "the read model refused it (SQLSTATE 22P05): unsupported Unicode escape sequence"
        " (\\u0000 cannot be converted to text.)"
    )
    assert refusal(asyncpg.exceptions.AdminShutdownError("terminating connection")) is None


def test_stalled_once_no_iteration_finished_for_longer_than_the_limit() -> None:
    now = [100.0]
    progress = Progress(5.0, clock=lambda: now[0])
    now[0] = 105.0
    assert not progress.stalled()
    now[0] = 105.1
    assert progress.stalled()
    progress.mark()
    assert not progress.stalled()
