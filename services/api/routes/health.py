"""Liveness, readiness (Kafka and Postgres reachable; S3 reported), the read model's lag, the catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from schemas.catalog import CATALOG, ModelSpec
from services.api.admission import Lag
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


async def _db(state: AppState) -> Lag:
    async with state.reads() as session:
        return await state.lag.measure(session)


@router.get(
    "/healthz",
    responses={
        503: {
            "description": "Kafka or Postgres does not answer; the body names which",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def healthz(state: StateDep) -> JSONResponse:
    """Ready while Kafka (a submit needs it) and Postgres (every read needs it) answer. S3 is reported but
    does not take readiness away: a storage blip must not pull every replica out of its Service, and
    only downloads need S3. `read_model` says how far the projector is behind this replica's submits."""
    timeout = state.settings.health_timeout_seconds
    lag: dict[str, Lag] = {}

    async def database() -> None:
        lag["read_model"] = await _db(state)

    results = dict(
        await asyncio.gather(
            _check("kafka", lambda: state.publisher.ping(timeout), timeout),
            _check("postgres", database, timeout),
            _check("s3", state.storage.ping, timeout),
        )
    )
    ready = results["kafka"] == "ok" and results["postgres"] == "ok"
    status = "unavailable" if not ready else "ok" if results["s3"] == "ok" else "degraded"
    body: dict[str, object] = {"status": status, "checks": results}
    if (measured := lag.get("read_model")) is not None:
        body["read_model"] = {"lag_seconds": measured.seconds, "unprojected_submits": measured.records}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/v1/models", tags=["models"])
async def models() -> dict[str, list[ModelSpec]]:
    """The model catalog: each model's sizes, frame rule, fps, steps per quality and guidance."""
    return {"data": list(CATALOG.values())}
