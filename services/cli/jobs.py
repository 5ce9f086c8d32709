"""The user's commands: `submit`, `watch`, `get`, `list`, `cancel`, `delete`, `download`, `models`.

They talk to the api over HTTP (`--api`, else REELSTREAM_API_URL, else the local api) with the key of
`config.api_key()`. A refusal of the api is one line on stderr and exit code 2 (the request was wrong:
4xx) or 1 (the api failed or was unreachable); a watched job that failed exits 3, cancelled 4.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import click
import httpx
from rich.console import Console
from rich.table import Table

from schemas.jobs import JobStatus
from services.cli.client import DEFAULT_API_URL, Api, ApiFailure
from services.cli.config import NoApiKey, api_key
from services.cli.options import request_body, with_request_options
from services.cli.watch import exit_code, watch

P = ParamSpec("P")
R = TypeVar("R")
VARIANTS: Final = ("video", "poster", "thumbnail", "spritesheet")
EXTENSIONS: Final = {
    "video/mp4": ".mp4",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
}


@dataclass
class Target:
    """Where the commands send their requests; tests put an in-process transport here."""

    api_url: str = DEFAULT_API_URL
    transport: httpx.BaseTransport | None = None
    console: Console | None = None  # for messages and the progress bar (stderr when None)

    def api(self, need_key: bool = True) -> Api:
        try:
            key = api_key()
        except NoApiKey as e:
            if need_key:
                raise click.ClickException(str(e)) from e
            key = None
        return Api(self.api_url, key, self.transport)

    def err(self) -> Console:
        return self.console or Console(stderr=True, highlight=False, soft_wrap=True)


pass_target = click.make_pass_decorator(Target, ensure=True)


def api_errors(command: Callable[P, R]) -> Callable[P, R]:
    """An `ApiFailure` becomes one line on stderr and exit code 2 (a 4xx) or 1; Ctrl-C while following
    a job leaves the job running and says how to follow it again."""

    @functools.wraps(command)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiFailure as e:
            click.echo(f"error: {e}", err=True)
            status = e.status or 500
            raise SystemExit(2 if 400 <= status < 500 else 1) from None
        except KeyboardInterrupt:
            click.echo("stopped following; the job goes on (`reelstream watch <id>`)", err=True)
            raise SystemExit(130) from None

    return wrapped


@click.command()
@click.argument("prompt")
@with_request_options
@click.option("--idempotency-key", default=None, help="Send again with the same key: never a second job.")
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the accepted job as JSON.")
@pass_target
@api_errors
def submit(
    target: Target, /, *, prompt: str, idempotency_key: str | None, wait: bool, as_json: bool, **options: Any
) -> None:
    """Submit PROMPT; prints the job id (with --wait, follows it and exits with its outcome)."""
    body = request_body(prompt, options)
    with target.api() as api:
        job = api.submit(body, idempotency_key)
        if as_json:
            click.echo(json.dumps(job, indent=2))
        else:
            click.echo(job["id"])
        req = job.get("request", {})
        target.err().print(
            f"job {job['id']} {job.get('status')}: {req.get('model')} {req.get('width')}x{req.get('height')},"
            f" {req.get('num_frames')} frames at {req.get('fps')} fps,"
            f" {req.get('num_inference_steps')} steps, seed {req.get('seed')}"
        )
        if wait:
            final = watch(api, str(job["id"]), target.err())
            raise SystemExit(exit_code(str(final.get("status"))))


@click.command("watch")
@click.argument("job_id", type=click.UUID)
@pass_target
@api_errors
def watch_command(target: Target, /, *, job_id: Any) -> None:
    """Follow a job live (phase, step/total, queue position, ETA) until it ends.

    Exits 0 when it succeeded, 3 when it failed, 4 when it was cancelled."""
    with target.api() as api:
        final = watch(api, str(job_id), target.err())
    raise SystemExit(exit_code(str(final.get("status"))))


# --- reading jobs ---


def _eta(job: dict[str, Any]) -> str:
    eta = job.get("eta")
    return f"{eta['total_seconds']:.0f} s" if isinstance(eta, dict) else ""


def _job_rows(job: dict[str, Any]) -> list[tuple[str, str]]:
    req, result, error = job.get("request") or {}, job.get("result"), job.get("error")
    rows = [
        ("id", str(job["id"])),
        ("status", str(job.get("status"))),
        ("phase", str(job.get("phase"))),
        ("progress", f"{100 * float(job.get('progress') or 0):.0f}%"),
    ]
    if job.get("total_steps"):
        rows.append(("step", f"{job.get('step') or 0}/{job['total_steps']}"))
    if job.get("queue_position") is not None:
        rows.append(("queue position", str(job["queue_position"])))
    if eta := _eta(job):
        rows.append(("eta", eta))
    rows += [
        ("model", str(req.get("model"))),
        (
            "size",
            f"{req.get('width')}x{req.get('height')}, {req.get('num_frames')} frames at {req.get('fps')} fps",
        ),
        ("quality", f"{req.get('quality')} ({req.get('num_inference_steps')} steps)"),
        ("priority", str(req.get("priority"))),
        ("seed", str(req.get("seed"))),
        ("attempt", str(job.get("attempt"))),
        ("created", str(job.get("created_at"))),
    ]
    rows += [
        (name, str(job[key]))
        for name, key in (("started", "started_at"), ("finished", "finished_at"))
        if job.get(key)
    ]
    if result:
        seconds = float(result.get("duration_seconds") or 0)
        rows.append(("result", f"{result.get('size_bytes')} bytes, {seconds:.2f} s"))
    if error:
        rows.append(("error", f"{error.get('code')}: {error.get('message')}"))
    rows.append(("prompt", str(req.get("prompt"))))
    return rows


@click.command()
@click.argument("job_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="The job as the api returns it.")
@pass_target
@api_errors
def get(target: Target, /, *, job_id: Any, as_json: bool) -> None:
    """Show one job."""
    with target.api() as api:
        job = api.get(str(job_id))
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    table = Table(show_header=False, box=None)
    for name, value in _job_rows(job):
        table.add_row(f"[bold]{name}", value)
    Console(highlight=False).print(table)


@click.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="Jobs per page.")
@click.option("--cursor", default=None, help="The next_cursor a previous page printed.")
@click.option("--all", "every", is_flag=True, help="Every page, not only the first.")
@click.option("--json", "as_json", is_flag=True, help="The jobs as JSON, one array.")
@pass_target
@api_errors
def list_command(
    target: Target, /, *, status: str | None, limit: int, cursor: str | None, every: bool, as_json: bool
) -> None:
    """The tenant's jobs, newest first."""
    jobs: list[dict[str, Any]] = []
    with target.api() as api:
        while True:
            page = api.jobs(status, limit, cursor)
            jobs += page.get("data", [])
            cursor = page.get("next_cursor")
            if not every or not cursor:
                break
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    table = Table("id", "status", "phase", "progress", "model", "size", "created", "prompt", box=None)
    for job in jobs:
        req = job.get("request") or {}
        prompt = str(req.get("prompt", ""))
        table.add_row(
            str(job["id"]),
            str(job.get("status")),
            str(job.get("phase")),
            f"{100 * float(job.get('progress') or 0):.0f}%",
            str(req.get("model")),
            f"{req.get('width')}x{req.get('height')}x{req.get('num_frames')}",
            str(job.get("created_at", ""))[:19],
            prompt if len(prompt) <= 40 else prompt[:39] + "…",
        )
    Console(highlight=False, width=200).print(table)
    if cursor and not every:
        target.err().print(
            f"more: reelstream list --cursor {cursor}" + (f" --status {status}" if status else "")
        )


