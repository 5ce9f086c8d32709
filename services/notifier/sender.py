"""The sender: claims due deliveries, POSTs each as a signed Standard Webhook, logs every attempt, and
reschedules failures with full-jitter backoff until they succeed or die (then a dead letter goes to the DLQ).

No head-of-line blocking: up to `max_in_flight` attempts run at once, each on its own, and a freed place is
filled at once; a slow or failing receiver holds only its own deliveries back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from schemas.dlq import DeadLetter
from schemas.envelope import Record, encode_event
from schemas.events import JOB_EVENT_ADAPTER
from services.common.errors import BrokerUnavailable, RetryableError
from services.common.kafka import Producer, make_producer, send
from services.common.targets import PinnedResolver, TargetPolicy, TargetRefused
from services.notifier import signing
from services.notifier.backoff import Backoff
from services.notifier.settings import NotifierSettings
from services.notifier.store import AttemptResult, Claimed, Store

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "reelstream_notifier_deliveries_total",
    "Deliveries that ended, by outcome (succeeded, dead).",
    ["outcome"],
)
ATTEMPTS = Counter(
    "reelstream_notifier_attempts_total",
    "Webhook attempts, by outcome (succeeded, failed, refused).",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram("reelstream_notifier_attempt_seconds", "Duration of one webhook attempt.")
PENDING = Gauge("reelstream_notifier_pending", "Deliveries not yet delivered nor dead.")
OLDEST_PENDING = Gauge(
    "reelstream_notifier_oldest_pending_seconds",
    "Age of the oldest pending delivery (since queued or redelivered).",
)
DEAD = Gauge("reelstream_notifier_dead", "Deliveries that are dead (until redelivered).")
DEAD_LETTERED = Counter("reelstream_notifier_dead_lettered_total", "Dead deliveries put on the DLQ.")
IN_FLIGHT = Gauge("reelstream_notifier_in_flight", "Webhook attempts under way.")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class WebhookClient:
    """The HTTP client: pinned, checked addresses (`targets.py`), no redirects, no proxies from the
    environment, no cookies, bounded time and a bounded read of the answer."""

    def __init__(self, settings: NotifierSettings, resolver: AbstractResolver | None = None) -> None:
        self.policy = TargetPolicy(settings.allow_http, settings.allow_private_targets)
        self._settings = settings
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookClient:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            resolver=PinnedResolver(self.policy, self._resolver or ThreadedResolver()),
            use_dns_cache=False,
            limit=settings.max_in_flight,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout_seconds,
                connect=settings.connect_timeout_seconds,
                sock_connect=settings.connect_timeout_seconds,
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST `body`; the status and at most `max_response_bytes` of the answer. Raises `TargetRefused`
        for a URL or address that is not allowed, aiohttp/OS errors and TimeoutError for the rest."""
        assert self._session is not None, "use the client as an async context manager"
        target = self.policy.check_url(url)
        try:
            async with self._session.post(
                target, data=body, headers=headers, allow_redirects=False
            ) as response:
                return response.status, await _read_capped(response, self._settings.max_response_bytes)
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.__cause__, TargetRefused):
                raise e.__cause__ from None
            raise


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of the answer; the rest is never read (the connection is then dropped)."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = await response.content.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0 and not response.content.at_eof():
        response.close()
    return b"".join(chunks)


