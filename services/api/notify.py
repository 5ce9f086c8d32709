"""Waits on the projector's NOTIFYs: read-your-writes after a submit, and live SSE without polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

import asyncpg

from services.common.readmodel import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class JobNotifier:
    """One LISTEN connection per api process; any number of coroutines wait on per-job wake-ups."""

    def __init__(self, dsn: str, reconnect_seconds: float = 2.0) -> None:
        self._dsn = dsn.replace("postgresql+asyncpg://", "postgresql://")
        self._reconnect = reconnect_seconds
        self._waiters: defaultdict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="job-notifier")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            job_id = uuid.UUID(payload)
        except ValueError:
            return
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def _listen_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as e:
                log.warning("notify listener cannot connect: %s", e)
                await asyncio.sleep(self._reconnect)
                continue
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                while not self._stop.is_set() and not conn.is_closed():
                    await asyncio.sleep(self._reconnect)
                    # A cheap round trip notices a dead connection; waiters fall back to polling meanwhile.
                    await conn.execute("SELECT 1", timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                log.warning("notify listener lost its connection: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)

    @contextlib.contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set on every NOTIFY for `job_id`; subscribe before the action that causes one."""
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`, then clear it; True when it was set."""
    try:
        async with asyncio.timeout(max(seconds, 0)):
            await event.wait()
    except TimeoutError:
        return False
    event.clear()
    return True
