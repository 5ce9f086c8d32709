"""/v1/admin: API keys and tenant limits, for admin keys only (the same as `reelstream keys|tenants`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from services.api.auth import AdminDep
from services.api.deps import SessionDep, WriteSessionDep
from services.api.errors import ApiError, problems
from services.common.tenants import TENANT_NAME, BadTenantName, create_key, list_keys, revoke_key, set_limits

router = APIRouter(prefix="/v1/admin", tags=["admin"])
TenantName = Annotated[str, Field(pattern=TENANT_NAME.pattern, description="a-z, 0-9 and '-', 1-63")]


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a number, not true or false")
    return value


# JSON numbers as JSON Schema reads them (50.0 is an integer), but never a boolean.
NoBool = BeforeValidator(_not_a_bool)


class KeyNotFound(ApiError):
    status = 404
    title = "Key not found"


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantName
    name: str = Field(default="key", min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    admin: StrictBool = False


class Limits(BaseModel):
    """A tenant's limits; a field left out or null takes the deployment's default."""

    model_config = ConfigDict(extra="forbid")

    max_queued_jobs: Annotated[int, Field(ge=1, le=10_000_000), NoBool] | None = None
    max_running_jobs: Annotated[int, Field(ge=1, le=100_000), NoBool] | None = None
    gpu_seconds_per_day: Annotated[float, Field(gt=0, le=1e9), NoBool] | None = None
    submits_per_second: Annotated[float, Field(gt=0, le=1e6), NoBool] | None = None
    reads_per_second: Annotated[float, Field(gt=0, le=1e6), NoBool] | None = None


@router.post("/keys", status_code=201, responses=problems(400, 403))
async def create(body: NewKey, _: AdminDep, session: WriteSessionDep) -> dict[str, Any]:
    """A new key; `key` is shown this once and never again (only its hash is stored)."""
    try:
        key, info = await create_key(session, body.tenant, body.name, admin=body.admin)
    except BadTenantName as e:
        raise ApiError(str(e)) from e
    await session.commit()
    return {"key": key, **info.public()}


@router.get("/keys", responses=problems(403))
async def index(
    _: AdminDep,
    session: SessionDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_NAME.pattern)] = None,
) -> dict[str, Any]:
    return {"data": [info.public() for info in await list_keys(session, tenant)]}


@router.delete("/keys/{key_id}", responses=problems(403, 404))
async def revoke(key_id: uuid.UUID, _: AdminDep, session: WriteSessionDep) -> dict[str, Any]:
    """Revoke a key: every api process refuses it within `key_cache_seconds`."""
    info = await revoke_key(session, key_id)
    if info is None:
        raise KeyNotFound(f"no key with id {key_id}")
    await session.commit()
    return info.public()


@router.put("/tenants/{tenant}/limits", responses=problems(400, 403))
async def limits(
    tenant: Annotated[str, Path(pattern=TENANT_NAME.pattern)],
    body: Limits,
    _: AdminDep,
    session: WriteSessionDep,
) -> dict[str, Any]:
    """Set a tenant's limits (made if new). Submits from then on carry them to the scheduler."""
    try:
        await set_limits(session, tenant, **body.model_dump())
    except BadTenantName as e:
        raise ApiError(str(e)) from e
    await session.commit()
    return {"tenant": tenant, **body.model_dump()}
