"""Every answer of the api carries an X-Request-ID (the caller's when sane), its logs name it, and each
request is a SERVER span named after its route, continuing a caller's traceparent."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import make_asgi_app

from services.api import metrics as api_metrics
from services.api.observability import QuietProbes, RequestContext, request_id
from services.common import logging as logs
from services.common import tracing

log = logging.getLogger("test.reelstream.api")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def app() -> FastAPI:
    api = FastAPI()

    @api.get("/v1/jobs/{job_id}")
    async def read(job_id: str) -> dict[str, str]:
        log.info("read job")
        return {"id": job_id}

    api.mount("/metrics", make_asgi_app())
    api.add_middleware(RequestContext)
    return api


async def get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.get(path, headers=headers)


async def test_the_callers_id_comes_back_and_names_the_log_lines(spans: InMemorySpanExporter) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.formatter("api", "json"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        response = await get("/v1/jobs/j1", {"X-Request-ID": "req-42"})
    finally:
        log.removeHandler(handler)
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "req-42"
    (line,) = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert line["request_id"] == "req-42" and line["message"] == "read job" and "trace_id" in line


async def test_an_id_is_made_when_none_or_an_unsafe_one_is_given(spans: InMemorySpanExporter) -> None:
    made = (await get("/v1/jobs/j1")).headers["X-Request-ID"]
    assert len(made) == 32
    unsafe = (await get("/v1/jobs/j1", {"X-Request-ID": "a b\tc" + "x" * 200})).headers["X-Request-ID"]
    assert unsafe != made and " " not in unsafe and len(unsafe) == 32
    assert request_id("abc-123_DEF.4") == "abc-123_DEF.4"


async def test_each_request_is_a_server_span_named_after_its_route(spans: InMemorySpanExporter) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await get("/v1/jobs/j1", {"traceparent": parent})
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /v1/jobs/{job_id}" and span.kind is SpanKind.SERVER
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert (span.attributes or {})["http.response.status_code"] == 200


async def test_sse_clients_are_exposed(spans: InMemorySpanExporter) -> None:
    assert api_metrics.SSE_CLIENTS is not None
    text = (await get("/metrics/")).text
    assert "# TYPE reelstream_api_sse_clients gauge" in text


def test_the_access_log_leaves_out_probes_and_scrapes() -> None:
    def access(path: str) -> logging.LogRecord:
        args = ("10.0.0.1:5000", "GET", path, "1.1", 200)
        return logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
        )

    quiet = QuietProbes()
    assert not quiet.filter(access("/healthz")) and not quiet.filter(access("/metrics"))
    assert not quiet.filter(access("/livez?verbose=1"))
    assert quiet.filter(access("/v1/jobs/j1"))
