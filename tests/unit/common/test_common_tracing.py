"""Trace context on Kafka records: `ce_traceparent`/`ce_tracestate` written by `inject` (and by `send` on
every record), read back by `extract`, and the spans of a consumer parented on them."""

from __future__ import annotations

import asyncio
import http.server
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)

from schemas.envelope import encode_event
from schemas.events import JobRequested
from schemas.samples import resolved_request
from services.common import tracing
from services.common.kafka import dead_letter, send

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def remote_context(state: str = "") -> Any:
    ctx = SpanContext(
        TRACE_ID,
        SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([state]) if state else TraceState(),
    )
    return set_span_in_context(NonRecordingSpan(ctx))


def test_inject_writes_the_cloudevents_extension_headers_and_extract_reads_them_back() -> None:
    headers = tracing.inject([("ce_id", b"1")], remote_context("vendor=abc"))
    assert headers == [("ce_id", b"1"), ("ce_traceparent", TRACEPARENT), ("ce_tracestate", b"vendor=abc")]
    back = get_current_span(tracing.extract(headers)).get_span_context()
    assert (back.trace_id, back.span_id, back.is_remote) == (TRACE_ID, SPAN_ID, True)
    assert back.trace_state.get("vendor") == "abc"


def test_inject_replaces_a_context_already_there_and_keeps_one_without_a_current_span() -> None:
    stale = [("ce_traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("ce_tracestate", b"x=y")]
    replaced = tracing.inject(stale, remote_context())
    assert replaced == [("ce_traceparent", TRACEPARENT)]  # no state in the new context: none written
    assert tracing.inject(stale) == stale  # no span current: a passed-on record keeps its own


def test_extract_takes_plain_w3c_names_and_kept_carriers_and_ignores_garbage() -> None:
    plain = get_current_span(tracing.extract([("traceparent", TRACEPARENT)])).get_span_context()
    assert plain.trace_id == TRACE_ID
    kept = get_current_span(tracing.extract({"traceparent": TRACEPARENT.decode()})).get_span_context()
    assert kept.span_id == SPAN_ID
    for bad in ([], None, [("ce_traceparent", b"not a traceparent")], [("ce_traceparent", b"\xff")]):
        assert not get_current_span(tracing.extract(bad)).get_span_context().is_valid
    assert tracing.carrier([("ce_traceparent", TRACEPARENT), ("ce_id", b"1")]) == {
        "traceparent": TRACEPARENT.decode()
    }


def test_a_span_made_from_a_records_headers_is_its_child(spans: InMemorySpanExporter) -> None:
    with tracing.span("worker", "worker.attempt", parent=[("ce_traceparent", TRACEPARENT)]) as current:
        inner = tracing.inject([])
    (done,) = spans.get_finished_spans()
    assert done.parent is not None and done.parent.span_id == SPAN_ID
    assert done.context.trace_id == TRACE_ID
    assert (done.attributes or {})["reelstream.service"] == "worker"
    # What is published inside the span names the span as the parent of the consumer's.
    assert tracing.carrier(inner)["traceparent"].split("-")[2] == f"{current.get_span_context().span_id:016x}"


def test_consumed_batch_records_a_consumer_span_per_traced_record(spans: InMemorySpanExporter) -> None:
    class Msg:
        def __init__(self, headers: list[tuple[str, bytes]], offset: int) -> None:
            self.topic, self.partition, self.offset, self.headers = "t", 0, offset, headers

    traced = Msg([("ce_type", b"io.reelstream.job.succeeded"), ("ce_traceparent", TRACEPARENT)], 7)
    untraced = Msg([("ce_type", b"io.reelstream.job.started")], 8)
    progress = Msg([("ce_type", b"io.reelstream.job.progress"), ("ce_traceparent", TRACEPARENT)], 9)
    tracing.consumed_batch("projector", "apply", [traced, untraced, progress], start_time=1)
    (done,) = spans.get_finished_spans()
    assert done.name == "projector.apply job.succeeded"
    assert done.parent is not None and done.parent.span_id == SPAN_ID
    assert (done.attributes or {})["messaging.kafka.offset"] == 7


def test_consumer_spans_cost_nothing_when_no_span_is_exported() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider, exporting=False)
    try:
        msg = type(
            "Msg",
            (),
            {"topic": "t", "partition": 0, "offset": 1, "headers": [("ce_traceparent", TRACEPARENT)]},
        )
        tracing.consumed_batch("projector", "apply", [msg()], start_time=1)
    finally:
        tracing.use_provider(None)
    assert not exporter.get_finished_spans()


class FakeProducer:
    """Records what `send` hands the producer."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})


def test_every_record_sent_inside_a_span_carries_its_context(spans: InMemorySpanExporter) -> None:
    producer = FakeProducer()
    event = JobRequested(job_id=uuid.uuid4(), producer="api", request=resolved_request(), request_hash="h")
    record = encode_event(event)

    async def scenario() -> None:
        await send(producer, "outside", record)  # type: ignore[arg-type]
        with tracing.span("api", "publish job.requested") as current:
            await send(producer, "inside", record)  # type: ignore[arg-type]
        outside, inside = producer.sent
        assert not tracing.carrier(outside["headers"])
        parent = get_current_span(tracing.extract(inside["headers"])).get_span_context()
        assert parent.span_id == current.get_span_context().span_id
        assert inside["headers"][: len(record.headers)] == record.headers  # the ce_* envelope as it was

    asyncio.run(scenario())


def test_a_dead_letter_keeps_the_context_of_the_record_it_parks() -> None:
    producer = FakeProducer()

    class Msg:
        topic, partition, offset, key, value = "reelstream.jobs.events", 1, 5, b"k", b"{"
        headers = (("ce_traceparent", TRACEPARENT),)

    async def scenario() -> None:
        with tracing.span("projector", "elsewhere"):
            await dead_letter(producer, Msg(), "value is not JSON", "reelstream-projector")  # type: ignore[arg-type]

    asyncio.run(scenario())
    (letter,) = producer.sent
    assert tracing.carrier(letter["headers"]) == {"traceparent": TRACEPARENT.decode()}


def test_spans_go_over_otlp_http_to_the_configured_collector() -> None:
    """A stand-in collector on localhost gets the spans as OTLP/HTTP protobuf on /v1/traces."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = tracing.setup("scheduler", f"http://127.0.0.1:{server.server_port}")
        with tracing.span("scheduler", "scheduler.dispatch"):
            pass
        assert provider.force_flush(10_000)
    finally:
        tracing.use_provider(None)
        server.shutdown()
    ((path, content_type, body),) = received
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    assert b"scheduler.dispatch" in body and b"reelstream-scheduler" in body


def test_without_an_endpoint_spans_are_made_but_exported_nowhere() -> None:
    provider = tracing.setup("api")
    try:
        with tracing.span("api", "GET /v1/jobs/{job_id}") as span:
            assert span.get_span_context().is_valid  # the logs' trace_id
        assert not provider._active_span_processor._span_processors
    finally:
        tracing.use_provider(None)


def test_a_services_tracer_is_made_once_per_provider(spans: InMemorySpanExporter) -> None:
    first = tracing.tracer("api")
    assert tracing.tracer("api") is first, "one tracer per service, not one per span"
    assert tracing.tracer("worker") is not first
    with tracing.span("api", "kept"):
        pass
    other = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(other))
    tracing.use_provider(provider)
    assert tracing.tracer("api") is not first, "a new provider gets new tracers"
    with tracing.span("api", "moved"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["kept"]
    assert [s.name for s in other.get_finished_spans()] == ["moved"]


def test_without_an_exporter_spans_keep_their_ids_and_cost_no_recording() -> None:
    """Log lines and the traceparent of records need the ids; nothing reads the spans themselves."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider, exporting=False)
    try:
        with tracing.span("api", "POST") as outer:
            assert tracing.ids() is not None and not outer.is_recording()
            with tracing.span("api", "publish job.requested") as inner:
                headers = dict(tracing.inject([]))
        with tracing.span("scheduler", "dispatch", parent=remote_context()) as child:
            assert child.get_span_context().trace_id == TRACE_ID, "a remote parent's trace goes on"
    finally:
        tracing.use_provider(None)
    assert inner.get_span_context().trace_id == outer.get_span_context().trace_id
    assert inner.get_span_context().span_id != outer.get_span_context().span_id
    sent = tracing.extract(list(headers.items()))
    assert get_current_span(sent).get_span_context().span_id == inner.get_span_context().span_id
    assert exporter.get_finished_spans() == ()
