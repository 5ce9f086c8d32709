"""The S3 client (aioboto3) and the object-key scheme for artifacts and checkpoints.

Keys carry the attempt, so a stale attempt can never overwrite the artifact of the attempt that counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.errors import PermanentError, StorageUnavailable
from services.common.settings import CommonSettings

# aioboto3 clients are generated at run time; they are typed as Any here.
S3Client = Any


def attempt_prefix(job_id: uuid.UUID, attempt: int) -> str:
    """Where one attempt's video and poster live."""
    return f"jobs/{job_id}/attempt-{attempt}/"


def video_key(job_id: uuid.UUID, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}video.mp4"


def poster_key(job_id: uuid.UUID, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}poster.jpg"


def thumbnail_key(job_id: uuid.UUID, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}thumbnail.jpg"


def spritesheet_key(job_id: uuid.UUID, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}spritesheet.jpg"


def preview_key(job_id: uuid.UUID, attempt: int, step: int) -> str:
    """The low-resolution look at the latents after `step` (a JPEG)."""
    return f"{attempt_prefix(job_id, attempt)}preview-step-{step:05d}.jpg"


def input_image_key(job_id: uuid.UUID) -> str:
    """The image an image-to-video job starts from, as the client gave it (PNG, JPEG or WebP)."""
    return f"jobs/{job_id}/input/image"


def checkpoint_prefix(job_id: uuid.UUID) -> str:
    return f"checkpoints/{job_id}/"


def checkpoint_key(job_id: uuid.UUID, attempt: int, step: int) -> str:
    return f"{checkpoint_prefix(job_id)}attempt-{attempt}/step-{step:05d}.pt"


def job_prefix(job_id: uuid.UUID) -> str:
    """Everything a job's attempts and inputs leave, but checkpoints: video, poster, previews, input image."""
    return f"jobs/{job_id}/"


def job_prefixes(job_id: uuid.UUID) -> tuple[str, str]:
    """Every prefix a job has objects under: deleting both deletes all of it."""
    return (job_prefix(job_id), checkpoint_prefix(job_id))


class ObjectMissing(PermanentError):
    """The object does not exist."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    content_type: str


def _config() -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )


class Storage:
    """Thin async S3 adapter; botocore errors become our retryable/permanent errors.

    One client per endpoint (with its connection pool) serves the whole process: creating a client
    costs ~60 ms of CPU, ten times a small request. Clients open on first use; `close()` (or
    `async with`) releases them. Presigning uses a client of the public endpoint, which is only signed
    for, never called.
    """

    def __init__(self, settings: CommonSettings) -> None:
        self._settings = settings
        self._session = aioboto3.Session(
            aws_access_key_id=settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
            region_name=settings.s3_region,
        )
        self.bucket = settings.s3_bucket
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[bool, S3Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _new_client(self, public: bool) -> AbstractAsyncContextManager[S3Client]:
        endpoint = self._settings.s3_public_endpoint if public else None
        return self._session.client(  # type: ignore[no-any-return]
            "s3", endpoint_url=endpoint or self._settings.s3_endpoint, config=_config()
        )

    @asynccontextmanager
    async def client(self, public: bool = False) -> AsyncIterator[S3Client]:
        """The process's client for that endpoint; leaving the block does not close it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a client belongs to the loop that opened it
            self._stack, self._clients, self._loop = contextlib.AsyncExitStack(), {}, loop
            self._opening = asyncio.Lock()
        async with self._opening:
            if public not in self._clients:
                self._clients[public] = await self._stack.enter_async_context(self._new_client(public))
        yield self._clients[public]

    async def close(self) -> None:
        stack, self._stack, self._clients = self._stack, contextlib.AsyncExitStack(), {}
        if self._loop is asyncio.get_running_loop():
            await stack.aclose()

    @asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissing(f"{what}: no such object") from e
            raise StorageUnavailable(f"{what}: {code or e}") from e
        except (BotoCoreError, OSError) as e:
            raise StorageUnavailable(f"{what}: {e}") from e

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        async with self._translated(f"put {key}"), self.client() as s3:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        async with self._translated(f"upload {key}"), self.client() as s3:
            await s3.upload_file(path, self.bucket, key, ExtraArgs={"ContentType": content_type})

    async def get_bytes(self, key: str) -> bytes:
        async with self._translated(f"get {key}"), self.client() as s3:
            response = await s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

    async def head(self, key: str) -> ObjectInfo:
        async with self._translated(f"head {key}"), self.client() as s3:
            response = await s3.head_object(Bucket=self.bucket, Key=key)
            return ObjectInfo(int(response["ContentLength"]), str(response.get("ContentType", "")))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many were deleted.

        One request per listed page (up to 1000 keys), not one per object: a long job's eight
        checkpoints go in two requests instead of nine.
        """
        deleted = 0
        async with self._translated(f"delete {prefix}"), self.client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if not keys:
                    continue
                response = await s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise StorageUnavailable(
                        f"delete {prefix}: {len(errors)} of {len(keys)} not deleted, "
                        f"first {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                    )
                deleted += len(keys)
        return deleted

    async def delete_job_objects(self, job_id: uuid.UUID) -> int:
        """Delete every object of the job (`job_prefixes`); returns how many. Deleting again deletes 0."""
        deleted = 0
        for prefix in job_prefixes(job_id):
            deleted += await self.delete_prefix(prefix)
        return deleted

    async def presign_get(self, key: str, expires_in: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        async with self._translated(f"presign {key}"), self.client(public=True) as s3:
            url: str = await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
            return url

    async def ping(self) -> None:
        async with self._translated("head bucket"), self.client() as s3:
            await s3.head_bucket(Bucket=self.bucket)
