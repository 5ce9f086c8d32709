"""Each request's id and span: the root of a job's trace is the span of its POST /v1/jobs.

`X-Request-ID` is taken from the request when it is a sane token (a proxy's id), else made here, and sent
back on the response; it is on every log line written while the request is served, uvicorn's access line
included. The request's SERVER span continues a W3C `traceparent` header the client sent, if any.
Plain ASGI, like `Guard`: Starlette's BaseHTTPMiddleware would copy every SSE frame through a task.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Final

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import logging as logs
from services.common import tracing

REQUEST_ID: Final = "X-Request-ID"
_SANE_ID: Final = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(given: str | None) -> str:
    """The caller's id when it is a short printable token, else a fresh one."""
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = request_id(headers.get(REQUEST_ID))
        method = scope["method"]
        parent = tracing.extract([(k, v) for k, v in headers.items() if k in ("traceparent", "tracestate")])
        attributes = {"http.request.method": method, "url.path": scope["path"], "http.request_id": rid}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REQUEST_ID, rid)
                span.set_attribute("http.response.status_code", message["status"])
                if message["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        with (
            logs.bound(request_id=rid),
            tracing.span("api", method, parent=parent, kind=SpanKind.SERVER, attributes=attributes) as span,
        ):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


class QuietProbes(logging.Filter):
    """Drops uvicorn's access lines of probes and scrapes (every few seconds each, from the kubelet and
    Prometheus): the access log keeps the requests of clients."""

    QUIET: Final = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/metrics/"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].partition("?")[0] not in self.QUIET
        return True
