"""`reelstream-projector`: run the projection live, or rebuild and check the read model.

reelstream-projector                    project jobs.requested + jobs.events into Postgres until SIGTERM
reelstream-projector replay --schema S  rebuild the read model into schema S (dropped first), then exit
reelstream-projector compare --schema S compare schema S with `public`; exit 1 and print differences
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from functools import partial

from services.common.consumer import wait_or_stop
from services.common.db import make_engine
from services.common.errors import RetryableError
from services.common.logging import observe
from services.common.runtime import run_until_signalled, serve_metrics
from services.projector.consumer import Projection, open_clients
from services.projector.replay import ReplayFailed, check_schema_name, compare, replay
from services.projector.retention import run_sweeper
from services.projector.settings import ProjectorSettings
from services.projector.store import Store

log = logging.getLogger(__name__)


async def run_live(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    """Project into `public` until `stop`; waits (with back-off) for Kafka to be reachable at start. The
    retention sweeper (`retention.py`) runs beside it, on its own connections, and stops with it.

    No ping before each transaction: one that fails on a closed connection is retried from the stored
    offsets like any other, and the ping would add a round trip to every batch.
    """
    engine = make_engine(settings, pre_ping=False)
    sweeper = asyncio.create_task(run_sweeper(settings, stop), name="sweeper")
    backoff = 0.5
    try:
        while not stop.is_set():
            try:
                async with open_clients(settings, dead_letters=True) as clients:
                    await Projection(settings, Store(engine), clients).run(stop)
            except RetryableError as e:
                log.warning("cannot start the projection error=%s retry_in=%.1fs", e, backoff)
                await wait_or_stop(stop, backoff)
                backoff = min(backoff * 2, settings.retry_max_seconds)
    finally:
        stop.set()
        await sweeper
        await engine.dispose()
    log.info("projector stopped")


async def run_replay(settings: ProjectorSettings, schema: str, stop: asyncio.Event) -> int:
    """The `replay` command; returns the exit status."""
    engine = make_engine(settings)
    try:
        summary = await replay(settings, engine, schema, stop)
    except (ReplayFailed, RetryableError) as e:
        print(f"replay into {schema} failed: {e}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(
        f"replayed {summary.records} records from {summary.partitions} partitions into {schema}: "
        f"{summary.stored} events stored"
    )
    return 0


async def run_compare(settings: ProjectorSettings, schema: str) -> int:
    """The `compare` command: prints every difference; returns 1 when there is any."""
    engine = make_engine(settings)
    try:
        report = await compare(engine, schema)
    finally:
        await engine.dispose()
    for line in report.differences:
        print(line)
    print(
        f"compared {report.jobs_compared} jobs and {report.events_compared} events; "
        f"{report.jobs_moved_on} jobs moved on since the replay; {len(report.differences)} differences"
    )
    return 1 if report.differences else 0


def _schema_arg(value: str) -> str:
    try:
        return check_schema_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelstream-projector", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    for name, text in (
        ("replay", "rebuild the read model from offset 0 into a fresh schema, then exit"),
        ("compare", "compare a replayed schema with public; exit 1 on differences"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--schema", required=True, type=_schema_arg, help="lower-case name, not public")
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    """Console script entry point."""
    args = _parser().parse_args(argv)
    settings = ProjectorSettings()
    observe(settings.service_name, settings)
    if args.command is None:
        serve_metrics(settings.metrics_port)
        run_until_signalled(partial(run_live, settings))
        return
    status: list[int] = []

    async def command(stop: asyncio.Event) -> None:
        if args.command == "replay":
            status.append(await run_replay(settings, args.schema, stop))
        else:
            status.append(await run_compare(settings, args.schema))

    run_until_signalled(command)
    sys.exit(status[0] if status else 1)


if __name__ == "__main__":
    run()
