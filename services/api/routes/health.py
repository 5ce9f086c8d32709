"""Liveness, readiness (Kafka, Postgres, S3 reachable) and the model catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from schemas.catalog import CATALOG, ModelSpec
from services.api.deps import AppState, StateDep

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, probe: Callable[[], Awaitable[object]], seconds: float) -> tuple[str, str]:
    try:
        async with asyncio.timeout(seconds):
            ok = await probe()
        return name, "ok" if ok is not False else "unreachable"
    except Exception as e:
        return name, f"unreachable: {e.__class__.__name__}"


async def _db(state: AppState) -> None:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


@router.get("/healthz")
async def healthz(state: StateDep) -> JSONResponse:
    """Ready when Kafka, Postgres and S3 all answer; 503 naming the part that does not."""
    timeout = state.settings.health_timeout_seconds
    results = dict(
        await asyncio.gather(
            _check("kafka", lambda: state.publisher.ping(timeout), timeout),
            _check("postgres", lambda: _db(state), timeout),
            _check("s3", state.storage.ping, timeout),
        )
    )
    ready = all(v == "ok" for v in results.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": results}, status_code=200 if ready else 503
    )


@router.get("/v1/models", tags=["models"])
async def models() -> dict[str, list[ModelSpec]]:
    """The model catalog: each model's sizes, frame rule, fps, steps per quality and guidance."""
    return {"data": list(CATALOG.values())}