def _printable(text: str, limit: int = 2000) -> str:
    """`text` as the log stores it: bounded, without NUL (Postgres text refuses it) or other controls."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text[:limit])


def _error_of(status: int, answer: bytes) -> str:
    snippet = answer[:200].decode(errors="replace").strip()
    return f"HTTP {status}" + (f": {snippet}" if snippet else "")


async def attempt(
    client: WebhookClient, claimed: Claimed, secrets: list[str], clock: Clock = utcnow
) -> AttemptResult:
    """One signed POST of `claimed`; never raises for what the receiver or the network does."""
    started_at = clock()
    began = time.perf_counter()

    def done(outcome: str, status: int | None = None, error: str | None = None) -> AttemptResult:
        ms = (time.perf_counter() - began) * 1000
        return AttemptResult(outcome, started_at, ms, status, _printable(error) if error else None)

    body = signing.body(claimed.event_type, claimed.occurred_at, claimed.payload)
    try:
        headers = signing.headers(secrets, str(claimed.id), int(time.time()), body)
        status, answer = await client.post(claimed.url, body, headers)
    except TargetRefused as e:
        return done("refused", error=f"target refused: {e}")
    except signing.NoSigningSecret as e:
        return done("failed", error=str(e))
    except TimeoutError:
        return done("failed", error="timed out")
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return done("failed", error=f"{e.__class__.__name__}: {e}")
    if 200 <= status < 300:
        return done("succeeded", status)
    return done("failed", status, _error_of(status, answer))


class Sender:
    """The sender loop and its housekeeping (dead letters, gauges, purge of stale parked events)."""

    def __init__(
        self,
        settings: NotifierSettings,
        store: Store,
        client: WebhookClient,
        wake: asyncio.Event,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self._wake = wake
        self._clock = clock
        self.backoff = Backoff(
            settings.retry_initial_seconds, settings.retry_cap_seconds, settings.give_up_after_seconds
        )
        self._hold = timedelta(seconds=settings.request_timeout_seconds + settings.lease_margin_seconds)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._per_target: collections.Counter[str] = collections.Counter()
        self._producer: Producer | None = None
        self._dead_waiting = True
        self._next_housekeeping = 0.0
        self._next_purge = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; then lets the attempts under way finish for `shutdown_timeout_seconds`."""
        backoff = 0.2
        try:
            while not stop.is_set():
                try:
                    claimed = await self._fill()
                    await self._housekeeping()
                    backoff = 0.2
                except RetryableError as e:
                    log.warning("notifier sender paused error=%s retry_in=%.1fs", e, backoff)
                    await self._wait(stop, backoff)
                    backoff = min(backoff * 2, self.settings.retry_max_seconds)
                    continue
                if not claimed:
                    await self._wait(stop, self.settings.sender_poll_seconds)
        finally:
            await self._drain()
            if self._producer is not None:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    async with asyncio.timeout(5):
                        await self._producer.stop()

    async def _fill(self) -> bool:
        """Claim as many due deliveries as there are free places and start their attempts; True when it
        filled every place (more may be due)."""
        free = self.settings.max_in_flight - len(self._in_flight)
        if free <= 0:
            return False
        wanted = min(free, self.settings.claim_batch)
        per_target = self.settings.max_in_flight_per_target
        busy = [url for url, n in self._per_target.items() if n >= per_target]
        claimed = await self.store.claim(wanted, self._clock(), self._hold, per_target, busy)
        if not claimed:
            return False
        secrets = await self.store.secrets(c.tenant for c in claimed)
        for item in claimed:
            self._per_target[item.url] += 1
            task = asyncio.create_task(self._deliver(item, secrets.get(item.tenant, [])))
            self._in_flight.add(task)
            task.add_done_callback(partial(self._done, item.url))
        IN_FLIGHT.set(len(self._in_flight))
        return len(claimed) == wanted

    def _done(self, url: str, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._per_target[url] -= 1
        if self._per_target[url] <= 0:
            del self._per_target[url]

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until woken (new deliveries), an attempt ends, `stop`, or `seconds` pass."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                [*waiters, *self._in_flight], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()
        IN_FLIGHT.set(len(self._in_flight))

    async def _deliver(self, claimed: Claimed, secrets: list[str]) -> None:
        result = await attempt(self.client, claimed, secrets, self._clock)
        ATTEMPTS.labels(outcome=result.outcome).inc()
        ATTEMPT_SECONDS.observe(result.duration_ms / 1000)
        now = self._clock()
        next_at = None
        if result.outcome == "failed":
            next_at = self.backoff.next_attempt(claimed.failures + 1, now, claimed.retry_since)
        try:
            moved = await self.store.record(claimed, result, next_at, now)
        except (RetryableError, SQLAlchemyError) as e:
            # The claim lapses and the delivery is tried again: at least once, never lost.
            log.warning(
                "attempt not recorded delivery=%s error=%s (its claim lapses; tried again)", claimed.id, e
            )
            return
        if not moved:
            log.info("delivery=%s changed during its attempt (redelivered or reclaimed)", claimed.id)
            return
        if result.outcome == "succeeded":
            DELIVERIES.labels(outcome="succeeded").inc()
        elif next_at is None:
            DELIVERIES.labels(outcome="dead").inc()
            self._dead_waiting = True
            log.warning(
                "delivery dead delivery=%s job=%s reason=%s", claimed.id, claimed.job_id, result.error
            )
        else:
            log.info(
                "delivery failed delivery=%s attempt=%d error=%s next_in=%.0fs",
                claimed.id,
                claimed.number,
                result.error,
                (next_at - now).total_seconds(),
            )

    async def _housekeeping(self) -> None:
        """Dead letters as soon as a delivery died; gauges and the purge every `stats_interval_seconds`."""
        periodic = time.monotonic() >= self._next_housekeeping
        if self._dead_waiting or periodic:  # periodic too: deaths recorded by another replica
            await self.dead_letter_all()
        if not periodic:
            return
        self._next_housekeeping = time.monotonic() + self.settings.stats_interval_seconds
        now = self._clock()
        stats = await self.store.stats(now)
        PENDING.set(stats.pending)
        OLDEST_PENDING.set(stats.oldest_pending_seconds)
        DEAD.set(stats.dead)
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.settings.purge_interval_seconds
            await self.purge(now)

    async def purge(self, now: datetime) -> None:
        """Old finished deliveries and parked events whose job never came; bounded per call."""
        keep = timedelta(seconds=self.settings.delivery_keep_seconds)
        deleted = await self.store.purge_deliveries(now - keep)
        await self.store.purge_jobs(now - keep)
        parked = await self.store.purge_parked(now - timedelta(seconds=self.settings.parked_keep_seconds))
        if parked:
            log.warning("purged %d parked events whose job.requested never came", parked)
        if deleted:
            log.info("purged %d deliveries older than %s", deleted, keep)

    async def dead_letter_all(self, batch: int = 100) -> int:
        """Put every dead delivery not yet dead-lettered on the DLQ, each marked in the same transaction
        after the broker acknowledged it (a crash in between only repeats a dead letter)."""
        # Cleared before the query: a delivery that dies while it runs sets it again.
        self._dead_waiting = False
        total = 0
        try:
            while True:
                async with self.store.undead_lettered(batch) as (rows, conn):
                    for row in rows:
                        await send(await self._dlq_producer(), self.settings.dlq_topic, self._letter(row))
                        await self.store.mark_dead_lettered(conn, row["id"], self._clock())
                        DEAD_LETTERED.inc()
                total += len(rows)
                if len(rows) < batch:
                    return total
        except BaseException:
            self._dead_waiting = True
            raise

    async def _dlq_producer(self) -> Producer:
        if self._producer is None:
            producer = make_producer(self.settings, client_id=f"{self.settings.consumer_name}-dlq")
            try:
                await producer.start()
            except KafkaError as e:
                with contextlib.suppress(KafkaError, OSError):
                    await producer.stop()
                raise BrokerUnavailable(f"cannot start the DLQ producer: {e}") from e
            self._producer = producer
        return self._producer

    def _letter(self, row: dict[str, Any]) -> Record:
        """The dead letter of a dead delivery: its event as on the topic, with the `dlq_*` headers."""
        try:
            event = encode_event(JOB_EVENT_ADAPTER.validate_python(row["payload"]))
        except ValidationError:
            # Stored by an older or newer release: the payload as stored, without the ce_* headers.
            value = json.dumps(row["payload"], separators=(",", ":")).encode()
            event = Record(str(row["job_id"]).encode(), value, [("content-type", b"application/json")])
        letter = DeadLetter(
            original_headers=tuple(event.headers),
            reason=(
                f"webhook delivery {row['id']} of job {row['job_id']} is dead after {row['attempts']}"
                f" attempts: {row['dead_reason']}"
            ),
            source_topic=row["source_topic"],
            source_partition=row["source_partition"],
            source_offset=row["source_offset"],
            consumer=self.settings.consumer_name,
        )
        return Record(event.key, event.value, letter.headers())

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("letting %d webhook attempts finish", len(self._in_flight))
        _, late = await asyncio.wait(self._in_flight, timeout=self.settings.shutdown_timeout_seconds)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=5)
