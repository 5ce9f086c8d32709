"""Input images of image-to-video jobs: checked, then stored in S3 before the job is accepted.

Two ways in: an upload (`image_from_upload`, e.g. `/v1/videos`' `input_reference`) or an https URL the api
fetches once (`image_from_url`, `JobRequest.image_url`). Either way the image is checked by its bytes,
never by its name or declared type: PNG, JPEG or WebP by magic bytes, at most `MAX_IMAGE_BYTES`, sides
`MIN_SIDE` to `MAX_SIDE` pixels, and a decoder that reads it whole. It is stored at
`input_image_key(job_id)` before `job.requested` is published, so a worker never sees a job whose image
is not there. Every refusal is a 4xx problem naming the field.

The URL fetch follows the webhook rules (`services.common.targets`): https only, every address the name
resolves to must be public (no loopback, private, link-local such as 169.254.169.254, CGNAT, ...), the
connection goes to exactly the address checked (no DNS rebinding), no redirects, a size cap read as it
streams, and a timeout.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from typing import Any, Final

import aiohttp
import PIL.Image
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from services.api.errors import ApiError
from services.common.storage import input_image_key
from services.common.targets import PinnedResolver, TargetPolicy, TargetRefused

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
MIN_SIDE: Final = 16
MAX_SIDE: Final = 4096
FETCH_TIMEOUT_SECONDS: Final = 10.0
ALLOWED: Final = "a PNG, JPEG or WebP image"
# What `sniff` names each format, and its media type.
_FORMATS: Final = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


class ImageRejected(ApiError):
    """The image (or its URL) cannot be used; `errors` names the field and what is allowed."""

    status = 422
    title = "Input image rejected"

    def __init__(self, field: str, message: str, allowed: str = ALLOWED) -> None:
        super().__init__(
            f"{field}: {message}", errors=[{"field": field, "message": message, "allowed": allowed}]
        )
        self.field = field


class ImageTooLarge(ImageRejected):
    status = 413
    title = "Input image too large"


class ImageTypeUnsupported(ImageRejected):
    status = 415
    title = "Input image type not supported"


def sniff(data: bytes) -> str | None:
    """`png`, `jpeg` or `webp` from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_image(data: bytes, field: str, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """The media type of `data` when it is an image reelstream takes; else a 4xx naming `field`."""
    if len(data) > max_bytes:
        raise ImageTooLarge(
            field, f"{len(data)} bytes is more than {max_bytes}", f"{ALLOWED} up to {max_bytes} bytes"
        )
    kind = sniff(data)
    if kind is None:
        raise ImageTypeUnsupported(field, "not a PNG, JPEG or WebP image (judged by its first bytes)")
    sides = f"{ALLOWED}, {MIN_SIDE} to {MAX_SIDE} pixels a side"
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise ImageRejected(field, f"{width}x{height} pixels is outside the allowed size", sides)
            image.load()  # decodes it all: a truncated or corrupt file fails here, not on the GPU
    except ImageRejected:
        raise
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ImageRejected(field, f"the {kind.upper()} data cannot be decoded: {e}") from e
    return _FORMATS[kind]


async def image_from_upload(
    storage: Any, job_id: uuid.UUID, data: bytes, content_type: str | None, field: str
) -> str:
    """Check uploaded bytes and store them as the job's input image; returns its S3 key.

    `content_type` (as the client declared it) is only logged: the bytes decide."""
    media_type = await asyncio.to_thread(check_image, data, field)
    if content_type and content_type.split(";")[0].strip().lower() != media_type:
        log.info("job=%s: %s declared %s, its bytes are %s", job_id, field, content_type, media_type)
    key = input_image_key(job_id)
    await storage.put_bytes(key, data, media_type)
    return key


async def image_from_url(
    storage: Any,
    job_id: uuid.UUID,
    url: str,
    field: str,
    *,
    policy: TargetPolicy | None = None,
    resolver: AbstractResolver | None = None,
    timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> str:
    """Fetch `url` once (SSRF-safe, see the module) and store it as the job's input image; returns its
    S3 key. `policy` and `resolver` are for tests and local development only."""
    data, content_type = await fetch_image(
        url,
        field,
        policy=policy or TargetPolicy(),
        resolver=resolver,
        timeout_seconds=timeout_seconds,
        max_bytes=max_bytes,
    )
    return await image_from_upload(storage, job_id, data, content_type, field)


async def fetch_image(
    url: str,
    field: str,
    *,
    policy: TargetPolicy,
    resolver: AbstractResolver | None = None,
    timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> tuple[bytes, str | None]:
    """The bytes at `url` and their declared type; every failure is a 4xx naming `field`."""
    allowed_url = "an https URL of a public host serving " + ALLOWED
    try:
        target = policy.check_url(url)
    except TargetRefused as e:
        raise ImageRejected(field, f"URL refused: {e}", allowed_url) from None
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(policy, resolver or ThreadedResolver()), use_dns_cache=False, limit=1
    )
    client_timeout = aiohttp.ClientTimeout(
        total=timeout_seconds, connect=timeout_seconds, sock_connect=timeout_seconds
    )
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=client_timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            ) as session,
            session.get(target, allow_redirects=False, headers={"Accept": "image/*"}) as response,
        ):
            if 300 <= response.status < 400:
                raise ImageRejected(
                    field,
                    f"the URL answered a redirect ({response.status}); redirects are not followed",
                    allowed_url,
                )
            if response.status != 200:
                raise ImageRejected(field, f"the URL answered HTTP {response.status}", allowed_url)
            if response.content_length is not None and response.content_length > max_bytes:
                raise ImageTooLarge(
                    field,
                    f"the URL serves {response.content_length} bytes, more than {max_bytes}",
                    f"{ALLOWED} up to {max_bytes} bytes",
                )
            data = await _read_capped(response, max_bytes, field)
            return data, response.headers.get("Content-Type")
    except ImageRejected:
        raise
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.__cause__, TargetRefused):
            raise ImageRejected(field, f"URL refused: {e.__cause__}", allowed_url) from None
        raise ImageRejected(field, f"the URL is unreachable: {e}", allowed_url) from None
    except TargetRefused as e:
        raise ImageRejected(field, f"URL refused: {e}", allowed_url) from None
    except TimeoutError:
        raise ImageRejected(
            field, f"the URL did not answer within {timeout_seconds:g} s", allowed_url
        ) from None
    except (aiohttp.ClientError, OSError) as e:
        raise ImageRejected(field, f"the URL is unreachable: {type(e).__name__}: {e}", allowed_url) from None


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, field: str) -> bytes:
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise ImageTooLarge(
                field, f"the URL serves more than {max_bytes} bytes", f"{ALLOWED} up to {max_bytes} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)
