"""Streams an S3 object through the api with HTTP Range support."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from botocore.exceptions import ClientError
from fastapi.responses import StreamingResponse

from services.api.errors import ApiError
from services.api.streams import StreamLimit
from services.common.errors import StorageUnavailable
from services.common.storage import Storage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 * 1024


class RangeNotSatisfiable(ApiError):
    status = 416
    title = "Range not satisfiable"


def _check_range(header: str | None) -> str | None:
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise RangeNotSatisfiable(f"unsupported Range {header!r}; use a single 'bytes=start-end' range")
    first, last = match.groups()
    if first and last and int(first) > int(last):
        raise RangeNotSatisfiable(
            f"Range {header!r} ends before it starts; use 'bytes=start-end', start <= end"
        )
    return header.strip()


async def stream_object(
    storage: Storage, key: str, range_header: str | None, streams: StreamLimit
) -> StreamingResponse:
    """Open the object (ranged when asked) and stream it; the S3 connection closes when the body ends.
    A 206 carries the Content-Range that S3 answered; without one the whole object is a 200."""
    wanted = _check_range(range_header)
    client_cm = storage.client()
    s3 = await client_cm.__aenter__()
    try:
        params = {"Bucket": storage.bucket, "Key": key} | ({"Range": wanted} if wanted else {})
        obj = await s3.get_object(**params)
    except ClientError as e:
        await client_cm.__aexit__(None, None, None)
        if e.response.get("Error", {}).get("Code") == "InvalidRange":
            raise RangeNotSatisfiable(f"Range {range_header} is outside the object") from e
        raise StorageUnavailable(f"get {key}: {e}") from e
    except BaseException:
        await client_cm.__aexit__(None, None, None)
        raise

    async def body() -> AsyncIterator[bytes]:
        stream = obj["Body"]
        try:
            with streams.held():
                async for chunk in stream.iter_chunks(CHUNK):
                    yield chunk
        finally:
            stream.close()
            await client_cm.__aexit__(None, None, None)

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(obj["ContentLength"])}
    ranged = wanted is not None and "ContentRange" in obj
    if ranged:
        headers["Content-Range"] = obj["ContentRange"]
    status = 206 if ranged else 200
    return StreamingResponse(body(), status_code=status, media_type="video/mp4", headers=headers)
