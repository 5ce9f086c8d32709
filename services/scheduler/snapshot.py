"""The scheduler's state as a snapshot: versioned JSON that a restart loads instead of replaying history.

A snapshot holds what the fold of the input topics left in `SchedulerState` (open jobs with their
attempts and fences, the slot table, lanes, measured step times, the ids of every ended job) and, per
input partition, the offset of the first record it does *not* reflect. Loading it and folding the records
from those offsets gives the state a full replay gives. What the live loop derives from the wall clock
(`epoch`, `last_input`, `mismatch_since`) is not in it: a restarted scheduler starts those afresh, as after
a full replay. The settings-derived fields (slots, limits) come from the restarted scheduler's settings.

Encoding (schema_version 2): one JSON object, `StateSnapshot`. Jobs and slots are the dataclasses of
`state.py` field by field; `done` is the base64 of the sorted 16-byte ids of the ended jobs (a list of
UUID strings would be 1.8 times larger, and there are as many as jobs ever ran); `step_times` and
`extra_seconds` are lists of [[model, frames, height, width, speed], seconds]. A change that old code
cannot read gets a new version: the old code then refuses it and replays in full. Version 2 added the
speed tier to the step-time keys; a version 1 snapshot still loads, its keys read as `exact`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from datetime import date, datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError

from schemas.jobs import Priority
from services.scheduler.state import JobEntry, SchedulerState, Slot, StepKey

SCHEMA_VERSION: Final = 2
UUID_BYTES: Final = 16

# Fields of SchedulerState a snapshot leaves out: configuration (from the settings) and what the live
# loop derives from the wall clock, which a full replay does not produce either.
NOT_SNAPSHOTTED: Final = frozenset(
    {
        "slots_total",
        "dead_after",
        "lost_grace",
        "max_attempts",
        "reserved_interactive",
        "balance_gain",
        "max_preemptions",
        "lookahead",
        "queue_ttl",
        "unserviceable_after",
        "mismatch_since",
        "epoch",
        "last_input",
        "input_resumed_at",
        "by_tenant",
    }
)


class SnapshotError(ValueError):
    """A snapshot that cannot be used: undecodable, of another version, or not matching the topics."""


def _pack_ids(ids: frozenset[uuid.UUID]) -> str:
    return base64.b64encode(b"".join(sorted(i.bytes for i in ids))).decode("ascii")


def _unpack_ids(value: object) -> frozenset[uuid.UUID]:
    if isinstance(value, frozenset | set):
        return frozenset(value)
    if not isinstance(value, str):
        raise ValueError("done must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError(f"done is not base64: {e}") from e
    if len(raw) % UUID_BYTES:
        raise ValueError("done is not a whole number of 16-byte ids")
    return frozenset(uuid.UUID(bytes=raw[i : i + UUID_BYTES]) for i in range(0, len(raw), UUID_BYTES))


PackedIds = Annotated[
    frozenset[uuid.UUID], PlainValidator(_unpack_ids), PlainSerializer(_pack_ids, return_type=str)
]


class PartitionOffset(BaseModel):
    """The next offset to read in one input partition: the first record the snapshot does not reflect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


V1StepKey = tuple[str, int, int, int]  # version 1: before speed tiers, every job ran exact


def _step_key(key: StepKey | V1StepKey) -> StepKey:
    if len(key) == 4:
        model, frames, height, width = key
        return (model, frames, height, width, "exact")
    return key


class StateSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    taken_at: datetime
    offsets: tuple[PartitionOffset, ...]
    jobs: tuple[JobEntry, ...]
    done: PackedIds
    slots: tuple[Slot, ...]
    assignments: dict[int, uuid.UUID]
    queued_next: dict[int, uuid.UUID]
    finishing: dict[uuid.UUID, int]
    step_times: tuple[tuple[StepKey | V1StepKey, float], ...]
    extra_seconds: tuple[tuple[StepKey | V1StepKey, float], ...]
    model_seen: dict[str, datetime]
    cancel_waiting: frozenset[uuid.UUID]
    lanes: dict[Priority, tuple[tuple[datetime, str], ...]]
    gpu_used: dict[str, tuple[date, float]] = Field(default_factory=dict)

    def positions(self) -> dict[tuple[str, int], int]:
        return {(o.topic, o.partition): o.offset for o in self.offsets}


def capture(state: SchedulerState, positions: dict[tuple[str, int], int], now: datetime) -> StateSnapshot:
    """The state as it is now. Built without validation: the values are the state's own, already typed."""
    offsets = tuple(
        PartitionOffset(topic=t, partition=p, offset=o) for (t, p), o in sorted(positions.items())
    )
    return StateSnapshot.model_construct(
        schema_version=SCHEMA_VERSION,
        taken_at=now,
        offsets=offsets,
        jobs=tuple(state.jobs.values()),
        done=frozenset(state.done),
        slots=tuple(state.slots.values()),
        assignments=dict(state.assignments),
        queued_next=dict(state.queued_next),
        finishing=dict(state.finishing),
        step_times=tuple(state.step_times.items()),
        extra_seconds=tuple(state.extra_seconds.items()),
        model_seen=dict(state.model_seen),
        cancel_waiting=frozenset(state.cancel_waiting),
        lanes={lane: tuple(keys) for lane, keys in state.lanes.items()},
        gpu_used=dict(state.gpu_used),
    )


def restore(state: SchedulerState, snapshot: StateSnapshot) -> None:
    """Puts the snapshot's content into a freshly built state (its settings and clock fields stay)."""
    state.jobs = {job.job_id: dataclasses.replace(job) for job in snapshot.jobs}
    state.done = set(snapshot.done)
    state.slots = {slot.slot: slot for slot in snapshot.slots}
    state.assignments = dict(snapshot.assignments)
    state.queued_next = dict(snapshot.queued_next)
    state.finishing = dict(snapshot.finishing)
    state.step_times = {_step_key(key): seconds for key, seconds in snapshot.step_times}
    state.extra_seconds = {_step_key(key): seconds for key, seconds in snapshot.extra_seconds}
    state.model_seen = dict(snapshot.model_seen)
    state.cancel_waiting = set(snapshot.cancel_waiting)
    state.lanes = {lane: list(snapshot.lanes.get(lane, ())) for lane in state.lanes}
    state.gpu_used = dict(snapshot.gpu_used)
    state.index_tenants()


def encode(snapshot: StateSnapshot) -> bytes:
    return snapshot.model_dump_json().encode()


def decode(raw: bytes | None) -> StateSnapshot:
    """The snapshot in a record's value; `SnapshotError` says why it cannot be used."""
    if not raw:
        raise SnapshotError("the latest snapshot record is empty (a tombstone)")
    try:
        return StateSnapshot.model_validate_json(raw)
    except ValidationError as e:
        raise SnapshotError(f"undecodable snapshot ({len(raw)} bytes): {e}") from e
