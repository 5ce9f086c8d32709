"""Process plumbing shared by the long-running services: signals, metrics endpoint, bounded retries."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import start_http_server

from services.common.errors import RetryableError

T = TypeVar("T")
log = logging.getLogger(__name__)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` in a fresh event loop; SIGTERM and SIGINT set `stop` for a clean shutdown."""

    async def _wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(_wrapper())


def serve_metrics(port: int | None) -> None:
    """Expose Prometheus metrics (any path answers, so `/livez` doubles as a liveness probe)."""
    if port is not None:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from other pods


async def retry(
    what: str,
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 6,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
    stop: asyncio.Event | None = None,
) -> T:
    """Call `fn` until it succeeds, retrying `RetryableError` with exponential backoff, then re-raise."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except RetryableError as e:
            if attempt == attempts or (stop is not None and stop.is_set()):
                raise
            log.warning("retrying what=%s attempt=%d error=%s", what, attempt, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
