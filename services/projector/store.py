"""The SQL side of the projection: one transaction per Kafka batch writes the event rows, the recomputed
`jobs` rows, the NOTIFYs and the consumer offsets, so the offsets are exactly-once with the rows.

The same code writes the live read model (`public`) and a replay (another schema): statements are built on
the mapped tables and the schema is chosen with SQLAlchemy's `schema_translate_map` (the COPY of the event
rows names the schema itself).

Live batches are small (what arrived while the last transaction ran), so the cost per batch is the cost
per event: every statement is built once, at import, and each table gets one statement per batch (the
event rows one binary COPY, the `jobs` rows one executemany), whatever the number of jobs in it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, any_, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.envelope import upcast
from schemas.events import JOB_EVENT_ADAPTER, EventType, JobEvent, JobRequested, VideoResult
from schemas.jobs import ResolvedRequest
from services.common.consumer import advance_offsets, stored_offsets, unapplied
from services.common.db import CONNECTION_LOST, connection_lost
from services.common.errors import DatabaseUnavailable
from services.common.readmodel import (
    NOTIFY_CHANNEL,
    READ_MODEL_TABLES,
    Base,
    Job,
    JobEventRow,
)
from services.projector.errors import refusal
from services.projector.fold import JOB_COLUMNS, JobView, StoredEvent, batch_changes, columns_of

log = logging.getLogger(__name__)

JOBS = Base.metadata.tables[Job.__tablename__]
EVENTS = Base.metadata.tables[JobEventRow.__tablename__]
# Set from the first job.requested and never changed afterwards (first request wins).
_IMMUTABLE_JOB_COLUMNS = frozenset(
    {"id", "tenant", "priority", "model", "request", "idempotency_key", "request_hash", "created_at"}
)
_MAX_INT4 = 2**31 - 1


def _upsert(table: Any, key: list[str], mutable: Iterable[str]) -> Any:
    """INSERT ... ON CONFLICT (key) DO UPDATE of the `mutable` columns, for executemany."""
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=key, set_={name: statement.excluded[name] for name in mutable}
    )


_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))
# A job's stored rows without their payloads; the payloads of those not in `KnownEvents` come after.
_SELECT_ROWS = select(EVENTS.c.job_id, EVENTS.c.seq, EVENTS.c.applied, EVENTS.c.event_id).where(
    EVENTS.c.job_id.in_(bindparam("job_ids", expanding=True))
)
_AMONG_IDS = EVENTS.c.event_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))
_SELECT_PAYLOADS = select(EVENTS.c.event_id, EVENTS.c.payload).where(_AMONG_IDS)

# Event ids stored already, among a batch's: what a COPY must leave out (see `Store._insert_events`).
_STORED_EVENT_IDS = select(EVENTS.c.event_id).where(_AMONG_IDS)
# The COPY's columns, in the order `_event_record` gives them.
_EVENT_COLUMNS = ("event_id", "job_id", "seq", "type", "attempt", "applied", "occurred_at", "payload")
assert set(_EVENT_COLUMNS) == set(EVENTS.columns.keys()), "every job_events column, each once"
_UPSERT_JOBS = _upsert(JOBS, ["id"], (name for name in JOB_COLUMNS if name not in _IMMUTABLE_JOB_COLUMNS))
# A tombstone removes the job's row and every event of it but the tombstone, which stays to fence off
# whatever arrives for the job afterwards (and to end its streams).
_DELETE_JOBS = delete(JOBS).where(JOBS.c.id.in_(bindparam("job_ids", expanding=True)))
_DELETE_HISTORY = delete(EVENTS).where(
    EVENTS.c.job_id.in_(bindparam("job_ids", expanding=True)), EVENTS.c.type != EventType.DELETED.value
)
_NOTIFY = text("SELECT pg_notify(:channel, id) FROM unnest(CAST(:ids AS text[])) AS id")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed record in partition order; `event` is None for a record that was dead-lettered."""

    topic: str
    partition: int
    offset: int
    event: JobEvent | None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch changed."""

    stored: int = 0
    applied: int = 0
    skipped: int = 0
    jobs: int = 0
    deleted: int = 0

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All rows of one schema's `jobs` and `job_events`, as column dicts keyed by id."""

    jobs: dict[uuid.UUID, dict[str, Any]]
    events: dict[uuid.UUID, dict[str, Any]]


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


