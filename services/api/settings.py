"""Settings of the api service."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from services.common.settings import CommonSettings

PROJECTOR = "reelstream-projector"


class ApiSettings(CommonSettings):
    service_name: str = "api"
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description=(
            "Connections the api keeps open. A request holds one for its queries; past this many at once"
            " each further request opens and closes a connection of its own (several milliseconds)."
        ),
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_base_url: str = "http://127.0.0.1:8000"
    presign_expiry_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    projection_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a request waits for its job to be projected (read-your-writes).",
    )
    submit_deadline_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "A submitted job exists only if Kafka appends its job.requested within this time (the broker's"
            " clock, checked against the request's accept_by); otherwise the api answers 503 and consumers"
            " drop the record whenever it arrives."
        ),
    )
    clock_skew_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "How far the brokers' clocks may run behind the api's: with no ack by accept_by plus this, the"
            " api answers 503."
        ),
    )
    recent_job_seconds: float = Field(
        default=60.0, ge=0, description="A GET for an unknown id this recent waits for the projection."
    )
    queue_view_max_age_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A queue view older than this (the scheduler is away) gives no positions or ETAs.",
    )
    sse_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "Longest silence on an event stream: a stream with nothing sent for half of it sends a"
            " keep-alive comment when its job's feed wakes it (at least every half of it)."
        ),
    )
    sse_poll_seconds: float = Field(default=2.0, gt=0, description="Fallback re-read if a NOTIFY is missed.")
    max_streams: int = Field(
        default=4000,
        ge=1,
        description=(
            "SSE streams and /content downloads open at once on one api process; past it a new one gets"
            " 503 with Retry-After."
        ),
    )
    max_queued_jobs: int = Field(
        default=50_000,
        ge=1,
        description="Jobs waiting for a slot (all tenants) past which a submit is a 429 with Retry-After.",
    )
    tenant_max_queued_jobs: int = Field(
        default=10_000, ge=1, description="Jobs one tenant may have waiting, unless its own limit is set."
    )
    tenant_max_running_jobs: int | None = Field(
        default=None, ge=1, description="Slots one tenant's jobs may hold at once by default (None: all)."
    )
    tenant_gpu_seconds_per_day: float | None = Field(
        default=None, gt=0, description="GPU seconds one tenant's jobs may start per UTC day by default."
    )
    submits_per_second: float = Field(
        default=20.0, gt=0, description="Submits per second per key by default (a tenant may have its own)."
    )
    reads_per_second: float = Field(
        default=200.0, gt=0, description="Other requests per second per key by default (reads, cancels, SSE)."
    )
    rate_burst_seconds: float = Field(
        default=5.0, gt=0, description="A key may burst this many seconds' worth of its rate at once."
    )
    key_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long an api process trusts what it read of a key: a revoked key works this long.",
    )
    projector_consumer: str = Field(
        default=PROJECTOR, description="The projector's key in consumer_offsets, to measure its lag."
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request body; a larger one is a 413 problem."
    )
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024 + 64 * 1024,
        ge=1024,
        description="Largest body of POST /v1/videos, which may carry an input image (10 MiB at most).",
    )
    health_timeout_seconds: float = Field(default=3.0, gt=0)


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()
