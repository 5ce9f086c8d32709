"""Tenants and their API keys: who may call the api, as whom, and within which limits.

Unlike the read model these rows are not a projection of Kafka: an operator writes them (`reelstream keys`,
`reelstream tenants`, or the admin routes), and a replay of the topics leaves them alone. A key is shown
once, when it is made; only its SHA-256 is stored (the key is 32 random bytes, so a plain hash cannot be
reversed by guessing). A tenant's limits travel with each of its submits (`JobRequested.limits`), so the
scheduler enforces the ones in force when the job was accepted without reading this table.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, select, update
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.events import TenantLimits
from services.common.readmodel import Base

KEY_PREFIX: Final = "rs_"
TENANT_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Standard Webhooks secrets: "whsec_" and the base64 of the key bytes. Two are valid while one rotates.
WEBHOOK_SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)
WEBHOOK_SECRETS_KEPT: Final = 2


class Tenant(Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # None: the deployment's default (the api's settings) applies.
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    gpu_seconds_per_day: Mapped[float | None] = mapped_column(Float)
    # Requests per second each of the tenant's keys may make (a token bucket per key and api process).
    submits_per_second: Mapped[float | None] = mapped_column(Float)
    reads_per_second: Mapped[float | None] = mapped_column(Float)
    # Newest first; webhooks are signed with each (Standard Webhooks lets a receiver accept either).
    webhook_secrets: Mapped[list[str]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.name", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    # The first characters of the key, to tell keys apart in lists; never enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("uq_api_keys_secret_hash", "secret_hash", unique=True),
        Index("ix_api_keys_tenant", "tenant"),
    )


class BadTenantName(ValueError):
    pass


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise BadTenantName(
            f"tenant {name!r} is not a name: 1-63 characters of a-z, 0-9 and '-',"
            " starting with a letter or digit"
        )
    return name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown of a key (never the key itself)."""

    id: uuid.UUID
    tenant: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.id, row.tenant, row.name, row.prefix, row.admin, row.created_at, row.revoked_at)

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "tenant": self.tenant,
            "name": self.name,
            "prefix": self.prefix,
            "admin": self.admin,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: the key's tenant and what the key may do."""

    key_id: uuid.UUID
    tenant: str
    admin: bool
    limits: TenantLimits  # what the scheduler enforces (sent with each submit)
    max_queued_jobs: int  # what the api checks at submit
    submits_per_second: float
    reads_per_second: float


async def ensure_tenant(session: AsyncSession, name: str) -> None:
    check_tenant_name(name)
    secrets_ = [new_webhook_secret()]
    stmt = insert(Tenant).values(name=name, webhook_secrets=secrets_, created_at=datetime.now(UTC))
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))


async def create_key(
    session: AsyncSession, tenant: str, name: str, *, admin: bool = False, key: str | None = None
) -> tuple[str, KeyInfo]:
    """A new key of `tenant` (made if new): the key, to show once, and what may be shown of it later.
    `key` stores a given key instead of a random one (the local development key kept in a file)."""
    await ensure_tenant(session, tenant)
    key = key or new_key()
    row = ApiKey(
        id=uuid.uuid4(),
        tenant=tenant,
        name=name,
        prefix=key[:10],
        secret_hash=hash_key(key),
        admin=admin,
        created_at=datetime.now(UTC),
        revoked_at=None,
    )
    session.add(row)
    await session.flush()
    return key, KeyInfo.of(row)


async def find_key(session: AsyncSession, key: str) -> tuple[ApiKey, Tenant] | None:
    """The live key with this secret and its tenant; None for an unknown or revoked key."""
    stmt = (
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.name == ApiKey.tenant)
        .where(ApiKey.secret_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    found = (await session.execute(stmt)).tuples().first()
    return (found[0], found[1]) if found is not None else None


async def list_keys(session: AsyncSession, tenant: str | None = None) -> list[KeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    return [KeyInfo.of(row) for row in (await session.execute(stmt)).scalars()]


async def revoke_key(session: AsyncSession, key_id: uuid.UUID, tenant: str | None = None) -> KeyInfo | None:
    """Revoke a key (of `tenant`, when given); None if there is no such key. Revoking twice keeps the
    first time."""
    row = await session.get(ApiKey, key_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        return None
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
    return KeyInfo.of(row)


async def set_limits(
    session: AsyncSession,
    tenant: str,
    *,
    max_queued_jobs: int | None,
    max_running_jobs: int | None,
    gpu_seconds_per_day: float | None,
    submits_per_second: float | None,
    reads_per_second: float | None,
) -> None:
    """Set a tenant's limits (None: the deployment's default)."""
    await ensure_tenant(session, tenant)
    stmt = (
        update(Tenant)
        .where(Tenant.name == tenant)
        .values(
            max_queued_jobs=max_queued_jobs,
            max_running_jobs=max_running_jobs,
            gpu_seconds_per_day=gpu_seconds_per_day,
            submits_per_second=submits_per_second,
            reads_per_second=reads_per_second,
        )
    )
    await session.execute(stmt)


async def rotate_webhook_secret(session: AsyncSession, tenant: str) -> list[str]:
    """A new signing secret first; the previous one stays valid beside it until the next rotation."""
    await ensure_tenant(session, tenant)
    row = await session.get(Tenant, tenant, with_for_update=True)
    assert row is not None
    row.webhook_secrets = [new_webhook_secret(), *row.webhook_secrets][:WEBHOOK_SECRETS_KEPT]
    await session.flush()
    return list(row.webhook_secrets)


async def webhook_secrets(session: AsyncSession, tenant: str) -> list[str]:
    """The tenant's signing secrets, newest first (empty: none made yet)."""
    row = await session.get(Tenant, tenant)
    return list(row.webhook_secrets) if row is not None else []
