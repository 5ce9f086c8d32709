"""Process plumbing shared by the long-running services: signals, metrics endpoint, bounded retries."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import uvloop
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from services.common.errors import RetryableError

T = TypeVar("T")
log = logging.getLogger(__name__)


# Young objects collected every this many allocations (CPython's default is 700).
GC_YOUNG_THRESHOLD: Final = 10_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what the process made to start (modules, models, the app):
    a service calls this once, just before it starts serving. Without it, each full collection walked
    that whole heap while every request waited: in the api under load, pauses of 180-230 ms, the p99 of
    reads and submits. Frozen objects are never collected, which costs nothing for what lives as long as
    the process. Young collections also run less often, so fewer objects reach the old generation."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class _Pauses:
    open = 0  # `collector_paused` blocks open now (they may interleave on one event loop)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cyclic collection while the block runs; the collector is back on when the last open
    block ends, and collects as usual from there.

    For work that makes many objects that all die together when it ends (a consumed batch: its records,
    events and rows), which the collector would otherwise walk again and again while they live: in the
    projector a third of its CPU. What the block leaves behind as cyclic garbage is collected once the
    collector is back, so memory stays bounded by what one block makes.
    """
    if _Pauses.open == 0 and not gc.isenabled():  # switched off by someone else: theirs to switch back on
        yield
        return
    _Pauses.open += 1
    gc.disable()
    try:
        yield
    finally:
        _Pauses.open -= 1
        if _Pauses.open == 0:
            gc.enable()


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]], *, settle: bool = True) -> None:
    """Run `main(stop)` in a fresh uvloop event loop (the api's, through uvicorn, is one too: it spends less
    of the process's CPU per socket event and timer than asyncio's own, and the consumers and workers
    make thousands a second); SIGTERM and SIGINT set `stop` for a clean shutdown. The heap made so far
    is settled first (`settle_heap`) unless `settle` is False."""

    async def _wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if settle:
        settle_heap()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_wrapper())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Probes and scrapes every few seconds: not worth a log line each."""


def serve_metrics(port: int | None, ready: Callable[[], bool] | None = None) -> None:
    """Expose Prometheus metrics (any path answers, so `/livez` doubles as a liveness probe). With
    `ready`, `/readyz` answers 200 while it holds and 503 otherwise: a readiness probe."""
    if port is None:
        return
    metrics = make_wsgi_app()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if ready is None or environ.get("PATH_INFO") != "/readyz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        ok = ready()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ready\n" if ok else b"not ready\n"]

    server = make_server("0.0.0.0", port, app, ThreadingWSGIServer, _QuietHandler)  # noqa: S104 - scraped from other pods
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


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