def unfit(event: JobEvent) -> str | None:
    """Why `event` does not fit the read model's columns, or None.

    Such an event would fail its batch's transaction; the consumer dead-letters it up front instead of
    finding it by splitting the batch.
    """
    if isinstance(event, JobRequested):
        texts = {
            "tenant": event.tenant,
            "idempotency_key": event.idempotency_key,
            "request_hash": event.request_hash,
            "model": event.request.model,
        }
        for name, value in texts.items():
            limit = getattr(JOBS.c[name].type, "length", None)
            if value is not None and limit is not None and len(value) > limit:
                return f"{name} is longer than the {limit} characters the read model stores"
    values = vars(event)  # a field the event type lacks is simply absent: no AttributeError to raise
    for name in ("attempt", "slot", "step", "total_steps"):
        number = values.get(name)
        if isinstance(number, int) and number > _MAX_INT4:
            return f"{name} {number} is larger than the read model stores"
    return None


def _lock_key(consumer: str, schema: str | None) -> int:
    """A stable signed 64-bit advisory lock id for one projection (consumer name and target schema)."""
    digest = hashlib.sha256(f"{schema or 'public'}\x00{consumer}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _event_record(job_id: uuid.UUID, stored: StoredEvent) -> tuple[Any, ...]:
    """One `job_events` row as the COPY takes it: the values of `_EVENT_COLUMNS`, in that order."""
    event = stored.event
    return (
        event.event_id,
        job_id,
        stored.seq,
        event.type.value,
        event.attempt,
        stored.applied,
        event.occurred_at,
        event.model_dump_json(),  # JSON text, as the jsonb codec takes it
    )


def _read_payload(payload: Mapping[str, Any]) -> JobEvent:
    # Stored payloads keep the version they were written with; upcast them like records off the wire.
    return JOB_EVENT_ADAPTER.validate_python(upcast(dict(payload)))


# A stored row's identity: job_events rows are never updated, so the event decoded from a row with these
# three values is the same for as long as the row exists.
RowKey = tuple[uuid.UUID, uuid.UUID, int]  # (event_id, job_id, seq)


class KnownEvents:
    """The decoded events of rows this process read or wrote, the most recently used `limit` of them.

    Every batch folds each job it touches from all its stored rows, and a running job is touched by batch
    after batch: without this, each of them would read and validate the job's whole history again (a job
    with 100 rows, 100 payloads per batch). Which rows a job has is still read every time; only the
    payloads of rows not known here are read and decoded.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._events: dict[RowKey, JobEvent] = {}

    def get(self, key: RowKey) -> JobEvent | None:
        event = self._events.pop(key, None)
        if event is not None:
            self._events[key] = event  # most recently used last
        return event

    def add(self, key: RowKey, event: JobEvent) -> None:
        self._events.pop(key, None)
        self._events[key] = event
        while len(self._events) > self.limit:
            del self._events[next(iter(self._events))]

    def __len__(self) -> int:
        return len(self._events)


def event_as_read_now(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `job_events` row whose payload is the event as today's code reads it: a row written before an
    optional field was added then equals its replay, which stores that field's default."""
    return {**row, "payload": _read_payload(row["payload"]).model_dump(mode="json")}


def job_as_read_now(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `jobs` row whose request and result are as today's code reads them: a row projected before an
    optional field was added (a speed tier, a thumbnail) then equals its replay, which stores the default."""
    out = dict(row)
    if out.get("request") is not None:
        out["request"] = ResolvedRequest.model_validate(out["request"]).model_dump(mode="json")
    if out.get("result") is not None:
        out["result"] = VideoResult.model_validate(out["result"]).model_dump(mode="json")
    return out


def _job_row(view: JobView) -> dict[str, Any]:
    row = columns_of(view)
    row["status"] = view.status.value
    row["phase"] = view.phase.value
    return row


class Store:
    """The read model in one schema (None: the default search path, i.e. `public`)."""

    def __init__(self, engine: AsyncEngine, schema: str | None = None) -> None:
        self.schema = schema
        self._engine = engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        self.known = KnownEvents()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; losing Postgres becomes `DatabaseUnavailable` (retryable), data that Postgres
        refuses becomes `RecordRefused` (retrying the same rows would fail alike)."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except CONNECTION_LOST as e:
            raise DatabaseUnavailable(f"read model transaction failed: {e}") from e
        except (DBAPIError, asyncpg.PostgresError) as e:  # the COPY's errors come from the driver, unwrapped
            if connection_lost(e):
                raise DatabaseUnavailable(f"read model transaction failed: {e}") from e
            refused = refusal(e)
            if refused is None:
                raise
            raise refused from e

    async def create_schema(self) -> None:
        """Drop and recreate this store's schema with empty tables (for a replay; never `public`)."""
        if not self.schema:
            raise ValueError("refusing to recreate the default schema")
        async with self._transaction() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {_quoted(self.schema)} CASCADE"))
            await conn.execute(text(f"CREATE SCHEMA {_quoted(self.schema)}"))
            await conn.run_sync(Base.metadata.create_all, tables=list(READ_MODEL_TABLES))

    async def load_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition) for `consumer`."""
        async with self._transaction() as conn:
            return await stored_offsets(conn, consumer)

    async def apply_batch(self, consumer: str, batch: Sequence[Incoming], *, notify: bool) -> BatchResult:
        """Apply one consumed batch in one transaction, and advance `consumer`'s offsets past it.

        Records below the stored offsets were applied already (by an earlier run, or by a second instance
        with the same consumer name: the advisory lock serialises them) and are skipped, so a redelivered
        batch changes nothing.
        """
        written: dict[RowKey, JobEvent] = {}
        async with self._transaction() as conn:
            await conn.execute(_LOCK, {"key": _lock_key(consumer, self.schema)})
            fresh = await unapplied(conn, consumer, batch)
            events = [r.event for r in fresh if r.event is not None]
            result = await self._apply_events(conn, events, notify, written)
            await advance_offsets(conn, consumer, fresh)
        for key, event in written.items():  # committed: the rows exist
            self.known.add(key, event)
        return replace(result, skipped=result.skipped + len(batch) - len(fresh))

    async def _apply_events(
        self, conn: AsyncConnection, events: list[JobEvent], notify: bool, written: dict[RowKey, JobEvent]
    ) -> BatchResult:
        """Store `events` and refold their jobs; the rows written are added to `written`."""
        if not events:
            return BatchResult()
        existing = await self._load_rows(conn, list({event.job_id for event in events}))
        changes = batch_changes(existing, events)
        new_rows = [_event_record(change.job_id, row) for change in changes for row in change.rows]
        if new_rows:
            stored = await self._insert_events(conn, new_rows)
            written.update(
                ((row.event.event_id, change.job_id, row.seq), row.event)
                for change in changes
                for row in change.rows
                if row.event.event_id in stored
            )
        jobs = [
            _job_row(await self._free_idempotency_key(conn, change.view) if change.requested else change.view)
            for change in changes
            if change.view is not None
        ]
        if jobs:
            await conn.execute(_UPSERT_JOBS, jobs)
        if deleted := [change.job_id for change in changes if change.deleted]:
            await conn.execute(_DELETE_JOBS, {"job_ids": deleted})
            await conn.execute(_DELETE_HISTORY, {"job_ids": deleted})
        if notify and changes:
            ids = sorted(str(change.job_id) for change in changes)
            await conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "ids": ids})
        return BatchResult(
            stored=len(new_rows),
            applied=sum(row.applied for change in changes for row in change.rows),
            skipped=len(events) - len(new_rows),
            jobs=len(jobs),
            deleted=len(deleted),
        )

    async def _insert_events(self, conn: AsyncConnection, records: list[tuple[Any, ...]]) -> set[uuid.UUID]:
        """Write `records` (from `_event_record`) with one binary COPY: a full batch's rows in half the time
        of an INSERT per row, in this transaction (the driver's connection is the transaction's).

        What `INSERT ... ON CONFLICT (event_id) DO NOTHING` did is kept: an event id stored already, or
        twice in the batch, is left out (the fold has dropped a job's own redeliveries, so this takes an id
        that another job used). A clash on (job_id, seq) still fails the batch. Returns the ids written.
        """
        ids = [record[0] for record in records]
        seen = set((await conn.execute(_STORED_EVENT_IDS, {"ids": ids})).scalars())
        fresh = []
        for record in records:
            if record[0] not in seen:
                seen.add(record[0])
                fresh.append(record)
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None, "a connection in a transaction has its driver's connection"
        await driver.copy_records_to_table(
            EVENTS.name, records=fresh, columns=_EVENT_COLUMNS, schema_name=self.schema
        )
        return {record[0] for record in fresh}

    async def _load_rows(
        self, conn: AsyncConnection, job_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[StoredEvent]]:
        """Each job's stored rows, their events from `known` where it has them and from Postgres otherwise."""
        listed = (await conn.execute(_SELECT_ROWS, {"job_ids": job_ids})).all()
        events: dict[RowKey, JobEvent] = {}
        missing = []
        for job_id, seq, _, event_id in listed:
            key = (event_id, job_id, seq)
            if (event := self.known.get(key)) is not None:
                events[key] = event
            else:
                missing.append(key)
        if missing:
            payloads = await conn.execute(_SELECT_PAYLOADS, {"ids": [key[0] for key in missing]})
            by_id: dict[uuid.UUID, Any] = {row.event_id: row.payload for row in payloads}
            for key in missing:
                # Only the projection deletes rows, under the lock this transaction holds; a row gone all
                # the same is left out, as if the first read had come a moment later.
                if (payload := by_id.get(key[0])) is not None:
                    events[key] = _read_payload(payload)
                    self.known.add(key, events[key])  # a committed row (read committed shows no other)
        rows: defaultdict[uuid.UUID, list[StoredEvent]] = defaultdict(list)
        for job_id, seq, applied, event_id in listed:
            if (event := events.get((event_id, job_id, seq))) is not None:
                rows[job_id].append(StoredEvent(seq=seq, applied=applied, event=event))
        return rows

    async def _free_idempotency_key(self, conn: AsyncConnection, view: JobView) -> JobView:
        """Drop the key of a job whose (tenant, key) another job holds already.

        The api derives keyed job ids from the key, so this needs a misbehaving producer; without it the
        unique index would fail the batch on every retry and stall the whole projection.
        """
        if view.idempotency_key is None:
            return view
        holder = await conn.scalar(
            select(JOBS.c.id).where(
                JOBS.c.tenant == view.tenant,
                JOBS.c.idempotency_key == view.idempotency_key,
                JOBS.c.id != view.id,
            )
        )
        if holder is None:
            return view
        log.warning("idempotency key taken job=%s holder=%s tenant=%s", view.id, holder, view.tenant)
        return replace(view, idempotency_key=None)

    async def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (never `public`)."""
        if not self.schema:
            raise ValueError("refusing to drop the default schema")
        async with self._transaction() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {_quoted(self.schema)} CASCADE"))

    async def schema_exists(self) -> bool:
        async with self._transaction() as conn:
            found = await conn.scalar(
                text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :name"),
                {"name": self.schema or "public"},
            )
        return bool(found)

    async def snapshot(self) -> Snapshot:
        """Every `jobs` and `job_events` row, keyed by id (for `compare`); payloads as read now."""
        async with self._transaction() as conn:
            jobs = {
                row["id"]: job_as_read_now(dict(row)) for row in (await conn.execute(select(JOBS))).mappings()
            }
            rows = (await conn.execute(select(EVENTS))).mappings()
            events = {row["event_id"]: event_as_read_now(dict(row)) for row in rows}
        return Snapshot(jobs=jobs, events=events)
