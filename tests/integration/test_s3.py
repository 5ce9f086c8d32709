"""The local S3 API: objects, ranged reads, and presigned URLs that expire and cannot be forged."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aioboto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from services.common.settings import CommonSettings
from services.common.storage import Storage

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PAYLOAD = os.urandom(256 * 1024)


async def put_video(s3: S3Client, bucket: str, key: str) -> None:
    await s3.put_object(Bucket=bucket, Key=key, Body=PAYLOAD, ContentType="video/mp4")


async def presign(s3: S3Client, bucket: str, key: str, expires_in: int) -> str:
    return await s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
    )


def with_query(url: str, **changes: str) -> str:
    """The same URL with some query parameters replaced, everything else (signature included) kept."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_put_get_and_ranged_get(s3: S3Client, bucket: str, key_prefix: str) -> None:
    key = f"{key_prefix}video.mp4"
    await put_video(s3, bucket, key)

    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(PAYLOAD)
    assert head["ContentType"] == "video/mp4"
    whole = await s3.get_object(Bucket=bucket, Key=key)
    assert await whole["Body"].read() == PAYLOAD

    part = await s3.get_object(Bucket=bucket, Key=key, Range="bytes=1000-1999")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 1000-1999/{len(PAYLOAD)}"
    assert await part["Body"].read() == PAYLOAD[1000:2000]


async def test_presigned_get_over_plain_http(s3: S3Client, bucket: str, key_prefix: str) -> None:
    key = f"{key_prefix}video.mp4"
    await put_video(s3, bucket, key)
    url = await presign(s3, bucket, key, expires_in=300)
    assert url.startswith("http://")

    async with httpx.AsyncClient(timeout=10) as http:
        whole = await http.get(url)
        ranged = await http.get(url, headers={"Range": "bytes=0-1023"})
    assert whole.status_code == 200
    assert whole.content == PAYLOAD
    assert whole.headers["content-type"] == "video/mp4"
    # Browsers seek in a video with Range requests on the very same presigned URL.
    assert ranged.status_code == 206
    assert ranged.content == PAYLOAD[:1024]


async def test_expired_presigned_url_is_refused(s3: S3Client, bucket: str, key_prefix: str) -> None:
    key = f"{key_prefix}video.mp4"
    await put_video(s3, bucket, key)
    url = await presign(s3, bucket, key, expires_in=3)

    async with httpx.AsyncClient(timeout=10) as http:
        fresh = await http.get(url)
        # X-Amz-Date has whole seconds, so wait past the expiry with a margin.
        await asyncio.sleep(4.5)
        expired = await http.get(url)
    assert fresh.status_code == 200
    assert expired.status_code == 403
    assert b"AccessDenied" in expired.content


async def test_tampered_presigned_urls_are_refused(s3: S3Client, bucket: str, key_prefix: str) -> None:
    key, other = f"{key_prefix}video.mp4", f"{key_prefix}other.mp4"
    await put_video(s3, bucket, key)
    await put_video(s3, bucket, other)
    url = await presign(s3, bucket, key, expires_in=300)
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")

    tampered = {
        "signature": with_query(url, **{"X-Amz-Signature": flipped}),
        "longer expiry": with_query(url, **{"X-Amz-Expires": "604800"}),
        "other key": url.replace("/video.mp4?", "/other.mp4?"),
    }
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(url)).status_code == 200
        for what, bad_url in tampered.items():
            response = await http.get(bad_url)
            assert response.status_code == 403, f"{what}: {response.status_code} {response.text[:200]}"


async def test_request_signed_with_a_wrong_secret_is_refused(
    settings: CommonSettings, s3_endpoint: str, bucket: str
) -> None:
    session = aioboto3.Session(
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key="not-the-secret",
        region_name=settings.s3_region,
    )
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    async with session.client("s3", endpoint_url=s3_endpoint, config=config) as forged:
        with pytest.raises(ClientError) as refused:
            await forged.list_objects_v2(Bucket=bucket, MaxKeys=1)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_delete_prefix_deletes_everything_under_it_and_nothing_else(
    settings: CommonSettings, s3_endpoint: str, s3: S3Client, bucket: str, key_prefix: str
) -> None:
    """What a job's end does to its checkpoints: every attempt's, in one request per listed page."""
    under = [f"{key_prefix}job/attempt-{a}/step-{s:05d}.pt" for a in (1, 2) for s in (8, 16, 24)]
    beside = f"{key_prefix}jobx/attempt-1/step-00008.pt"  # the same characters, another job
    for key in [*under, beside]:
        await s3.put_object(Bucket=bucket, Key=key, Body=b"latents")

    async with Storage(settings) as storage:
        assert await storage.delete_prefix(f"{key_prefix}job/") == len(under)
        assert await storage.delete_prefix(f"{key_prefix}job/") == 0  # nothing left: no request fails

    listing = await s3.list_objects_v2(Bucket=bucket, Prefix=key_prefix)
    assert [item["Key"] for item in listing.get("Contents", [])] == [beside]
