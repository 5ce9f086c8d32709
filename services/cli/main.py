"""`reelstream`: the command line of the service. The job commands (`submit`, `watch`, `get`, `list`,
`cancel`, `delete`, `download`, `models`; services/cli/jobs.py) talk to the api over HTTP. The admin
commands (`keys`, `tenants`, `webhooks`) talk to the database directly, as an operator does from a machine
that can reach it (the database URL comes from REELSTREAM_DATABASE_URL, as for the services)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from services.cli.client import DEFAULT_API_URL
from services.cli.jobs import COMMANDS, Target
from services.common.db import make_engine, make_sessions
from services.common.settings import CommonSettings
from services.common.tenants import (
    BadTenantName,
    create_key,
    find_key,
    list_keys,
    revoke_key,
    rotate_webhook_secret,
    set_limits,
)

T = TypeVar("T")
LOCAL_LIMITS: dict[str, Any] = {
    "max_queued_jobs": None,
    "max_running_jobs": None,
    "gpu_seconds_per_day": None,
    "submits_per_second": 100_000.0,
    "reads_per_second": 100_000.0,
}


def _in_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction, committed if it returns."""

    async def main() -> T:
        engine = make_engine(CommonSettings())
        try:
            async with make_sessions(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except BadTenantName as e:
        raise click.BadParameter(str(e), param_hint="--tenant") from e


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group()
@click.option(
    "--api",
    "api_url",
    envvar="REELSTREAM_API_URL",
    default=DEFAULT_API_URL,
    show_default=True,
    help="The api the job commands talk to (or REELSTREAM_API_URL).",
)
@click.pass_context
def cli(ctx: click.Context, api_url: str) -> None:
    """reelstream: asynchronous text-to-video.

    The job commands send the key of REELSTREAM_API_KEY, else of .run/api-key (the local stack's)."""
    ctx.ensure_object(Target).api_url = api_url


for command in COMMANDS:
    cli.add_command(command)


@cli.group()
def keys() -> None:
    """API keys: each names a tenant; only its hash is stored."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for (made if new).")
@click.option("--name", default="key", show_default=True, help="A label to tell keys apart.")
@click.option("--admin", is_flag=True, help="May manage keys and tenants over /v1/admin.")
def keys_create(tenant: str, name: str, admin: bool) -> None:
    """Make a key and print it: it is shown this once."""
    key, info = _in_session(lambda s: create_key(s, tenant, name, admin=admin))
    _print({"key": key, **info.public()})


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
def keys_list(tenant: str | None) -> None:
    """Every key (never the key itself: its first characters)."""
    _print([info.public() for info in _in_session(lambda s: list_keys(s, tenant))])


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def keys_revoke(key_id: uuid.UUID) -> None:
    """Revoke a key; api processes refuse it within their key cache time (10 s by default)."""
    info = _in_session(lambda s: revoke_key(s, key_id))
    if info is None:
        raise click.ClickException(f"no key with id {key_id}")
    _print(info.public())


@keys.command("local")
@click.option(
    "--file", "path", type=click.Path(path_type=Path), default=Path(".run/api-key"), show_default=True
)
@click.option("--tenant", default="default", show_default=True)
def keys_local(path: Path, tenant: str) -> None:
    """The development key kept in a file: made (an admin key of `tenant`) if the file or the key in the
    database is missing, then printed. For a local stack only: the tenant gets request rates no test or
    benchmark reaches (its other limits stay the deployment's defaults)."""
    key = path.read_text().strip() if path.exists() else None

    async def ensure(session: AsyncSession) -> str:
        await set_limits(session, tenant, **LOCAL_LIMITS)
        if key is not None and await find_key(session, key) is not None:
            return key
        made, _ = await create_key(session, tenant, "local", admin=True, key=key)
        return made

    made = _in_session(ensure)
    if made != key:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(made + "\n")
        path.chmod(0o600)
    click.echo(made)


@cli.group()
def tenants() -> None:
    """Tenants and their limits."""


@tenants.command("limits")
@click.argument("tenant")
@click.option("--max-queued-jobs", type=click.IntRange(min=1), default=None)
@click.option("--max-running-jobs", type=click.IntRange(min=1), default=None)
@click.option("--gpu-seconds-per-day", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--submits-per-second", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--reads-per-second", type=click.FloatRange(min=0, min_open=True), default=None)
def tenants_limits(tenant: str, **limits: Any) -> None:
    """Set a tenant's limits (made if new); an option left out takes the deployment's default."""
    _in_session(lambda s: set_limits(s, tenant, **limits))
    _print({"tenant": tenant, **limits})


@cli.group()
def webhooks() -> None:
    """Webhook signing secrets."""


@webhooks.command("rotate-secret")
@click.option("--tenant", required=True)
def webhooks_rotate(tenant: str) -> None:
    """A new signing secret; the previous one stays valid beside it until the next rotation."""
    _print({"tenant": tenant, "secrets": _in_session(lambda s: rotate_webhook_secret(s, tenant))})


def run() -> None:
    cli()


if __name__ == "__main__":
    run()
