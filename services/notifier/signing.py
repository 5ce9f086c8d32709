"""Standard Webhooks (https://www.standardwebhooks.com): the body of a webhook and its three headers.

`webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per valid secret of the
tenant, space separated: while a secret rotates both are valid, and a receiver that knows either accepts.
The timestamp is the attempt's, not the event's, so a receiver's replay window (5 minutes in the reference
libraries) holds for a retry hours later; the id stays the event id, so a receiver can drop a repeat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

log = logging.getLogger(__name__)

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SIGNATURE_VERSION: Final = "v1"


class NoSigningSecret(ValueError):
    """The tenant has no usable secret: the webhook cannot be signed (a retry may find one)."""


def secret_key(secret: str) -> bytes | None:
    """The key bytes of a `whsec_<base64>` secret; None for a secret that is not one."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Padding is optional in the format (the reference libraries accept it either way).
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<signature>` of `body` under `key`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: a signature per valid secret, in the order given (newest first).

    Raises `NoSigningSecret` when none is valid; an invalid one is skipped with a warning.
    """
    signatures = []
    for secret in secrets:
        key = secret_key(secret)
        if key is None:
            log.warning("skipping a webhook secret that is not whsec_<base64>")
            continue
        signatures.append(sign(key, msg_id, timestamp, body))
    if not signatures:
        raise NoSigningSecret("the tenant has no valid webhook signing secret")
    return " ".join(signatures)


def body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The JSON body: `{"type": "job.succeeded", "timestamp": <event time>, "data": <the job event>}`.

    Built the same way for every attempt, so each attempt of a delivery sends the same bytes.
    """
    document = {"type": event_type, "timestamp": occurred_at.isoformat(), "data": dict(data)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, payload: bytes) -> dict[str, str]:
    """Every header of one attempt."""
    return {
        "content-type": "application/json",
        "user-agent": "reelstream-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, payload),
    }
