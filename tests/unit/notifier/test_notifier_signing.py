"""Webhook signing, checked by the reference implementation a receiver would use (`standardwebhooks`)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from schemas.events import JobSucceeded, VideoResult
from services.common.tenants import new_webhook_secret
from services.notifier import signing


def _event() -> JobSucceeded:
    result = VideoResult(
        video_key="jobs/x/attempt-1/video.mp4", poster_key=None, size_bytes=10, width=256, height=256,
        fps=8, frames=9, duration_seconds=1.125,
    )  # fmt: skip
    return JobSucceeded(
        job_id=uuid.uuid4(), producer="worker-0", attempt=1, result=result, generation_seconds=2.5
    )


def _signed(secrets: list[str]) -> tuple[bytes, dict[str, str]]:
    event = _event()
    body = signing.body(event.type.value, event.occurred_at, event.model_dump(mode="json"))
    return body, signing.headers(secrets, str(event.event_id), int(time.time()), body)


def test_a_receiver_with_the_secret_verifies_the_body_and_reads_the_event() -> None:
    secret = new_webhook_secret()
    body, headers = _signed([secret])

    verified = Webhook(secret).verify(body, headers)

    assert verified["type"] == "job.succeeded"
    assert verified["data"]["result"]["video_key"] == "jobs/x/attempt-1/video.mp4"
    assert headers["webhook-id"] == verified["data"]["event_id"]
    assert datetime.fromisoformat(verified["timestamp"]).tzinfo is not None


def test_during_a_rotation_either_secret_verifies() -> None:
    new, old = new_webhook_secret(), new_webhook_secret()
    body, headers = _signed([new, old])

    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        assert Webhook(secret).verify(body, headers)["type"] == "job.succeeded"


def test_another_secret_or_a_changed_body_does_not_verify() -> None:
    body, headers = _signed([new_webhook_secret()])
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)
    secret = new_webhook_secret()
    body, headers = _signed([secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)


def test_the_signature_equals_the_reference_signature() -> None:
    secret = new_webhook_secret()
    msg_id, at, body = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_700_000_000, b'{"a":1}'
    ours = signing.signature_header([secret], msg_id, at, body)
    assert ours == Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), body)


def test_invalid_secrets_are_skipped_and_none_left_is_an_error() -> None:
    good = new_webhook_secret()
    header = signing.signature_header(["nope", "whsec_***", good], "id", 1, b"{}")
    assert header.count("v1,") == 1
    with pytest.raises(signing.NoSigningSecret):
        signing.signature_header(["whsec_", "sk_live_x"], "id", 1, b"{}")


def test_an_unpadded_secret_is_read_as_the_reference_reads_it() -> None:
    key = b"k" * 31
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert signing.secret_key(unpadded) == key
    body, headers = _signed([unpadded])
    assert Webhook(unpadded).verify(body, headers)


def test_the_body_is_the_same_bytes_for_every_attempt() -> None:
    event = _event()
    data = event.model_dump(mode="json")
    first = signing.body(event.type.value, event.occurred_at, data)
    assert first == signing.body(event.type.value, event.occurred_at, json.loads(json.dumps(data)))
    expected = {"type": "job.succeeded", "timestamp": event.occurred_at.isoformat(), "data": data}
    assert json.loads(first) == expected
