"""The api process: wiring only (settings, lifespan, routers, error mapping, metrics)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from prometheus_client import make_asgi_app
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.topics import SCHEDULER_QUEUE
from services.api import errors, metrics
from services.api.admission import ProjectionLag
from services.api.auth import KeyCache, Keys, RateLimits
from services.api.deps import AppState
from services.api.feeds import JobFeeds, database_rows, queue_places
from services.api.notify import JobNotifier
from services.api.observability import QuietProbes, RequestContext
from services.api.publisher import JobPublisher
from services.api.queue_view import QueueViewFollower
from services.api.routes import admin, deliveries, events, health, jobs, videos
from services.api.settings import ApiSettings, get_settings
from services.api.streams import StreamLimit
from services.common.db import make_engine, make_read_sessions, make_sessions
from services.common.logging import observe
from services.common.runtime import settle_heap
from services.common.storage import Storage


def app_state(
    settings: ApiSettings,
    engine: AsyncEngine,
    publisher: JobPublisher,
    storage: Storage,
    notifier: JobNotifier,
    *,
    streams: StreamLimit | None = None,
    keys: Keys | None = None,
) -> AppState:
    """What every request handler shares, around the clients the lifespan (or a test) made."""
    sessions, reads = make_sessions(engine), make_read_sessions(engine)
    queue = QueueViewFollower(settings, SCHEDULER_QUEUE, settings.queue_view_max_age_seconds)
    feeds = JobFeeds(
        notifier,
        database_rows(reads),
        queue_places(queue),
        settings.sse_poll_seconds,
        settings.sse_keepalive_seconds,
    )
    return AppState(
        settings,
        engine,
        sessions,
        reads,
        publisher,
        storage,
        notifier,
        streams or StreamLimit(settings.max_streams),
        feeds,
        queue,
        keys or KeyCache(settings, reads),
        RateLimits(settings.rate_burst_seconds),
        lag=ProjectionLag(settings.projector_consumer),
    )


class Guard:
    """Refuses a declared body over the limit (413) and counts every answer by route and status.

    Plain ASGI, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware passes every body chunk
    (each SSE frame of each stream) through a memory stream and a task of its own.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # The one route that takes a file (an input image to POST /v1/videos) may carry more.
        self.max_upload_bytes = max_upload_bytes or max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            declared = Headers(scope=scope).get("content-length", "0")
            upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/videos"
            limit = self.max_upload_bytes if upload else self.max_body_bytes
            if not declared.isdigit() or int(declared) > limit:
                too_large = errors.problem(
                    413,
                    "Request body too large",
                    f"a request body holds at most {limit} bytes (Content-Length {declared})",
                )
                await too_large(scope, receive, counted)
                return
            await self.app(scope, receive, counted)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(scope["method"], path, str(status)).inc()


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings, pre_ping=False)  # closed connections are still refused
        publisher = JobPublisher(settings)
        await publisher.connect()
        notifier = JobNotifier(settings.database_url.get_secret_value())
        await notifier.start()
        storage = Storage(settings)
        app.state.reelstream = state = app_state(settings, engine, publisher, storage, notifier)
        await state.queue_view.start()
        try:
            yield
        finally:
            await state.queue_view.stop()
            await state.feeds.stop()
            await storage.close()
            await notifier.stop()
            await publisher.stop()
            await engine.dispose()

    app = FastAPI(
        title="reelstream",
        version="1.0.0",
        summary="Asynchronous text-to-video: submit a prompt, follow progress over SSE, download an MP4.",
        lifespan=lifespan,
        # The spans, metrics and logs of requests are our own (`RequestContext`, `Guard`): FastAPI's
        # native ones would double them, and cost a look-up of the global providers per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(videos.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(deliveries.router)
    app.mount("/metrics", make_asgi_app())

    app.add_middleware(
        Guard, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(RequestContext)  # outermost: every answer, a 413 included, has its id and span

    page = files("services.api.web").joinpath("index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def run() -> None:
    settings = get_settings()
    observe("api", settings)
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())
    app = create_app(settings)
    settle_heap()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        # The access log goes through our handler (JSON or text), with each request's X-Request-ID.
        access_log=True,
        log_config=None,
    )


if __name__ == "__main__":
    run()