@click.command()
@click.argument("job_id", type=click.UUID)
@click.option("--wait", is_flag=True, help="Follow the job until it has stopped.")
@pass_target
@api_errors
def cancel(target: Target, /, *, job_id: Any, wait: bool) -> None:
    """Cancel a queued or running job (a running one stops within one denoising step)."""
    with target.api() as api:
        api.cancel(str(job_id))
        target.err().print(f"cancel of job {job_id} requested")
        if wait:
            watch(api, str(job_id), target.err())


@click.command()
@click.argument("job_id", type=click.UUID)
@pass_target
@api_errors
def delete(target: Target, /, *, job_id: Any) -> None:
    """Delete a job: cancelled if running, its video and images removed."""
    with target.api() as api:
        api.delete(str(job_id))
    target.err().print(f"job {job_id} deleted")


@click.command()
@click.argument("job_id", type=click.UUID)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The file to write (default: <id>.mp4, or <id>-<variant>.<ext>).",
)
@click.option("--variant", type=click.Choice(VARIANTS), default="video", show_default=True)
@pass_target
@api_errors
def download(target: Target, /, *, job_id: Any, output: Path | None, variant: str) -> None:
    """Save a succeeded job's video (or one of its images) to a file."""
    wanted = None if variant == "video" else variant
    temporary = output or Path(f"{job_id}-{variant}.download")
    with target.api() as api:
        size, kind = api.download(str(job_id), wanted, temporary)
    path = output
    if path is None:
        ext = EXTENSIONS.get(kind.split(";")[0].strip(), ".bin")
        path = Path(f"{job_id}{ext}" if variant == "video" else f"{job_id}-{variant}{ext}")
        temporary.replace(path)
    target.err().print(f"saved {path} ({size} bytes, {kind})")
    click.echo(str(path))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_target
@api_errors
def models(target: Target, /, *, as_json: bool) -> None:
    """The models the api serves and what each allows."""
    with target.api(need_key=False) as api:
        data = api.models()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table("name", "sizes", "frames", "fps", "steps (low/medium/high)", "default", "speeds", box=None)
    for m in data:
        steps = m.get("steps", {})
        speeds = m.get("speeds") or {}
        table.add_row(
            str(m.get("name")),
            f"{m.get('min_side')}..{m.get('max_side')} by {m.get('size_multiple')}",
            f"{m.get('frame_step')}k+1, {m.get('min_frames')}..{m.get('max_frames')}",
            f"{m.get('min_fps')}..{m.get('max_fps')}",
            f"{steps.get('low')}/{steps.get('medium')}/{steps.get('high')}",
            f"{m.get('default_width')}x{m.get('default_height')}x{m.get('default_frames')}",
            ", ".join(f"{name} ({tier.get('expected_speedup')}x)" for name, tier in speeds.items()),
        )
    Console(highlight=False, width=200).print(table)


COMMANDS: Final = (submit, watch_command, get, list_command, cancel, delete, download, models)
