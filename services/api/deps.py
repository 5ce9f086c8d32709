"""What a request handler needs, created once in the lifespan and handed out as Annotated dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.admission import ProjectionLag, QueueDepth
from services.api.errors import DB_ERRORS
from services.api.feeds import JobFeeds
from services.api.notify import JobNotifier
from services.api.publisher import JobPublisher
from services.api.queue_view import QueueViewFollower
from services.api.settings import PROJECTOR, ApiSettings
from services.api.streams import StreamLimit
from services.common.errors import DatabaseUnavailable
from services.common.storage import Storage

if TYPE_CHECKING:
    from services.api.auth import Keys, RateLimits


@dataclass
class AppState:
    settings: ApiSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]  # transactions, for the few routes that write
    reads: async_sessionmaker[AsyncSession]  # autocommit, for everything else (`make_read_sessions`)
    publisher: JobPublisher
    storage: Storage
    notifier: JobNotifier
    streams: StreamLimit
    feeds: JobFeeds
    queue_view: QueueViewFollower
    keys: Keys
    rates: RateLimits
    queue: QueueDepth = field(default_factory=QueueDepth)
    lag: ProjectionLag = field(default_factory=lambda: ProjectionLag(PROJECTOR))


async def get_state(request: Request) -> AppState:
    """Async on purpose: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per request."""
    state: AppState = request.app.state.reelstream
    return state


@asynccontextmanager
async def _opened(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    try:
        async with sessions() as session:
            yield session
    except DB_ERRORS as e:
        raise DatabaseUnavailable(f"the job database is unavailable: {e.__class__.__name__}") from e


async def get_session(state: Annotated[AppState, Depends(get_state)]) -> AsyncIterator[AsyncSession]:
    async with _opened(state.reads) as session:
        yield session


async def get_write_session(state: Annotated[AppState, Depends(get_state)]) -> AsyncIterator[AsyncSession]:
    async with _opened(state.sessions) as session:
        yield session


StateDep = Annotated[AppState, Depends(get_state)]
# Closed when the route function returns, before the body is sent: a stream (SSE, a download) never
# holds a pooled connection for its life. SessionDep reads (each statement on its own); a route that
# writes takes WriteSessionDep, a transaction it commits.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[AsyncSession, Depends(get_write_session, scope="function")]
