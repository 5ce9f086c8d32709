"""What the api knows of the queue and of the read model without asking the scheduler: the number of
jobs waiting (for the queue cap) and how far the projector is behind this process's own submits."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.jobs import JobStatus
from schemas.topics import JOBS_REQUESTED
from services.api.errors import RETRY_AFTER_SECONDS, ApiError
from services.common.readmodel import ConsumerOffset, Job


class QueueFull(ApiError):
    status = 429
    title = "Queue full"
    retry_after = RETRY_AFTER_SECONDS


class QuotaExceeded(ApiError):
    status = 429
    title = "Tenant quota reached"
    retry_after = RETRY_AFTER_SECONDS


class QueueDepth:
    """Jobs waiting for a slot, counted at most once per `max_age` seconds for all requests together."""

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self.value = 0
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def current(self, session: AsyncSession) -> int:
        if time.monotonic() - self._read_at < self.max_age:
            return self.value
        async with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                stmt = select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)
                self.value = int((await session.execute(stmt)).scalar_one())
                self._read_at = time.monotonic()
        return self.value


@dataclass(frozen=True, slots=True)
class Lag:
    seconds: float  # how long the oldest submit not yet projected has waited
    records: int  # submits of this process not yet projected


class ProjectionLag:
    """The submits this process had acknowledged, by partition of jobs.requested, until the projector's
    stored position passes them: the read model's lag as this process's clients see it."""

    def __init__(self, consumer: str, keep: int = 10_000) -> None:
        self.consumer = consumer
        self._acked: dict[int, deque[tuple[int, float]]] = {}
        self._keep = keep

    def acked(self, partition: int, offset: int) -> None:
        self._acked.setdefault(partition, deque(maxlen=self._keep)).append((offset, time.monotonic()))

    def newest(self) -> dict[int, int]:
        """The newest acknowledged offset per partition still waiting for the projector (as last seen)."""
        return {partition: acks[-1][0] for partition, acks in self._acked.items() if acks}

    async def projected(self, session: AsyncSession, marks: dict[int, int]) -> bool:
        """Whether the projector has passed every offset in `marks`. What it passed is forgotten, so once
        it has caught up `newest()` is empty and a list asks nothing more."""
        passed = await self._passed(session)
        self._forget(passed)
        return all(passed.get(partition, 0) > offset for partition, offset in marks.items())

    async def _passed(self, session: AsyncSession) -> dict[int, int]:
        stmt = select(ConsumerOffset.partition, ConsumerOffset.next_offset).where(
            ConsumerOffset.consumer == self.consumer, ConsumerOffset.topic == JOBS_REQUESTED
        )
        rows = (await session.execute(stmt)).all()
        return {int(row.partition): int(row.next_offset) for row in rows}

    def _forget(self, passed: dict[int, int]) -> None:
        for partition, acks in self._acked.items():
            while acks and acks[0][0] < passed.get(partition, 0):
                acks.popleft()

    async def measure(self, session: AsyncSession) -> Lag:
        passed = await self._passed(session)
        self._forget(passed)
        now, oldest, waiting = time.monotonic(), math.inf, 0
        for acks in self._acked.values():
            if acks:
                oldest, waiting = min(oldest, acks[0][1]), waiting + len(acks)
        return Lag(seconds=0.0 if waiting == 0 else round(now - oldest, 3), records=waiting)
