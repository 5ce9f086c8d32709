"""Streams an S3 object through the api with HTTP Range support, and which object each content variant
of a job is (the video, its stills, the previews of its latents)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from enum import StrEnum

from botocore.exceptions import ClientError
from fastapi.responses import StreamingResponse

from schemas.jobs import JobStatus
from services.api.errors import ApiError, Conflict
from services.api.streams import StreamLimit
from services.api.views import STILLS
from services.common.errors import StorageUnavailable
from services.common.readmodel import JobRow
from services.common.storage import Storage, preview_key


class ContentVariant(StrEnum):
    """What `GET /v1/jobs/{id}/content?variant=` serves."""

    VIDEO = "video"
    POSTER = "poster"
    THUMBNAIL = "thumbnail"
    SPRITESHEET = "spritesheet"
    PREVIEW = "preview"


MEDIA_TYPES = dict.fromkeys(ContentVariant, "image/jpeg") | {ContentVariant.VIDEO: "video/mp4"}


class ContentMissing(ApiError):
    status = 404
    title = "Content not found"


class StepRequired(ApiError):
    status = 422
    title = "Invalid request"


def variant_key(
    job: JobRow, variant: ContentVariant, step: int | None = None, attempt: int | None = None
) -> str:
    """The S3 key of `variant` of `job`. The video and its stills exist once the job has succeeded
    (409 before); a still rendered only by later versions is a 404 naming it. A preview is the one of
    `step` of `attempt` (default: the job's current attempt), while the job runs or after."""
    if variant is ContentVariant.PREVIEW:
        if step is None:
            detail = "variant=preview needs step, the step of a job.preview event"
            raise StepRequired(
                detail, errors=[{"field": "step", "message": detail, "allowed": "integer >= 1"}]
            )
        return preview_key(job.id, attempt if attempt is not None else job.attempt, step)
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise Conflict(f"job {job.id} is {job.status}; its {variant} exists once it has succeeded")
    field = "video_key" if variant is ContentVariant.VIDEO else STILLS[variant.value]
    key = job.result.get(field)
    if not key:
        raise ContentMissing(f"job {job.id} has no {variant}: it was made before {variant}s were rendered")
    return str(key)


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
    storage: Storage,
    key: str,
    range_header: str | None,
    streams: StreamLimit,
    media_type: str = "video/mp4",
) -> StreamingResponse:
    """Open the object (ranged when asked) and stream it; the S3 connection closes when the body ends.
    A 206 carries the Content-Range that S3 answered; without one the whole object is a 200. An object
    that is not there is a 404 (`ContentMissing`)."""
    wanted = _check_range(range_header)
    client_cm = storage.client()
    s3 = await client_cm.__aenter__()
    try:
        params = {"Bucket": storage.bucket, "Key": key} | ({"Range": wanted} if wanted else {})
        obj = await s3.get_object(**params)
    except ClientError as e:
        await client_cm.__aexit__(None, None, None)
        code = e.response.get("Error", {}).get("Code")
        if code == "InvalidRange":
            raise RangeNotSatisfiable(f"Range {range_header} is outside the object") from e
        if code in {"NoSuchKey", "404", "NotFound"}:
            raise ContentMissing(f"no such content: {key.rsplit('/', 1)[-1]} is not stored") from e
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
    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)
