"""The scheduler's snapshot: a state restored from it and folded on equals the state of a full replay."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from pydantic import BaseModel

from schemas.envelope import encode_event, encode_heartbeat
from schemas.events import WorkerHeartbeat
from services.scheduler.main import Scheduler, resume
from services.scheduler.settings import SchedulerSettings
from services.scheduler.snapshot import (
    NOT_SNAPSHOTTED,
    SnapshotError,
    StateSnapshot,
    capture,
    decode,
    encode,
    restore,
)
from services.scheduler.topics import SchedulerTopics

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SLOTS = 4
KINDS = ("succeeded", "retried", "preempted", "cancelled", "waiting", "running", "preempted_waiting")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return importlib.import_module("bench.scheduler_restart")


Msg = SimpleNamespace


def history(bench: ModuleType, seed: int, jobs: int = 24) -> list[Msg]:
    """Jobs of every kind, interleaved at random as partitions interleave, with heartbeats between."""
    rng = random.Random(seed)
    topics = SchedulerTopics()
    per_job = [
        bench.lifecycle(
            rng.choice(KINDS), uuid.UUID(int=rng.getrandbits(128)), i % SLOTS, T0 + timedelta(seconds=i)
        )
        for i in range(jobs)
    ]
    boots = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(SLOTS)]
    merged: list[tuple[str, BaseModel]] = []
    while any(per_job):
        job = rng.choice([records for records in per_job if records])
        merged.append(job.pop(0))
        if rng.random() < 0.1:
            slot = rng.randrange(SLOTS)
            merged.append(
                ("heartbeat", bench.heartbeat(slot, T0 + timedelta(seconds=len(merged)), boots[slot]))
            )
    offsets: dict[str, int] = {}
    msgs = []
    for role, event in merged:
        record = encode_heartbeat(event) if isinstance(event, WorkerHeartbeat) else encode_event(event)  # type: ignore[arg-type]
        topic = getattr(topics, role)
        offset = offsets[topic] = offsets.get(topic, -1) + 1
        msgs.append(
            Msg(topic=topic, partition=0, offset=offset, value=record.value, timestamp=None, timestamp_type=0)
        )
    return msgs


def scheduler() -> Scheduler:
    settings = SchedulerSettings(gpu_slots=SLOTS)
    s = Scheduler(settings, producer=None, consumer=None)  # type: ignore[arg-type]
    s.state.epoch = T0
    return s


async def fold(s: Scheduler, msgs: list[Msg]) -> None:
    for msg in msgs:
        await s.apply(msg)


def positions(msgs: list[Msg]) -> dict[tuple[str, int], int]:
    found: dict[tuple[str, int], int] = {}
    for msg in msgs:
        found[msg.topic, 0] = msg.offset + 1
    return found


@pytest.mark.parametrize("seed", range(6))
async def test_snapshot_then_tail_equals_a_full_replay_at_every_cut(bench: ModuleType, seed: int) -> None:
    msgs = history(bench, seed)
    full = scheduler()
    await fold(full, msgs)
    for cut in range(0, len(msgs) + 1, 7):
        before = scheduler()
        await fold(before, msgs[:cut])
        raw = encode(capture(before.state, positions(msgs[:cut]), T0))
        after = scheduler()
        restore(after.state, decode(raw))
        await fold(after, msgs[cut:])
        assert after.state == full.state, f"seed {seed}, cut {cut}"


async def test_a_snapshot_holds_every_field_the_state_folds(bench: ModuleType) -> None:
    state_fields = {f.name for f in dataclasses.fields(scheduler().state)}
    snapshotted = set(StateSnapshot.model_fields) - {"schema_version", "taken_at", "offsets"}
    assert snapshotted | NOT_SNAPSHOTTED == state_fields
    assert not snapshotted & NOT_SNAPSHOTTED


async def test_a_snapshot_is_versioned_json_with_compact_ended_ids(bench: ModuleType) -> None:
    s = scheduler()
    await fold(s, history(bench, 1))
    payload = json.loads(encode(capture(s.state, {}, T0)))
    assert payload["schema_version"] == 2
    assert isinstance(payload["done"], str)
    assert len(decode(encode(capture(s.state, {}, T0))).done) == len(s.state.done)


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b'{"schema_version": 3}', b"[]"],
)
def test_an_unusable_snapshot_is_refused(raw: bytes | None) -> None:
    with pytest.raises(SnapshotError):
        decode(raw)


def test_a_newer_version_is_refused() -> None:
    payload = json.loads(encode(capture(scheduler().state, {}, T0)))
    payload["schema_version"] = 3
    with pytest.raises(SnapshotError):
        decode(json.dumps(payload).encode())


class FakeConsumer:
    """The part of AIOKafkaConsumer `resume` uses, over fixed log bounds."""

    def __init__(self, bounds: dict[TopicPartition, tuple[int, int]]) -> None:
        self.bounds = bounds
        self.seeks: dict[TopicPartition, int] = {}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp][0] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp][1] for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seeks[tp] = self.bounds[tp][0]


def _resume(
    snapshot: StateSnapshot | None, bounds: dict[TopicPartition, tuple[int, int]]
) -> tuple[bool, Any]:
    s = scheduler()
    consumer = FakeConsumer(bounds)
    s.consumer = consumer
    used = asyncio.run(resume(s, list(bounds), snapshot))
    return used, consumer.seeks


TOPICS = SchedulerTopics()
A, B = TopicPartition(TOPICS.events, 0), TopicPartition(TOPICS.dispatch, 1)


def test_resume_seeks_to_the_snapshot_offsets_and_a_new_partition_to_its_beginning() -> None:
    snapshot = capture(scheduler().state, {(A.topic, 0): 40}, T0)
    used, seeks = _resume(snapshot, {A: (0, 50), B: (3, 9)})
    assert used and seeks == {A: 40, B: 3}


@pytest.mark.parametrize(
    ("offsets", "why"),
    [
        ({(A.topic, 0): 60}, "past the end: a recreated topic"),
        ({(A.topic, 0): 5}, "before the start: records it never saw were deleted"),
        ({("other.topic", 0): 1}, "another scheduler's topics"),
    ],
)
def test_a_snapshot_that_does_not_fit_the_topics_means_a_full_replay(
    offsets: dict[tuple[str, int], int], why: str
) -> None:
    snapshot = capture(scheduler().state, offsets, T0)
    used, seeks = _resume(snapshot, {A: (10, 50), B: (0, 9)})
    assert not used, why
    assert seeks == {A: 10, B: 0}


def test_without_a_snapshot_every_partition_is_read_from_its_beginning() -> None:
    used, seeks = _resume(None, {A: (2, 50), B: (0, 9)})
    assert not used and seeks == {A: 2, B: 0}
