"""Create reelstream's S3 bucket if it is missing, after waiting until the S3 API answers.

The endpoint, keys, region and bucket come from the same settings the services use (REELSTREAM_S3_*).
A signed request that the server rejects (wrong keys) fails at once; only connection errors and 5xx
answers are retried, because those mean the server is still starting.

    uv run python infra/create_bucket.py [--wait-timeout SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from services.common.settings import CommonSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


class BucketError(RuntimeError):
    """The bucket could not be made ready."""


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


async def bucket_exists(s3: S3Client, bucket: str) -> bool:
    try:
        await s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        if _status(e) == 404:
            return False
        raise
    return True


async def wait_for_s3(s3: S3Client, bucket: str, endpoint: str, timeout_s: float) -> bool:
    """Whether the bucket exists, asked again while the server is not up yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await bucket_exists(s3, bucket)
        except (EndpointConnectionError, ClientError) as e:
            retryable = isinstance(e, EndpointConnectionError) or _status(e) >= 500
            if not retryable:
                raise BucketError(f"{endpoint} refused a signed request: {e}") from e
            if time.monotonic() >= deadline:
                raise BucketError(f"{endpoint} did not answer within {timeout_s:.0f}s: {e}") from e
        await asyncio.sleep(0.5)


async def ensure_bucket(settings: CommonSettings, wait_timeout_s: float) -> None:
    session = aioboto3.Session(
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        region_name=settings.s3_region,
    )
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    bucket = settings.s3_bucket
    async with session.client("s3", endpoint_url=settings.s3_endpoint, config=config) as s3:
        if await wait_for_s3(s3, bucket, settings.s3_endpoint, wait_timeout_s):
            print(f"bucket {bucket} exists")
            return
        try:
            await s3.create_bucket(Bucket=bucket)
        except ClientError as e:
            # Another run may have made it in between; anything else is a real failure.
            if e.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise BucketError(f"could not create bucket {bucket}: {e}") from e
        print(f"bucket {bucket} created")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait for the S3 API")
    args = parser.parse_args(argv)
    try:
        asyncio.run(ensure_bucket(CommonSettings(), args.wait_timeout))
    except (BucketError, ClientError) as e:
        print(f"s3: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
