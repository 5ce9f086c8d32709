"""Rebuild the read model from Kafka into a fresh schema, and compare a rebuilt schema with the live one.

A replay reads both topics from offset 0 up to the end offsets taken when it starts, through the same
`Projection` and `Store` code as the live projector; it neither dead-letters (the live projector did) nor
NOTIFYs (nobody reads the scratch schema). Equal results prove the projection is a pure function of Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.consumer import Batch
from services.projector.consumer import Projection, open_clients
from services.projector.settings import ProjectorSettings
from services.projector.store import Snapshot, Store

log = logging.getLogger(__name__)

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED: Final = frozenset({"public", "information_schema"})


class ReplayFailed(RuntimeError):
    """The replay could not reach the end offsets it took at start."""


def check_schema_name(name: str) -> str:
    """`name` if it is a plain lower-case identifier that is safe to drop; raises ValueError otherwise."""
    if not _SCHEMA_NAME.fullmatch(name) or name in _RESERVED or name.startswith("pg_"):
        raise ValueError(
            f"{name!r} is not a schema a replay may (re)create: use [a-z_][a-z0-9_]*, not public"
        )
    return name


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    schema: str
    partitions: int
    records: int
    stored: int


def _until(batch: Batch, ends: dict[TopicPartition, int]) -> Batch:
    """The records of `batch` before the end offsets."""
    return {tp: [m for m in msgs if m.offset < ends.get(tp, 0)] for tp, msgs in batch.items()}


async def _drain(
    projection: Projection, ends: dict[TopicPartition, int], stop: asyncio.Event
) -> tuple[int, int]:
    """Apply every record below `ends`; returns (records read, events stored)."""
    records = stored = 0
    pending = {tp for tp, end in ends.items() if await projection.consumer.position(tp) < end}
    last_progress = time.monotonic()
    while pending:
        if stop.is_set():
            raise ReplayFailed("stopped before reaching the end offsets")
        if time.monotonic() - last_progress > projection.settings.replay_stall_seconds:
            raise ReplayFailed(f"no progress for {projection.settings.replay_stall_seconds:.0f}s")
        batch = _until(await projection.poll(), ends)
        if any(batch.values()):
            result = await projection.process(batch)
            records += sum(len(msgs) for msgs in batch.values())
            stored += result.stored
            last_progress = time.monotonic()
        # position(), not the last record's offset: transaction markers take offsets too.
        done = {tp for tp in pending if await projection.consumer.position(tp) >= ends[tp]}
        if done:
            projection.consumer.pause(*done)
            pending -= done
    return records, stored


async def replay(
    settings: ProjectorSettings, engine: AsyncEngine, schema: str, stop: asyncio.Event
) -> ReplaySummary:
    """Recreate `schema` and project both topics into it, from offset 0 to the end offsets at start."""
    store = Store(engine, check_schema_name(schema))
    await store.create_schema()
    async with open_clients(settings, dead_letters=False) as clients:
        projection = Projection(settings, store, clients, notify=False)
        await projection.assign()
        ends: dict[TopicPartition, int] = (
            await clients.consumer.end_offsets(projection.assigned) if projection.assigned else {}
        )
        log.info(
            "replaying schema=%s up to %s",
            schema,
            {f"{tp.topic}:{tp.partition}": o for tp, o in ends.items()},
        )
        records, stored = await _drain(projection, ends, stop)
    summary = ReplaySummary(schema, len(ends), records, stored)
    log.info("replay done schema=%s records=%d stored=%d", schema, records, stored)
    return summary


@dataclass(slots=True)
class Comparison:
    """Differences between a live and a replayed read model, and how much was compared."""

    differences: list[str] = field(default_factory=list)
    jobs_compared: int = 0
    events_compared: int = 0
    jobs_moved_on: int = 0


def _events_by_job(snapshot: Snapshot) -> dict[uuid.UUID, set[uuid.UUID]]:
    by_job: defaultdict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for event_id, row in snapshot.events.items():
        by_job[row["job_id"]].add(event_id)
    return by_job


def _row_diff(what: str, live: dict[str, Any] | None, replayed: dict[str, Any] | None) -> list[str]:
    if live is None and replayed is None:
        return []  # events of a job whose job.requested neither side could take: no row on either
    if live is None or replayed is None:
        missing = "live" if live is None else "replay"
        return [f"{what}: missing in {missing}"]
    return [
        f"{what} {column}: live={live.get(column)!r} replay={replayed.get(column)!r}"
        for column in sorted(live.keys() | replayed.keys())
        if live.get(column) != replayed.get(column)
    ]


def compare_snapshots(live: Snapshot, replayed: Snapshot) -> Comparison:
    """Compare a replayed read model with the live one, which may have moved on since the replay.

    Every replayed `job_events` row must exist, equal, in live. A job is compared (`jobs` row, every
    column) when it has the same set of events in both; a job whose live events are a strict superset of
    the replayed ones consumed records after the replay's end offsets and is only counted as moved on.
    Jobs that have no event in the replay (created after it) are not looked at.
    """
    report = Comparison()
    for event_id, row in replayed.events.items():
        report.differences += _row_diff(
            f"event {event_id} (job {row['job_id']})", live.events.get(event_id), row
        )
        report.events_compared += 1
    live_events, replayed_events = _events_by_job(live), _events_by_job(replayed)
    for job_id in sorted(replayed_events.keys() | replayed.jobs.keys()):
        mine, theirs = replayed_events.get(job_id, set()), live_events.get(job_id, set())
        if theirs > mine:
            report.jobs_moved_on += 1
        elif theirs == mine:
            report.differences += _row_diff(f"job {job_id}", live.jobs.get(job_id), replayed.jobs.get(job_id))
            report.jobs_compared += 1
        # Otherwise live lacks some replayed event: reported above with the events.
    return report


async def compare(engine: AsyncEngine, schema: str, live_schema: str | None = None) -> Comparison:
    """Compare the replay in `schema` with the live read model (`public` unless `live_schema`)."""
    replayed_store = Store(engine, check_schema_name(schema))
    if not await replayed_store.schema_exists():
        return Comparison(
            differences=[f"schema {schema} does not exist: run `replay --schema {schema}` first"]
        )
    live = await Store(engine, live_schema).snapshot()
    return compare_snapshots(live, await replayed_store.snapshot())
