"""Fixtures for tests against the real local stack that `make up` starts (Kafka, Postgres, S3).

Endpoints come from the same settings class the services use, so REELSTREAM_* variables point the tests
at another stack. Each test isolates itself: a fresh uuid-named topic, consumer group or object key.
A part of the stack that does not answer fails the test with a message, never skips it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aioboto3
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.config import Config

from services.common.settings import CommonSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def settings() -> CommonSettings:
    return CommonSettings()


async def require_reachable(part: str, host: str, port: int) -> None:
    """Fails the test at once, with the remedy, when nothing listens where the settings point."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=3)
    except (OSError, TimeoutError) as e:
        pytest.fail(f"{part} is not reachable at {host}:{port} ({e!r}); start the stack with `make up`")
    writer.close()
    await writer.wait_closed()


@pytest.fixture(scope="session")
async def kafka_bootstrap(settings: CommonSettings) -> str:
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    await require_reachable("kafka", host, int(port))
    return settings.kafka_bootstrap


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="reelstream-tests")
    await admin.start()
    yield admin
    await admin.close()


@pytest.fixture
async def new_topic(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[TopicFactory]:
    """Creates uuid-named topics for one test (the broker does not auto-create) and deletes them after."""
    created: list[str] = []

    async def create(partitions: int = 1, configs: Mapping[str, str] | None = None) -> str:
        name = f"test.{uuid.uuid4().hex}"
        topic = NewTopic(
            name=name, num_partitions=partitions, replication_factor=1, topic_configs=dict(configs or {})
        )
        response = await kafka_admin.create_topics([topic])
        errors = [error for error in response.topic_errors if error[1]]
        assert not errors, f"could not create {name}: {errors}"
        created.append(name)
        return name

    yield create
    if created:
        await kafka_admin.delete_topics(created)


@pytest.fixture(scope="session")
def database_url(settings: CommonSettings) -> str:
    """The SQLAlchemy URL of the local Postgres (asyncpg driver)."""
    return settings.database_url.get_secret_value()


@pytest.fixture(scope="session")
async def s3_endpoint(settings: CommonSettings) -> str:
    parts = urlsplit(settings.s3_endpoint)
    await require_reachable("s3", parts.hostname or "127.0.0.1", parts.port or 80)
    return settings.s3_endpoint


def s3_config() -> Config:
    # No retries: a refused request must show up as the refusal, not as a slow retry loop.
    return Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})


@pytest.fixture(scope="session")
async def s3(settings: CommonSettings, s3_endpoint: str) -> AsyncIterator[S3Client]:
    session = aioboto3.Session(
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        region_name=settings.s3_region,
    )
    async with session.client("s3", endpoint_url=s3_endpoint, config=s3_config()) as client:
        yield client


@pytest.fixture
def bucket(settings: CommonSettings) -> str:
    return settings.s3_bucket


@pytest.fixture
async def key_prefix(s3: S3Client, bucket: str) -> AsyncIterator[str]:
    """A uuid prefix for one test's objects; everything under it is deleted afterwards."""
    prefix = f"tests/{uuid.uuid4().hex}/"
    yield prefix
    listing = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    for item in listing.get("Contents", []):
        await s3.delete_object(Bucket=bucket, Key=item["Key"])
