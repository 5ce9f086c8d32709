"""Load primitives of the control-plane benchmark: closed-loop submitters, readers and SSE watchers.

aiohttp rather than httpx: the load generator shares the machine's two cores with the whole stack, and
aiohttp spends about a third of httpx's CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from services.cli.config import auth_headers
from services.common.kafka import make_consumer, partitions_of
from services.common.settings import CommonSettings


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


async def paced(
    rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, T]]
) -> tuple[list[T], float]:
    """An open loop: start `one(n)` at n / `rate` s for `seconds`, on that schedule however long each
    takes, and wait for them all. Their results, and the rate the starts kept (a loop that lags, the
    load generator short of CPU, shows here)."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    tasks: list[asyncio.Task[T]] = []
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, begin + n / rate - loop.time()))
        tasks.append(asyncio.create_task(one(n)))
    kept = len(tasks) / (loop.time() - begin + 1 / rate)
    return list(await asyncio.gather(*tasks)), kept


@dataclass
class Submits:
    """What a closed-loop submit run saw."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the 202s
    statuses: Counter[int] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    read_after: Counter[int] = field(default_factory=Counter)  # GET right after a 202, by status

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0


async def submit_load(
    http: aiohttp.ClientSession,
    base: str,
    body: Callable[[int], dict[str, Any]],
    *,
    clients: int,
    seconds: float,
    read_every: int = 10,
) -> Submits:
    """`clients` loops POSTing for `seconds`; every `read_every`-th 202 is read back at once (a 404 there
    breaks read-your-writes)."""
    out = Submits()
    counter = iter(range(10**9))
    started = time.perf_counter()
    deadline = started + seconds

    async def one_client() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            t0 = time.perf_counter()
            try:
                async with http.post(f"{base}/v1/jobs", json=body(n)) as response:
                    payload = await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            out.statuses[status] += 1
            if status != 202:
                await asyncio.sleep(0.05)
                continue
            out.latencies.append(time.perf_counter() - t0)
            job_id = json.loads(payload)["id"]
            out.ids.append(job_id)
            if n % read_every == 0:
                async with http.get(f"{base}/v1/jobs/{job_id}") as read:
                    await read.read()
                    out.read_after[read.status] += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    out.seconds = time.perf_counter() - started
    return out


async def read_load(
    http: aiohttp.ClientSession, base: str, ids: list[str], *, clients: int, seconds: float
) -> dict[str, list[float]]:
    """Closed-loop readers alternating GET job (a random one of `ids`) and GET list; latencies by kind."""
    took: dict[str, list[float]] = {"get": [], "list": [], "errors": []}
    deadline = time.perf_counter() + seconds
    rng = random.Random(1)

    async def one_client(k: int) -> None:
        turn = k
        while time.perf_counter() < deadline:
            kind = "get" if turn % 2 == 0 else "list"
            turn += 1
            url = f"{base}/v1/jobs/{rng.choice(ids)}" if kind == "get" else f"{base}/v1/jobs?limit=20"
            t0 = time.perf_counter()
            async with http.get(url) as response:
                await response.read()
                if response.status != 200:
                    took["errors"].append(response.status)
                    continue
            took[kind].append(time.perf_counter() - t0)

    await asyncio.gather(*(one_client(k) for k in range(clients)))
    return took


@dataclass
class Watch:
    """One SSE stream's view of its job."""

    connected: asyncio.Event = field(default_factory=asyncio.Event)
    opened_at: float = 0.0  # wall clock when the stream answered 200
    delays: list[float] = field(default_factory=list)  # receipt - occurred_at, per live job event
    types: list[str] = field(default_factory=list)
    terminal: str | None = None
    terminal_at: float | None = None  # wall clock of the terminal event's receipt
    error: str | None = None


TERMINAL = ("job.succeeded", "job.failed", "job.cancelled")


FRAME = re.compile(rb"event: (job\.[a-z_]+)\ndata: ([^\n]*)\n\n")
OCCURRED = re.compile(rb'"occurred_at":"([^"]+)"')


