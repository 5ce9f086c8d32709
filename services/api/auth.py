"""Who is calling: the bearer API key, its tenant and limits, and a request-rate bucket per key.

Keys are looked up by their SHA-256 (`services/common/tenants.py`) and kept for `key_cache_seconds`, so
a request costs no query; a revoked key stops working within that time on every api process. Unknown
keys are remembered for the same time, so guessing costs the database nothing either.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, ClassVar, Protocol

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.events import TenantLimits
from services.api.deps import StateDep
from services.api.errors import ApiError
from services.api.settings import ApiSettings
from services.common.tenants import ApiKey, Caller, Tenant, find_key, hash_key

KEY_CACHE_SIZE = 100_000


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": 'Bearer realm="reelstream"'}


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class RateLimited(ApiError):
    status = 429
    title = "Too many requests"


class Keys(Protocol):
    async def caller(self, key: str) -> Caller | None: ...


def caller_of(settings: ApiSettings, key: ApiKey, tenant: Tenant) -> Caller:
    """The caller a key names, the tenant's limits filled in with the deployment's defaults."""
    return Caller(
        key_id=key.id,
        tenant=tenant.name,
        admin=key.admin,
        limits=TenantLimits(
            max_running_jobs=tenant.max_running_jobs or settings.tenant_max_running_jobs,
            gpu_seconds_per_day=tenant.gpu_seconds_per_day or settings.tenant_gpu_seconds_per_day,
        ),
        max_queued_jobs=tenant.max_queued_jobs or settings.tenant_max_queued_jobs,
        submits_per_second=tenant.submits_per_second or settings.submits_per_second,
        reads_per_second=tenant.reads_per_second or settings.reads_per_second,
    )


class KeyCache:
    """Keys from the database, each answer (found or not) kept for `ttl` seconds."""

    def __init__(self, settings: ApiSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.ttl = settings.key_cache_seconds
        self._known: dict[str, tuple[Caller | None, float]] = {}
        self._lock = asyncio.Lock()

    async def caller(self, key: str) -> Caller | None:
        digest = hash_key(key)
        cached = self._known.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._lock:  # one lookup at a time: a burst with a new key makes one query
            cached = self._known.get(digest)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            async with self.sessions() as session:
                found = await find_key(session, key)
            caller = caller_of(self.settings, *found) if found is not None else None
            if len(self._known) >= KEY_CACHE_SIZE:
                self._known.clear()
            self._known[digest] = (caller, time.monotonic() + self.ttl)
            return caller


class StaticKeys:
    """Keys given up front (tests, and tools that run the app in process)."""

    def __init__(self, callers: dict[str, Caller]) -> None:
        self.callers = callers

    async def caller(self, key: str) -> Caller | None:
        return self.callers.get(key)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimits:
    """A token bucket per key and kind of request (submit, read), refilled at the tenant's rate; the
    bucket holds `burst_seconds` of that rate. Per api process: N replicas allow N times the rate."""

    def __init__(self, burst_seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        self.burst_seconds = burst_seconds
        self.now = now
        self._buckets: dict[tuple[uuid.UUID, str], _Bucket] = {}

    def take(self, key_id: uuid.UUID, kind: str, rate: float) -> float:
        """0 if the request may go now, else the seconds until a token is there."""
        size = max(1.0, rate * self.burst_seconds)
        now = self.now()
        bucket = self._buckets.get((key_id, kind))
        if bucket is None:
            if len(self._buckets) >= KEY_CACHE_SIZE:
                self._buckets.clear()
            bucket = self._buckets[(key_id, kind)] = _Bucket(size, now)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key (`reelstream keys create --tenant NAME`); it names the tenant.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


async def _caller(credentials: Credentials, state: StateDep) -> Caller:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("send an API key: `Authorization: Bearer <key>` (`reelstream keys create`)")
    caller = await state.keys.caller(credentials.credentials.strip())
    if caller is None:
        raise Unauthorized("this API key is unknown or revoked")
    return caller


def _limited(kind: str) -> Callable[[Credentials, StateDep], Awaitable[Caller]]:
    async def dependency(credentials: Credentials, state: StateDep) -> Caller:
        caller = await _caller(credentials, state)
        rate = caller.submits_per_second if kind == "submit" else caller.reads_per_second
        wait = state.rates.take(caller.key_id, kind, rate)
        if wait > 0:
            error = RateLimited(
                f"this key makes at most {rate:g} {kind} requests per second;"
                " retry after Retry-After seconds",
                limit=f"{kind}s_per_second",
            )
            error.retry_after = max(1, math.ceil(wait))
            raise error
        return caller

    return dependency


async def _admin(caller: Annotated[Caller, Depends(_limited("read"))]) -> Caller:
    if not caller.admin:
        raise Forbidden("only an admin key may manage keys and tenants (`reelstream keys create --admin`)")
    return caller


CallerDep = Annotated[Caller, Depends(_limited("read"))]
"""The caller of a read (or any request that does not submit work), rate-limited as a read."""
SubmitterDep = Annotated[Caller, Depends(_limited("submit"))]
"""The caller of a submit, rate-limited as a submit."""
AdminDep = Annotated[Caller, Depends(_admin)]
