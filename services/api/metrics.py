"""Prometheus metrics of the api."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

REQUESTS: Final = Counter("reelstream_api_requests_total", "HTTP requests", ["method", "route", "status"])
SUBMIT_SECONDS: Final = Histogram(
    "reelstream_api_submit_seconds",
    "POST /v1/jobs latency: validation, Kafka acks=all, and the wait for the projection",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SSE_CLIENTS: Final = Gauge("reelstream_api_sse_clients", "Open Server-Sent Events streams")