async def watch(base: str, job_id: str, into: Watch, within: float) -> None:
    """Follow the job's SSE stream until its terminal event (or `within` seconds), timing each job event.

    A raw HTTP/1.1 reader rather than a client library: 2,000 of these share two cores with the stack,
    and a frame costs it one regex match. Each SSE frame is one chunk of the chunked body (the api yields
    whole frames), so frames are found in the raw bytes whatever the chunk headers around them.
    """
    url = urlsplit(base)
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
            try:
                auth = auth_headers(ROOT)["Authorization"]
                request = (
                    f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Authorization: {auth}\r\n\r\n"
                )
                writer.write(request.encode())
                status = await reader.readline()
                if b" 200 " not in status:
                    into.error = status.decode(errors="replace").strip()
                    return
                into.opened_at = time.time()
                into.connected.set()
                await _frames(reader, into)
            finally:
                writer.close()
    except TimeoutError:
        into.error = "no terminal event in time"
    except OSError as e:
        into.error = f"{type(e).__name__}: {e}"
    finally:
        into.connected.set()


async def _frames(reader: asyncio.StreamReader, into: Watch) -> None:
    pending = b""
    while data := await reader.read(65536):
        received = time.time()
        pending += data
        end = 0
        for match in FRAME.finditer(pending):
            end = match.end()
            kind = match[1].decode()
            if kind == "job.queue_position":
                continue
            into.types.append(kind)
            stamp = OCCURRED.search(match[2])
            occurred = datetime.fromisoformat(stamp[1].decode()).timestamp() if stamp else None
            # Live delivery only: an event from before the stream opened is replayed, not delivered.
            if occurred is not None and occurred >= into.opened_at:
                into.delays.append(received - occurred)
            if kind in TERMINAL:
                into.terminal, into.terminal_at = kind, received
                return
        pending = pending[end:]
    into.error = "the stream ended before the terminal event"


@dataclass(slots=True)
class Hops:
    """Where a job's end spends its time on the way to a watcher, seen from outside: when a Kafka
    consumer of the benchmark's own gets each terminal record of jobs.events, and when Postgres NOTIFYs
    each change of the read model (the projector's commit), by job id, wall clock."""

    consumed: dict[str, float] = field(default_factory=dict)  # job id -> terminal record received
    notified: dict[str, list[float]] = field(default_factory=dict)  # job id -> every NOTIFY received

    def on_record(self, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        kind = next((value for name, value in headers if name == "ce_type"), b"")
        if key is not None and kind.removeprefix(b"io.reelstream.").decode() in TERMINAL:
            self.consumed.setdefault(key.decode(), time.time())

    def on_notify(self, job_id: str) -> None:
        self.notified.setdefault(job_id, []).append(time.time())

    def split(self, job_id: str, occurred: float, seen: float) -> tuple[float, float, float] | None:
        """(worker -> Kafka consumer, -> read model, -> client) of the job's end, or None when a hop was
        not observed. The read model's hop ends at the last NOTIFY before the client saw the end: the one
        that woke the api's read of it."""
        consumed = self.consumed.get(job_id)
        notified = [t for t in self.notified.get(job_id, ()) if t <= seen]
        if consumed is None or not notified:
            return None
        projected = notified[-1]
        return consumed - occurred, projected - consumed, seen - projected


@asynccontextmanager
async def hops_probe(bootstrap: str, topic: str, dsn: str, channel: str) -> AsyncIterator[Hops]:
    """A `Hops` filled while the context runs: a consumer made as the services make theirs, on every
    partition of `topic` from its end (no group, as the projector), and a LISTEN on the read model's
    channel."""
    hops = Hops()
    settings = CommonSettings(kafka_bootstrap=bootstrap)
    consumer = make_consumer(settings, group_id=None, client_id="bench-control-hops")

    async def consume() -> None:
        while True:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for msg in messages:
                    hops.on_record(msg.key, msg.headers)

    async with contextlib.AsyncExitStack() as stack:
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        partitions = await partitions_of(settings, [topic])
        consumer.assign(partitions)
        for tp, offset in (await consumer.end_offsets(partitions)).items():
            consumer.seek(tp, offset)
        await conn.add_listener(channel, lambda _c, _p, _ch, payload: hops.on_notify(payload))
        task = asyncio.create_task(consume(), name="hops-consumer")
        try:
            yield hops
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
