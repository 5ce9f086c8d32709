"""`reelstream-notifier`: calls each job's webhook (Standard Webhooks) for the events it asked for.

Two loops in one process over one Postgres outbox: the consumer turns `jobs.requested` and `jobs.events`
into deliveries (with its Kafka offsets, in one transaction), the sender works them off. Replicas may run
side by side: the consumer's batches are serialised by an advisory lock and skip what another applied,
and senders claim deliveries with `FOR UPDATE SKIP LOCKED`. SIGTERM stops both; attempts under way may
finish for `shutdown_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from aiohttp.abc import AbstractResolver

from services.common.consumer import wait_or_stop
from services.common.db import make_engine
from services.common.errors import RetryableError
from services.common.logging import observe
from services.common.runtime import run_until_signalled, serve_metrics
from services.notifier.consumer import Subscriptions, open_clients
from services.notifier.sender import Sender, WebhookClient
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store

log = logging.getLogger(__name__)


async def consume(
    settings: NotifierSettings, store: Store, queued: asyncio.Event, stop: asyncio.Event
) -> None:
    """The consumer loop until `stop`; waits (with back-off) for Kafka to be reachable."""
    backoff = 0.5
    while not stop.is_set():
        try:
            async with open_clients(settings) as (consumer, admin):
                await Subscriptions(settings, store, consumer, admin, queued).run(stop)
        except RetryableError as e:
            log.warning("cannot start the notifier consumer error=%s retry_in=%.1fs", e, backoff)
            await wait_or_stop(stop, backoff)
            backoff = min(backoff * 2, settings.retry_max_seconds)


async def run_live(
    settings: NotifierSettings, stop: asyncio.Event, resolver: AbstractResolver | None = None
) -> None:
    """Both loops until `stop`. `resolver` replaces the system's name resolution (tests)."""
    engine = make_engine(settings)
    store = Store(engine)
    queued = asyncio.Event()
    try:
        async with WebhookClient(settings, resolver) as client, asyncio.TaskGroup() as tasks:
            tasks.create_task(consume(settings, store, queued, stop))
            tasks.create_task(Sender(settings, store, client, queued).run(stop))
    finally:
        await engine.dispose()
    log.info("notifier stopped")


def run() -> None:
    """Console script entry point."""
    settings = NotifierSettings()
    observe(settings.service_name, settings)
    if settings.allow_http or settings.allow_private_targets:
        log.warning(
            "webhook targets are not restricted: allow_http=%s allow_private_targets=%s (development only)",
            settings.allow_http,
            settings.allow_private_targets,
        )
    serve_metrics(settings.metrics_port)
    run_until_signalled(partial(run_live, settings))


if __name__ == "__main__":
    run()
