"""Log lines: one JSON object each with the job, attempt and trace where known, tracebacks as one field;
the text format for local dev keeps its key=value shape."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common import logging as logs
from services.common import tracing
from services.common.settings import CommonSettings, Environment


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a JSON handler into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.formatter("worker-3", "json"))
    logger = logging.getLogger("test.reelstream.json")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    tracing.use_provider(TracerProvider())
    yield logger, buffer
    tracing.use_provider(None)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_json_line_names_service_job_attempt_and_trace(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("outside everything")
    with logs.bound(job_id="j-1", attempt=2), tracing.span("worker", "worker.attempt") as span:
        logger.warning("upload failed, retrying in %.1f s", 0.5)
    logger.info("one call", extra={"job_id": "j-9"})
    first, inside, extra = lines(buffer)
    assert first["service"] == "worker-3" and first["message"] == "outside everything"
    assert "job_id" not in first and "trace_id" not in first
    context = span.get_span_context()
    assert inside["job_id"] == "j-1" and inside["attempt"] == 2 and inside["level"] == "WARNING"
    assert inside["trace_id"] == f"{context.trace_id:032x}" and inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "upload failed, retrying in 0.5 s"
    assert extra["job_id"] == "j-9"


def test_a_traceback_is_one_field_of_one_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("the run crashed")
    assert len(buffer.getvalue().splitlines()) == 1
    (line,) = lines(buffer)
    assert line["message"] == "the run crashed"
    exc = str(line["exc"])
    assert exc.startswith("Traceback") and "ValueError: boom" in exc


def test_fields_bound_in_a_task_stay_in_that_task(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture

    async def job(job_id: str) -> None:
        logs.bind(job_id=job_id, attempt=1)
        await asyncio.sleep(0)
        logger.info("step")

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))
        logger.info("after")

    asyncio.run(both())
    assert sorted(str(line.get("job_id")) for line in lines(buffer)) == ["None", "a", "b"]


def test_text_format_keeps_key_value_lines_and_appends_the_fields() -> None:
    record = logging.LogRecord("reelstream.scheduler", logging.INFO, __file__, 1, "dispatched", None, None)
    with logs.bound(job_id="j-2"):
        line = logs.formatter("scheduler", "text").format(record)
    assert "level=INFO service=scheduler logger=reelstream.scheduler dispatched job_id=j-2" in line


def test_the_format_follows_the_setting_and_defaults_to_json_in_production() -> None:
    assert CommonSettings().log_style == "text"
    assert CommonSettings(log_format="json").log_style == "json"
    production = CommonSettings.model_construct(environment=Environment.PRODUCTION, log_format=None)
    assert production.log_style == "json"
    with pytest.raises(ValueError, match="json or text"):
        logs.formatter("api", "yaml")
