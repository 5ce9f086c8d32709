"""Job ids: UUIDv7 (time-ordered) for new jobs, UUIDv5 of the Idempotency-Key for keyed ones."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

_IDEMPOTENCY_NS = uuid.UUID("6f1c3b52-8f5e-4d2a-9b8e-2f0c7a4e5d11")


def new_job_id() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then random bits (RFC 9562)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def keyed_job_id(tenant: str, idempotency_key: str) -> uuid.UUID:
    """The same tenant and key always name the same job, so a retried POST cannot make a second one."""
    return uuid.uuid5(_IDEMPOTENCY_NS, f"{tenant}\x00{idempotency_key}")


def created_at_of(job_id: uuid.UUID) -> datetime | None:
    """The creation time embedded in a UUIDv7, or None for other versions."""
    if job_id.version != 7:
        return None
    return datetime.fromtimestamp((job_id.int >> 80) / 1000, UTC)
