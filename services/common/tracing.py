"""Tracing: one OpenTelemetry trace per job, from its POST to the last consumer of its outcome.

The W3C trace context travels on every Kafka record in the CloudEvents distributed-tracing extension,
binary mode like the other `ce_*` attributes: headers `ce_traceparent` and `ce_tracestate`. `send` in
`services/common/kafka.py` injects the current context into every record it publishes; every consumer
extracts it (`extract`) and parents its work on it. The scheduler keeps the context of each job's
`job.requested` with the job (`Scheduler.traces`), so decisions taken long after the request still belong
to its trace, and the worker parents an attempt's phases on its dispatch record.

Spans are made always (they give the logs a `trace_id`); they are exported over OTLP/HTTP only when
`REELSTREAM_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
`otlp_endpoint` setting). Tests install a provider with an
in-memory exporter (`use_provider`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from time import time_ns
from typing import ClassVar, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

TRACEPARENT: Final = "ce_traceparent"
TRACESTATE: Final = "ce_tracestate"
# The plain W3C names, accepted on the way in (a record some other producer traced).
_PLAIN: Final = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
PROGRESS_TYPE: Final = "io.reelstream.job.progress"

Headers = list[tuple[str, bytes]]
Attributes = Mapping[str, AttributeValue]

_propagator: Final = TraceContextTextMapPropagator()


class _Installed:
    provider: TracerProvider | None = None
    # Whether finished spans go anywhere: spans recorded only for an exporter (`consumed`) are skipped
    # when none is set, so a consumer's hot path pays nothing for them.
    exporting: bool = False
    tracers: ClassVar[dict[str, trace.Tracer]] = {}  # by scope name, for `provider`


def setup(service: str, endpoint: str | None = None, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install this process's tracer provider, named after `service`. Spans are exported to `exporter`,
    or over OTLP/HTTP to `endpoint` (the `otlp_endpoint` setting), or nowhere."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"reelstream-{service}"}))
    target = endpoint or None
    if exporter is None and target is not None:
        # The standard variable names the collector's base URL; the HTTP exporter wants the traces path.
        url = target if target.rstrip("/").endswith("/v1/traces") else target.rstrip("/") + "/v1/traces"
        exporter = OTLPSpanExporter(endpoint=url, timeout=5)
        log.info("exporting traces to %s", url)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider, exporting=exporter is not None)
    return provider


def use_provider(provider: TracerProvider | None, *, exporting: bool = True) -> None:
    """Make `provider` the one every span here goes to (None: OpenTelemetry's global one); `exporting`
    says whether its spans go anywhere (tests install one with an in-memory exporter)."""
    _Installed.provider = provider
    _Installed.exporting = provider is not None and exporting
    _Installed.tracers = {}


def shutdown() -> None:
    """Flush and stop the exporter (a process's last act)."""
    if _Installed.provider is not None:
        _Installed.provider.shutdown()


def tracer(service: str) -> trace.Tracer:
    """The tracer of one service: its instrumentation scope is `reelstream.<service>`."""
    name = f"reelstream.{service}"
    provider = _Installed.provider
    if provider is None:
        return trace.get_tracer(name)
    # Kept: the SDK makes a new tracer (and compares scopes) on every call, once per request and record.
    found = _Installed.tracers.get(name)
    if found is None:
        found = _Installed.tracers[name] = provider.get_tracer(name)
    return found


# ---- propagation -----------------------------------------------------------------------------------


def carrier(headers: Sequence[tuple[str, bytes | str | None]] | None) -> dict[str, str]:
    """The W3C trace-context fields (`traceparent`, `tracestate`) a record's headers carry."""
    found: dict[str, str] = {}
    for key, value in headers or ():
        name = _PLAIN.get(key.lower(), key.lower())
        if name in (TRACEPARENT, TRACESTATE) and value is not None:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            found[name.removeprefix("ce_")] = text
    return found


def extract(headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, str] | None) -> Context:
    """The context a record's headers (or a kept carrier) name; an empty context when none is valid."""
    if isinstance(headers, Mapping):
        fields = {k.removeprefix("ce_"): v for k, v in headers.items()}
    else:
        fields = carrier(headers)
    return _propagator.extract(fields, context=Context())


def inject(headers: Sequence[tuple[str, bytes]], context: Context | None = None) -> Headers:
    """`headers` with the trace context of `context` (default: the current one) as `ce_traceparent` and
    `ce_tracestate`, replacing any there. Without a valid span in it the headers are returned unchanged,
    so a record passed on (a dead letter) keeps the context it came with."""
    fields: dict[str, str] = {}
    _propagator.inject(fields, context=context)
    if "traceparent" not in fields:
        return list(headers)
    kept = [(k, v) for k, v in headers if k not in (TRACEPARENT, TRACESTATE)]
    kept.append((TRACEPARENT, fields["traceparent"].encode()))
    if fields.get("tracestate"):
        kept.append((TRACESTATE, fields["tracestate"].encode()))
    return kept


def current_carrier() -> dict[str, str]:
    """The current context as W3C fields, to keep with a job (empty when no span is current)."""
    fields: dict[str, str] = {}
    _propagator.inject(fields)
    return fields


# ---- spans -------------------------------------------------------------------------------------------


def _parent(parent: Context | Mapping[str, str] | Sequence[tuple[str, bytes]] | None) -> Context | None:
    if parent is None or isinstance(parent, Context):
        return parent
    return extract(parent)


@contextlib.contextmanager
def span(
    service: str,
    name: str,
    *,
    parent: Context | Mapping[str, str] | Sequence[tuple[str, bytes]] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span of `service`, current while the block runs: a child of `parent` (a context, a kept carrier
    or a record's headers) when given, else of the current span. An exception marks it as an error."""
    if not _Installed.exporting:
        with _ids_only(_parent(parent)) as current:
            yield current
        return
    attrs = {"reelstream.service": service, **(attributes or {})}
    with tracer(service).start_as_current_span(
        name, context=_parent(parent), kind=kind, attributes=attrs, record_exception=True
    ) as current:
        yield current


_new_ids: Final = RandomIdGenerator()


@contextlib.contextmanager
def _ids_only(parent: Context | None) -> Iterator[Span]:
    """A span nobody will read, as no exporter is set: only its ids are used (log lines, the traceparent
    of the records published under it), so a non-recording span with a new span id in its parent's trace
    (or a new trace) stands for it, at a fraction of an SDK span's cost: the api's two spans of a submit
    were a fifth of its CPU."""
    above = trace.get_current_span(parent).get_span_context()
    context = SpanContext(
        above.trace_id if above.is_valid else _new_ids.generate_trace_id(),
        _new_ids.generate_span_id(),
        is_remote=False,
        trace_flags=above.trace_flags if above.is_valid else TraceFlags(TraceFlags.SAMPLED),
        trace_state=above.trace_state if above.is_valid else None,
    )
    current = NonRecordingSpan(context)
    token = otel_context.attach(trace.set_span_in_context(current, parent))
    try:
        yield current
    finally:
        otel_context.detach(token)


def start_span(
    service: str,
    name: str,
    *,
    parent: Context | Mapping[str, str] | Sequence[tuple[str, bytes]] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    start_time: int | None = None,
) -> Span:
    """A span the caller ends (`span.end()`), for work that begins and ends in different places (the
    worker's phases, from the generation thread). Not made current."""
    attrs = {"reelstream.service": service, **(attributes or {})}
    return tracer(service).start_span(
        name, context=_parent(parent), kind=kind, attributes=attrs, start_time=start_time
    )


def consumed(
    service: str,
    headers: Sequence[tuple[str, bytes]] | None,
    name: str,
    *,
    start_time: int,
    end_time: int,
    attributes: Attributes | None = None,
) -> None:
    """Record, after the fact, a consumer's handling of one record: a CONSUMER span, child of the context
    its headers carry, from `start_time` to `end_time` (ns since the epoch; a batch's bounds)."""
    parent = extract(headers)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return  # a record nobody traced: a root span per record would only be noise
    s = start_span(
        service, name, parent=parent, kind=SpanKind.CONSUMER, attributes=attributes, start_time=start_time
    )
    s.end(end_time=end_time)


def failed(current: Span, why: str) -> None:
    current.set_status(Status(StatusCode.ERROR, why))


@contextlib.contextmanager
def attached(context: Context | None) -> Iterator[None]:
    """Make `context` current for the block (no-op for None)."""
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def ids() -> tuple[str, str] | None:
    """The current (trace id, span id) in hex, for a log line; None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class TracedRecord(Protocol):
    """What `consumed_batch` needs of a consumed record (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]]


def consumed_batch(service: str, verb: str, records: Iterable[TracedRecord], start_time: int) -> None:
    """A CONSUMER span per traced record of a batch that `service` handled from `start_time` until now,
    named `<service>.<verb> <event type>` (the type from the record's `ce_type`). Only while spans are
    exported (about 70 µs a record), and not for `job.progress`: a job has hundreds of those, and the
    records of its phases, checkpoints and outcome already tie each consumer into its trace."""
    if not _Installed.exporting:
        return
    end_time = time_ns()
    for msg in records:
        kind = next((v.decode(errors="replace") for k, v in msg.headers or () if k == "ce_type"), "record")
        if kind == PROGRESS_TYPE:
            continue
        consumed(
            service,
            msg.headers,
            f"{service}.{verb} {kind.removeprefix('io.reelstream.')}",
            start_time=start_time,
            end_time=end_time,
            attributes={
                "messaging.destination.name": msg.topic,
                "messaging.destination.partition.id": str(msg.partition),
                "messaging.kafka.offset": msg.offset,
            },
        )


def annotate(attributes: Attributes) -> None:
    """Add `attributes` to the current span (nothing outside one)."""
    trace.get_current_span().set_attributes(attributes)
