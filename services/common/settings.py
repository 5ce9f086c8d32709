"""The settings base every service extends. Only settings classes read the environment."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import JOBS_EVENTS, JOBS_REQUESTED

DEV_SECRETS = frozenset({"reelstream", "reelstream-secret", "changethis"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class CommonSettings(BaseSettings):
    """Connection settings shared by all services; each service subclasses it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="REELSTREAM_", env_file=None, extra="ignore", frozen=True)

    environment: Environment = Environment.DEVELOPMENT
    log_level: str = "INFO"
    log_format: Literal["json", "text"] | None = Field(
        default=None,
        description="json: one JSON object a line; text: key=value lines. Default: json in production.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "otlp_endpoint", "REELSTREAM_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description=(
            "OTLP/HTTP collector that traces are exported to (REELSTREAM_OTLP_ENDPOINT, else the standard"
            " OTEL_EXPORTER_OTLP_ENDPOINT). Unset: spans are made for the logs' trace_id, exported nowhere."
        ),
    )
    service_name: str = "reelstream"

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_request_timeout_ms: int = Field(default=15_000, ge=1000)
    kafka_fetch_max_wait_ms: int = Field(
        default=100,
        ge=10,
        le=30_000,
        description=(
            "How long the broker holds a consumer's fetch that finds no record: each idle consumer's"
            " fetches per second, and the most a record waits when its partition's fetch must wait for"
            " the one in flight (bench/idle.py; docs/benchmarks.md, Idle cost)."
        ),
    )

    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://reelstream:reelstream@127.0.0.1:5432/reelstream"
    )
    database_pool_size: int = Field(default=5, ge=1)

    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_public_endpoint: str | None = Field(
        default=None, description="Endpoint written into presigned URLs when clients reach S3 elsewhere."
    )
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr = SecretStr("reelstream")
    s3_secret_key: SecretStr = SecretStr("reelstream-secret")
    s3_bucket: str = "reelstream-videos"
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Days after a job ended that it is deleted with its S3 objects (the projector's sweeper);"
            " None: kept until deleted. The api shows the expiry as `expires_at`."
        ),
    )

    gpu_slots: int = Field(default=2, ge=1, le=64, description="Partitions of jobs.dispatch = GPU slots.")
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def log_style(self) -> str:
        """The log format in effect: the one set, else json in production and text in development."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment is Environment.PRODUCTION else "text"

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION:
            url = self.database_url.get_secret_value()
            weak = [
                name
                for name, value in (
                    ("s3_access_key", self.s3_access_key.get_secret_value()),
                    ("s3_secret_key", self.s3_secret_key.get_secret_value()),
                )
                if value in DEV_SECRETS
            ]
            if ":reelstream@" in url:
                weak.append("database_url")
            if weak:
                raise ValueError(f"development secrets in production: set {', '.join(weak)}")
        return self


class JobTopicsReaderSettings(CommonSettings):
    """A service that reads jobs.requested and jobs.events by manual assignment with its offsets in
    Postgres (`services/common/consumer.py`): the projector and the notifier. The topics are settings so
    that tests (and a staging copy) can feed it topics of their own."""

    requested_topic: str = JOBS_REQUESTED
    events_topic: str = JOBS_EVENTS
    poll_timeout_ms: int = Field(default=500, ge=10, le=60_000)
    assignment_refresh_seconds: float = Field(
        default=30.0, gt=0, description="How often partitions added to the topics are picked up."
    )
    retry_max_seconds: float = Field(
        default=10.0, gt=0, description="Longest pause after Kafka or Postgres was unavailable."
    )
