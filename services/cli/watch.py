"""`reelstream watch`: a job's events drawn as a live progress bar (phase, step/total, queue position,
ETA), or as one line per change when the output is not a terminal (a log, a pipe, CI)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from services.cli.client import Api, SseEvent

TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
# What the command exits with when the job ended otherwise than succeeded (1 and 2: the api refused).
EXIT_FAILED: Final = 3
EXIT_CANCELLED: Final = 4


@dataclass
class JobState:
    """What the bar shows, folded from the job as read and then from each event."""

    status: str = "queued"
    phase: str = "queued"
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None
    queue_position: int | None = None
    eta_at: float | None = None  # time.monotonic() when the job should be done, as last estimated
    error: str | None = None

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobState:
        state = cls(
            status=str(job.get("status", "queued")),
            phase=str(job.get("phase", "queued")),
            progress=float(job.get("progress") or 0.0),
            step=job.get("step"),
            total_steps=job.get("total_steps"),
            queue_position=job.get("queue_position"),
        )
        if isinstance(eta := job.get("eta"), dict) and "total_seconds" in eta:
            state.eta_at = time.monotonic() + float(eta["total_seconds"])
        state.error = _error_text(job.get("error"))
        return state

    def apply(self, event: SseEvent) -> None:
        data, kind = event.data, event.event
        if kind == "job.queue_position":
            self.queue_position = data.get("queue_position")
            if isinstance(eta := data.get("eta"), dict):
                seconds = float(eta.get("wait_seconds", 0)) + float(eta.get("run_seconds", 0))
                self.eta_at = time.monotonic() + seconds
            return
        if kind in ("job.dispatched", "job.started"):
            self.queue_position = None
            self.status = "running" if kind == "job.started" else self.status
        if kind == "job.retrying":
            self.status, self.phase, self.step = "queued", "queued", None
        if kind in ("job.progress", "job.checkpointed", "job.preview") and data.get("step") is not None:
            # A checkpoint or a preview is also a step done; phases after denoising carry no step.
            self.step, self.total_steps = data["step"], data.get("total_steps", self.total_steps)
        if kind == "job.progress":
            self.status = "running"
            self.phase = str(data.get("phase", self.phase))
            self.progress = float(data.get("progress", self.progress))
            per_step = data.get("seconds_per_step")
            if per_step and self.step is not None and self.total_steps:
                self.eta_at = time.monotonic() + (self.total_steps - self.step) * float(per_step)
        if kind.startswith("job.") and kind.removeprefix("job.") in TERMINAL:
            self.status = self.phase = kind.removeprefix("job.")
            self.queue_position, self.eta_at = None, None
            if self.status == "succeeded":
                self.progress = 1.0
            self.error = _error_text(data.get("error")) or data.get("reason")

    def steps_text(self) -> str:
        if self.step is None or not self.total_steps:
            return ""
        return f"step {self.step}/{self.total_steps}"

    def queue_text(self) -> str:
        return f"queue #{self.queue_position}" if self.queue_position is not None else ""

    def eta_text(self) -> str:
        if self.eta_at is None:
            return ""
        left = round(self.eta_at - time.monotonic())
        # An estimate that has run out says nothing: better no ETA than a stale 0:00.
        return f"ETA {left // 60}:{left % 60:02d}" if left > 0 else ""

    def line(self) -> str:
        parts = [self.phase, self.steps_text(), self.queue_text(), self.eta_text()]
        return " ".join(p for p in parts if p)


def _error_text(error: object) -> str | None:
    if not isinstance(error, dict):
        return None
    return f"{error.get('code', 'error')}: {error.get('message', '')}".rstrip(": ")


def exit_code(status: str) -> int:
    return {"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(status, 0)


def watch(api: Api, job_id: str, console: Console) -> dict[str, Any]:
    """Follow the job to its end and return it as read afterwards."""
    job = api.get(job_id)
    state = JobState.of(job)
    if state.status not in TERMINAL:
        if console.is_terminal:
            _bar(api, job_id, state, console)
        else:
            _lines(api, job_id, state, console)
        job = api.get(job_id)
    _summary(job, console)
    return job


def _bar(api: Api, job_id: str, state: JobState, console: Console) -> None:
    columns = (
        TextColumn("[bold]{task.fields[phase]:<15}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[queue]}"),
        EtaColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(job_id, total=1.0, phase="", steps="", queue="", state=state)
        _draw(bar, task, state)
        for event in api.events(job_id):
            state.apply(event)
            _draw(bar, task, state)


class EtaColumn(ProgressColumn):
    """The ETA counted down at every refresh, not only when an event arrives."""

    def render(self, task: Task) -> Text:
        state = task.fields.get("state")
        return Text(state.eta_text() if isinstance(state, JobState) else "")


def _draw(bar: Progress, task: TaskID, state: JobState) -> None:
    bar.update(
        task,
        completed=state.progress,
        phase=state.phase,
        steps=state.steps_text(),
        queue=state.queue_text(),
    )


def _lines(api: Api, job_id: str, state: JobState, console: Console) -> None:
    shown = ""
    for event in [None, *api.events(job_id)]:
        if event is not None:
            state.apply(event)
        # Only what changes the picture is printed: ETA ticks alone would flood a log.
        now = " ".join(p for p in (state.phase, state.steps_text(), state.queue_text()) if p)
        if now != shown:
            console.print(f"{job_id} {state.line()}", highlight=False)
            shown = now


def _summary(job: dict[str, Any], console: Console) -> None:
    status = str(job.get("status"))
    job_id = job.get("id")
    if status == "succeeded":
        result = job.get("result") or {}
        size = (
            f" ({result.get('width')}x{result.get('height')}, {result.get('frames')} frames)"
            if result
            else ""
        )
        console.print(
            f"job {job_id} [green]succeeded[/]{size}: reelstream download {job_id}", highlight=False
        )
    elif status in TERMINAL:
        why = _error_text(job.get("error"))
        console.print(f"job {job_id} [red]{status}[/]" + (f": {why}" if why else ""), highlight=False)
    else:
        console.print(f"job {job_id} is {status}", highlight=False)
