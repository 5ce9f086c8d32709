"""The slot's metrics as a scrape shows them: step and phase times, failed checkpoints and uploads,
retried last events, and the GPU when NVML is there (and no GPU series when it is not)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from schemas.events import EventType, JobDispatched, JobEvent
from schemas.jobs import JobRequest, Phase, resolve
from services.common.errors import BrokerUnavailable, StorageUnavailable
from services.worker import attempt as attempt_module
from services.worker.artifacts import Artifacts
from services.worker.attempt import Attempt, Backoff
from services.worker.engine.simulated import SimulatedGenerator
from services.worker.runner import JobRunner
from services.worker.telemetry import GpuCollector, GpuSampler, watch_gpu

PHASES = ("encoding_prompt", "denoising", "decoding", "encoding_video", "uploading")


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class FlakyStore:
    """Stores in memory; the first video upload fails like an unreachable S3."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.video_failures = 1

    async def put_file(self, key: str, path: str, content_type: str) -> None:
        if self.video_failures:
            self.video_failures -= 1
            raise StorageUnavailable("S3 is down")
        self.objects[key] = Path(path).read_bytes()

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    async def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    async def delete_prefix(self, prefix: str) -> int:
        return 0


class FlakyPublish:
    """Takes every event; the first try of the job's last event fails like a broker outage."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.failed = False

    async def __call__(self, event: JobEvent) -> object:
        if event.type is EventType.SUCCEEDED and not self.failed:
            self.failed = True
            raise BrokerUnavailable("no ack")
        self.events.append(event)
        return None


def dispatch() -> JobDispatched:
    request = resolve(JobRequest(prompt="a cat", model="tiny-mochi", quality="high", seed=3))
    return JobDispatched(job_id=uuid.uuid4(), producer="scheduler", attempt=1, slot=0, request=request)


def test_a_job_counts_its_steps_phases_failed_upload_and_retried_last_event(tmp_path: Path) -> None:
    job = dispatch()
    steps = job.request.num_inference_steps
    before = {
        "step": value("reelstream_worker_step_seconds_count", {"model": "tiny-mochi"}),
        "upload": value("reelstream_worker_upload_failures_total"),
        "retry": value("reelstream_worker_terminal_publish_retries_total", {"type": "job.succeeded"}),
        **{p: value("reelstream_worker_phase_seconds_count", {"phase": p}) for p in PHASES},
    }
    publish = FlakyPublish()
    runner = JobRunner(
        slot=0,
        generator=SimulatedGenerator("tiny-mochi", seconds_per_step=0.001),
        store=FlakyStore(),
        publish=publish,
        scratch_dir=tmp_path,
        checkpoint_every=2,
        progress_interval=0,
        upload_retry_seconds=5,
        backoff=Backoff(first=0.01, cap=0.01),
    )
    assert asyncio.run(runner.run(job)) == "succeeded"
    assert publish.events[-1].type is EventType.SUCCEEDED
    assert value("reelstream_worker_step_seconds_count", {"model": "tiny-mochi"}) - before["step"] == steps
    assert value("reelstream_worker_upload_failures_total") - before["upload"] == 1
    retried = value("reelstream_worker_terminal_publish_retries_total", {"type": "job.succeeded"})
    assert retried - before["retry"] == 1
    for phase in PHASES:
        assert value("reelstream_worker_phase_seconds_count", {"phase": phase}) - before[phase] == 1, phase


def test_a_checkpoint_that_was_not_stored_is_counted() -> None:
    before = value("reelstream_worker_checkpoint_failures_total")
    attempt = Attempt(dispatch(), producer="worker-0", publish=FlakyPublish())
    failed: concurrent.futures.Future[int] = concurrent.futures.Future()
    failed.set_exception(StorageUnavailable("S3 is down"))
    attempt.saving = failed
    Artifacts.settle(attempt)
    assert value("reelstream_worker_checkpoint_failures_total") - before == 1
    assert attempt.last_checkpoint_step == -1


class FakeNvml:
    """Two GPUs as NVML reports them."""

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=[87, 0][handle])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=[60e9, 1e9][handle], total=80e9)


def test_gpu_utilisation_and_memory_come_from_nvml_at_each_scrape() -> None:
    registry = CollectorRegistry()
    assert watch_gpu(registry, FakeNvml())
    text = generate_latest(registry).decode()
    assert 'reelstream_worker_gpu_utilization_ratio{gpu="0"} 0.87' in text
    assert 'reelstream_worker_gpu_memory_used_bytes{gpu="0"} 6e+10' in text
    assert 'reelstream_worker_gpu_memory_total_bytes{gpu="1"} 8e+10' in text


def test_no_nvml_no_gpu_series_and_a_broken_driver_does_not_break_the_scrape() -> None:
    registry = CollectorRegistry()
    assert not watch_gpu(registry)  # no pynvml in this environment (CPU)
    assert "gpu" not in generate_latest(registry).decode()

    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")

    registry.register(GpuCollector(Broken()))
    assert "reelstream_worker_gpu_utilization_ratio" in generate_latest(registry).decode()


def test_the_worker_metrics_are_exposed() -> None:
    text = generate_latest(REGISTRY).decode()
    for name in (
        "reelstream_worker_step_seconds",
        "reelstream_worker_phase_seconds",
        "reelstream_worker_checkpoint_failures_total",
        "reelstream_worker_upload_failures_total",
        "reelstream_worker_terminal_publish_retries_total",
    ):
        assert f"# TYPE {name} " in text, name


def test_progress_events_carry_the_gpu_utilisation_of_nvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt = Attempt(dispatch(), producer="worker-0", publish=FlakyPublish())
    monkeypatch.setattr(attempt_module, "GPU_UTIL", GpuSampler(FakeNvml(), index=0))
    assert attempt.phase_progress(Phase.DENOISING).gpu_util == 0.87
    monkeypatch.setattr(attempt_module, "GPU_UTIL", GpuSampler())  # no pynvml here: no figure
    assert attempt.phase_progress(Phase.DENOISING).gpu_util is None

    class Flaky(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    monkeypatch.setattr(attempt_module, "GPU_UTIL", GpuSampler(Flaky()))
    assert attempt.phase_progress(Phase.DECODING).gpu_util is None  # the update still goes
