"""The sweeper: deletes the jobs that ended more than `retention_days` ago, and empties once more the S3
prefixes of the jobs deleted lately.

A deletion (here, or `DELETE /v1/jobs/{id}` in the api) removes the job's S3 objects first and then
publishes its `job.deleted` tombstone, on which the projector removes the row. A crash between the two
leaves the row, so the next sweep (or the client's retry) does it again; deleting objects that are gone
deletes nothing. A slot still running the job when it was deleted may write an object after the delete
(the cancel reaches it within a step): `deleted_grace_seconds` after each tombstone the sweeper empties
the job's prefixes once more.

It runs in the projector process, beside the projection, and stops with it (SIGTERM); each sweep is bounded
by `sweep_timeout_seconds`, and a failed sweep is tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka.errors import KafkaError
from prometheus_client import Counter
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import DeletionReason, EventType, JobDeleted
from services.common.consumer import wait_or_stop
from services.common.db import make_engine
from services.common.errors import PermanentError, RetryableError
from services.common.kafka import Producer, make_producer, publish_event
from services.common.readmodel import Job, JobEventRow
from services.common.storage import Storage
from services.projector.settings import ProjectorSettings

log = logging.getLogger(__name__)

EXPIRED = Counter("reelstream_retention_jobs_deleted_total", "Jobs deleted because they ended too long ago.")
OBJECTS = Counter(
    "reelstream_retention_objects_deleted_total",
    "S3 objects the sweeper deleted: of expired jobs, or left behind by a slot after a delete.",
    ["why"],
)
FAILED = Counter("reelstream_retention_sweeps_failed_total", "Sweeps that failed or ran out of time.")

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SweepResult:
    expired: int = 0
    """Jobs deleted because they ended more than `retention_days` ago."""
    objects_deleted: int = 0
    """S3 objects of those jobs."""
    rechecked: int = 0
    """Jobs deleted earlier whose prefixes were emptied once more."""
    leftovers: int = 0
    """Objects found there (written by a slot after the delete)."""


class Sweeper:
    """One sweep deletes every expired job (in pages of `sweep_batch`) and re-empties the prefixes of
    the jobs deleted lately, `deleted_grace_seconds` after their tombstone."""

    def __init__(
        self,
        settings: ProjectorSettings,
        engine: AsyncEngine,
        storage: Storage,
        producer: Producer,
        *,
        schema: str | None = None,
        clock: Clock = _now,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.producer = producer
        self._engine = engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        self._clock = clock
        # Jobs whose prefixes had their second look, with their tombstone's time (pruned past the window).
        self._rechecked: dict[uuid.UUID, datetime] = {}

    async def sweep(self) -> SweepResult:
        expired, objects = await self._expire()
        rechecked, leftovers = await self._recheck()
        return SweepResult(expired, objects, rechecked, leftovers)

    async def _expire(self) -> tuple[int, int]:
        days = self.settings.retention_days
        if days is None:
            return 0, 0
        cutoff = self._clock() - timedelta(days=days)
        expired = objects = 0
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            stmt = select(Job.id, Job.tenant, Job.attempt, Job.finished_at).where(Job.finished_at < cutoff)
            if after is not None:
                stmt = stmt.where(
                    or_(Job.finished_at > after[0], and_(Job.finished_at == after[0], Job.id > after[1]))
                )
            stmt = stmt.order_by(Job.finished_at, Job.id).limit(self.settings.sweep_batch)
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
            for job_id, tenant, attempt, _ in rows:
                deleted = await self.storage.delete_job_objects(job_id)
                tombstone = JobDeleted(
                    job_id=job_id,
                    producer=self.settings.service_name,
                    attempt=attempt,
                    tenant=tenant,
                    reason=DeletionReason.RETENTION,
                    objects_deleted=deleted,
                )
                await publish_event(self.producer, self.settings.events_topic, tombstone)
                expired, objects = expired + 1, objects + deleted
                EXPIRED.inc()
                OBJECTS.labels(why="expired").inc(deleted)
                log.info("expired job=%s tenant=%s objects_deleted=%d", job_id, tenant, deleted)
            if len(rows) < self.settings.sweep_batch:
                return expired, objects
            after = (rows[-1][3] or cutoff, rows[-1][0])  # never None: it is before the cutoff

    async def _recheck(self) -> tuple[int, int]:
        """Empty once more the prefixes of the jobs whose tombstone is between `deleted_grace_seconds` and
        that plus `deleted_recheck_window_seconds` old, each once per process: a tombstone projected late
        (a backlog) is still seen, as long as it is within the window."""
        now = self._clock()
        until = now - timedelta(seconds=self.settings.deleted_grace_seconds)
        since = until - timedelta(seconds=self.settings.deleted_recheck_window_seconds)
        self._rechecked = {job: at for job, at in self._rechecked.items() if at >= since}
        rechecked = leftovers = 0
        after: tuple[datetime, uuid.UUID] = (since, uuid.UUID(int=0))
        while True:
            at, job = JobEventRow.occurred_at, JobEventRow.job_id
            stmt = (
                select(job, at)
                .where(JobEventRow.type == EventType.DELETED.value, at <= until)
                .where(or_(at > after[0], and_(at == after[0], job > after[1])))
                .order_by(at, job)
                .limit(self.settings.sweep_batch)
            )
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
            for job_id, deleted_at in rows:
                if job_id in self._rechecked:
                    continue
                found = await self.storage.delete_job_objects(job_id)
                self._rechecked[job_id] = deleted_at
                rechecked, leftovers = rechecked + 1, leftovers + found
                if found:
                    OBJECTS.labels(why="left_after_delete").inc(found)
                    log.warning("deleted job=%s had %d objects written after its delete", job_id, found)
            if len(rows) < self.settings.sweep_batch:
                return rechecked, leftovers
            after = (rows[-1][1], rows[-1][0])

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every `sweep_interval_seconds` until `stop`, each sweep within `sweep_timeout_seconds`."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.settings.sweep_timeout_seconds):
                    result = await self.sweep()
                if result.expired or result.leftovers:
                    log.info(
                        "swept expired=%d objects_deleted=%d rechecked=%d leftovers=%d",
                        result.expired,
                        result.objects_deleted,
                        result.rechecked,
                        result.leftovers,
                    )
            except (RetryableError, PermanentError, DBAPIError, OSError, TimeoutError) as e:
                FAILED.inc()
                log.warning("sweep failed error=%s; again in %.0fs", e, self.settings.sweep_interval_seconds)
            await wait_or_stop(stop, self.settings.sweep_interval_seconds)


async def run_sweeper(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    """The sweeper with its own Postgres pool, Kafka producer and S3 client, until `stop`; waits for Kafka
    at start."""
    engine = make_engine(settings)
    try:
        async with Storage(settings) as storage:
            while not stop.is_set():
                producer = make_producer(settings, client_id=f"{settings.consumer_name}-sweeper")
                try:
                    await producer.start()
                except (KafkaError, OSError) as e:
                    log.warning("sweeper cannot reach Kafka error=%s", e)
                    await producer.stop()
                    await wait_or_stop(stop, settings.retry_max_seconds)
                    continue
                try:
                    await Sweeper(settings, engine, storage, producer).run(stop)
                finally:
                    await producer.stop()
    finally:
        await engine.dispose()
