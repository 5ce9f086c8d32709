"""The api process: wiring only (settings, lifespan, routers, error mapping, metrics)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import make_asgi_app
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.topics import SCHEDULER_QUEUE
from services.api import errors, metrics
from services.api.admission import ProjectionLag
from services.api.deps import AppState
from services.api.feeds import JobFeeds, database_rows, queue_places
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.queue_view import QueueViewFollower
from services.api.routes import events, health, jobs
from services.api.settings import ApiSettings, get_settings
from services.api.streams import StreamLimit
from services.common.db import make_engine, make_sessions
from services.common.logging import configure
from services.common.storage import Storage


def app_state(
    settings: ApiSettings,
    engine: AsyncEngine,
    publisher: JobPublisher,
    storage: Storage,
    notifier: JobNotifier,
    *,
    streams: StreamLimit | None = None,
) -> AppState:
    """What every request handler shares, around the clients the lifespan (or a test) made."""
    sessions = make_sessions(engine)
    queue = QueueViewFollower(settings, SCHEDULER_QUEUE, settings.queue_view_max_age_seconds)
    feeds = JobFeeds(notifier, database_rows(sessions), queue_places(queue), settings.sse_poll_seconds)
    return AppState(
        settings,
        engine,
        sessions,
        publisher,
        storage,
        notifier,
        streams or StreamLimit(settings.max_streams),
        feeds,
        queue,
        lag=ProjectionLag(settings.projector_consumer),
    )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
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
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.mount("/metrics", make_asgi_app())

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > settings.max_body_bytes:
            return errors.problem(
                413,
                "Request body too large",
                f"a request body holds at most {settings.max_body_bytes} bytes (Content-Length {declared})",
            )
        return await call_next(request)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    page = files("services.api.web").joinpath("index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def run() -> None:
    settings = get_settings()
    configure("api", settings.log_level)
    started = time.monotonic()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        access_log=False,
    )
    del started


if __name__ == "__main__":
    run()
