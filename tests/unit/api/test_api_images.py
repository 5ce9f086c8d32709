"""Input images: checked by their bytes, fetched SSRF-safe, stored before the job exists, refused with a
4xx problem naming the field."""

from __future__ import annotations

import asyncio
import io
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from services.api.images import (
    ImageRejected,
    ImageTooLarge,
    ImageTypeUnsupported,
    check_image,
    image_from_upload,
    image_from_url,
)
from services.common.storage import input_image_key
from services.common.targets import TargetPolicy, static_results

JOB = uuid.UUID("0b7e4c1a-5d2f-4e8a-9c31-7f6d2a8b9e40")
LOCAL = TargetPolicy(allow_http=True, allow_private=True)  # the test server is on 127.0.0.1


def encoded(kind: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format=kind)
    return buffer.getvalue()


class Storage:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)


class FixedResolver(AbstractResolver):
    """Resolves every name to `addresses` (what a hostile DNS answer would be)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return static_results(host, port, self.addresses)

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("kind", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
async def test_an_upload_is_stored_with_the_type_its_bytes_say(kind: str, media_type: str) -> None:
    storage, data = Storage(), encoded(kind)
    key = await image_from_upload(storage, JOB, data, "application/octet-stream", "input_reference")
    assert key == input_image_key(JOB) == f"jobs/{JOB}/input/image"
    assert storage.objects[key] == (data, media_type)


@pytest.mark.parametrize(
    ("data", "error", "status", "words"),
    [
        (b"GIF89a" + bytes(100), ImageTypeUnsupported, 415, "not a PNG, JPEG or WebP"),
        (b"%PDF-1.7 pretending", ImageTypeUnsupported, 415, "not a PNG, JPEG or WebP"),
        (encoded("PNG", (8, 8)), ImageRejected, 422, "8x8 pixels is outside"),
        (encoded("PNG", (5000, 20)), ImageRejected, 422, "5000x20 pixels is outside"),
        (encoded("PNG")[:60], ImageRejected, 422, "cannot be decoded"),
    ],
)
async def test_what_is_not_a_usable_image_is_refused_naming_the_field(
    data: bytes, error: type[ImageRejected], status: int, words: str
) -> None:
    storage = Storage()
    with pytest.raises(error) as info:
        await image_from_upload(storage, JOB, data, "image/png", "input_reference")
    assert info.value.status == status and words in info.value.detail
    (entry,) = info.value.extra["errors"]
    assert entry["field"] == "input_reference" and "PNG, JPEG or WebP" in entry["allowed"]
    assert storage.objects == {}


def test_too_many_bytes_is_a_413() -> None:
    with pytest.raises(ImageTooLarge) as info:
        check_image(encoded("PNG"), "image_url", max_bytes=100)
    assert info.value.status == 413 and "up to 100 bytes" in info.value.extra["errors"][0]["allowed"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://images.example.com/a.png", "scheme 'http' is not allowed"),
        ("https://127.0.0.1/a.png", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.1.2.3/a.png", "private"),
        ("https://[::ffff:192.168.0.1]/a.png", "private"),
        ("https://2130706433/a.png", "non-canonical"),
    ],
)
async def test_urls_of_private_addresses_are_refused_before_any_connection(url: str, words: str) -> None:
    with pytest.raises(ImageRejected) as info:
        await image_from_url(Storage(), JOB, url, "image_url")
    assert info.value.status == 422 and words in info.value.detail
    assert info.value.extra["errors"][0]["field"] == "image_url"


async def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    with pytest.raises(ImageRejected, match=r"resolves to a refused address: 10\.0\.0\.7 is a private"):
        await image_from_url(
            Storage(),
            JOB,
            "https://images.example.com/a.png",
            "image_url",
            resolver=FixedResolver("10.0.0.7"),
        )


async def test_an_unreachable_url_is_a_422() -> None:
    with pytest.raises(ImageRejected, match=r"unreachable|did not answer") as info:
        await image_from_url(
            Storage(), JOB, "https://nothing-here.invalid/a.png", "image_url", timeout_seconds=3
        )
    assert info.value.status == 422


@pytest.fixture
async def server() -> AsyncIterator[str]:
    png, big = encoded("PNG"), encoded("PNG") + bytes(300)

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.1/elsewhere.png")

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=big, content_type="image/png")

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(5)
        return response

    app = web.Application()
    app.router.add_get("/fox.png", image)
    app.router.add_get("/moved.png", moved)
    app.router.add_get("/missing.png", missing)
    app.router.add_get("/huge.png", huge)
    app.router.add_get("/slow.png", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_fetched_image_is_stored(server: str) -> None:
    storage = Storage()
    key = await image_from_url(storage, JOB, f"{server}/fox.png", "image_url", policy=LOCAL)
    data, media_type = storage.objects[key]
    assert media_type == "image/png" and Image.open(io.BytesIO(data)).size == (64, 48)


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("/moved.png", ImageRejected, "redirects are not followed"),
        ("/missing.png", ImageRejected, "HTTP 404"),
        ("/huge.png", ImageTooLarge, "more than 400"),
        ("/slow.png", ImageRejected, "did not answer within 1 s"),
    ],
)
async def test_what_a_url_serves_is_held_to_the_rules(
    server: str, path: str, error: type[ImageRejected], words: str
) -> None:
    storage = Storage()
    with pytest.raises(error, match=words):
        await image_from_url(
            storage, JOB, f"{server}{path}", "image_url", policy=LOCAL, timeout_seconds=1, max_bytes=400
        )
    assert storage.objects == {}
