"""One log format for every service, on stderr: a JSON object per line, or key=value lines for local dev.

JSON (`REELSTREAM_LOG_FORMAT=json`, the default in production) writes one object a line with `ts`, `level`,
`service`, `logger`, `message`, the job's `job_id` and `attempt` where the code logging it knows them,
`trace_id`/`span_id` inside a traced span, `request_id` inside an api request, and a traceback as one
`exc` string field. Text (`REELSTREAM_LOG_FORMAT=text`, the default in development) keeps the
`level=... service=... logger=... message` lines, with the same fields appended as `key=value`.

Fields are bound to the running task (and the threads it hands work to) with `bound(...)`/`bind(...)`,
or passed to one call with `extra={"job_id": ...}`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.common import tracing
from services.common.settings import CommonSettings

# Fields a record may carry through `extra=` or the bound context, in the order they are written.
CONTEXT_FIELDS: Final = ("job_id", "attempt", "slot", "tenant", "request_id")
_NOTHING: Final[Mapping[str, object]] = {}
_bound: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "reelstream_log", default=_NOTHING
)


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Add `fields` to every log record written inside the block (this task and what it spawns)."""
    token = _bound.set({**_bound.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _bound.reset(token)


def bind(**fields: object) -> None:
    """Add `fields` to every later record of the current task (a task's context dies with it)."""
    _bound.set({**_bound.get(), **{k: v for k, v in fields.items() if v is not None}})


def context_fields(record: logging.LogRecord) -> dict[str, object]:
    """The job, attempt, request and trace a record belongs to, where known."""
    fields: dict[str, object] = {}
    bound_now = _bound.get()
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = bound_now.get(name)
        if value is not None:
            fields[name] = value if isinstance(value, int | float | bool) else str(value)
    if (ids := tracing.ids()) is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(context_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in context_fields(record).items() if k != "span_id")
        if not extra:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below its line
        return f"{first} {extra}{newline}{rest}"


def formatter(service: str, fmt: str) -> logging.Formatter:
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
    return JsonFormatter(service) if fmt == "json" else TextFormatter(service)


def configure(service: str, level: str = "INFO", fmt: str = "text") -> logging.Logger:
    """Set up root logging once per process and return the service's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "botocore", "aiobotocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # diffusers warns on every prompt longer than the text encoder keeps; the job still runs.
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    # Uvicorn's loggers write through the root handler (the api runs it with log_config=None).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    return logging.getLogger(f"reelstream.{service}")


def observe(service: str, settings: CommonSettings) -> logging.Logger:
    """A service's logs and traces as its settings ask: `configure`, then `tracing.setup`."""
    logger = configure(service, settings.log_level, settings.log_style)
    tracing.setup(service, settings.otlp_endpoint)
    return logger
