"""What a slot tells the operator: its metrics, its attempts' phase spans, and its GPU (NVML, if any).

An attempt is one span (`worker.attempt`, child of the scheduler's dispatch span through the dispatch
record's `ce_traceparent`); each phase it goes through (loading, encoding the prompt, denoising, decoding,
encoding the video, uploading) is a child span of it, each stored checkpoint a child of the denoising
span, and the publish of its last event a child of the attempt. `Phases` is fed from the generation
thread and from the event loop alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.trace import Span, set_span_in_context
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from schemas.jobs import Phase
from services.common import tracing

log = logging.getLogger("reelstream.worker")

STEP_SECONDS: Final = Histogram(
    "reelstream_worker_step_seconds",
    "Wall time of one denoising step (callbacks included), by model",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
PHASE_SECONDS: Final = Histogram(
    "reelstream_worker_phase_seconds",
    "Duration of one phase of an attempt (loading, encoding_prompt, denoising, decoding, encoding_video,"
    " uploading)",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
CHECKPOINT_FAILURES: Final = Counter(
    "reelstream_worker_checkpoint_failures_total", "Checkpoints that were not stored (retries exhausted)"
)
UPLOAD_FAILURES: Final = Counter(
    "reelstream_worker_upload_failures_total",
    "Failed tries to store a video or poster (each is retried until the upload deadline)",
)
TERMINAL_RETRIES: Final = Counter(
    "reelstream_worker_terminal_publish_retries_total",
    "Failed publishes of an attempt's last event, retried (by event type)",
    ["type"],
)


class Phases:
    """The phase spans of one attempt, and their durations in `PHASE_SECONDS`."""

    def __init__(self, parent: Context, model: str) -> None:
        self._parent = parent
        self._model = model
        self._lock = threading.Lock()
        self._phase: Phase | None = None
        self._span: Span | None = None
        self._since = 0.0
        self._last_step: float | None = None

    def enter(self, phase: Phase) -> None:
        """Close the running phase and open `phase` (entering the running one again changes nothing)."""
        with self._lock:
            if phase is self._phase:
                return
            self._close()
            self._phase, self._since = phase, time.monotonic()
            self._span = tracing.start_span("worker", f"worker.{phase.value}", parent=self._parent)
            self._last_step = self._since if phase is Phase.DENOISING else None

    def step(self, step: int) -> None:
        """A denoising step ended: its wall time since the previous one (or the phase's start)."""
        now = time.monotonic()
        with self._lock:
            if self._last_step is not None:
                STEP_SECONDS.labels(self._model).observe(now - self._last_step)
            self._last_step = now
            if self._span is not None:
                self._span.set_attribute("reelstream.step", step)

    def context(self) -> Context:
        """The running phase's span as a parent (the attempt's when none runs)."""
        with self._lock:
            return set_span_in_context(self._span, self._parent) if self._span is not None else self._parent

    def close(self) -> None:
        with self._lock:
            self._close()
            self._phase = None

    def _close(self) -> None:
        if self._span is not None and self._phase is not None:
            PHASE_SECONDS.labels(self._phase.value).observe(time.monotonic() - self._since)
            self._span.end()
        self._span = None


class GpuCollector(Collector):
    """GPU utilisation and memory per device, read from NVML at each scrape. Registered only when NVML
    (the `nvidia-ml-py` package and a driver) is there: no GPU, no series."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._nvml
        util = GaugeMetricFamily(
            "reelstream_worker_gpu_utilization_ratio", "GPU busy share (NVML)", labels=["gpu"]
        )
        used = GaugeMetricFamily(
            "reelstream_worker_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"]
        )
        total = GaugeMetricFamily("reelstream_worker_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(i)], rates.gpu / 100.0)
                used.add_metric([str(i)], float(memory.used))
                total.add_metric([str(i)], float(memory.total))
        except Exception as e:  # a driver error must not break the scrape of the other metrics
            log.debug("NVML read failed: %s", e)
        yield from (util, used, total)


class GpuSampler:
    """The busy share of the slot's GPU, for its progress events: NVML device 0, which in a pod is the
    one GPU the device plugin gave it. NVML is looked for on the first call; without it (no package, no
    driver) every call is None at once."""

    def __init__(self, nvml: Any = None, index: int = 0) -> None:
        self._nvml = nvml
        self._index = index
        self._handle: Any = None
        self._tried = False
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    if self._nvml is None:
                        import pynvml  # noqa: PLC0415 - GPU hosts only

                        pynvml.nvmlInit()
                        self._nvml = pynvml
                    self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self._index)
                except Exception as e:  # ImportError, or NVMLError without a driver or device
                    log.debug("no GPU utilisation in progress events: %s", e.__class__.__name__)
                    self._handle = None
            return self._handle

    def __call__(self) -> float | None:
        handle = self._handle if self._tried else self._open()
        if handle is None:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
        except Exception:  # a driver hiccup costs one update its figure, never the update
            return None


GPU_UTIL: Final = GpuSampler()


def watch_gpu(registry: CollectorRegistry = REGISTRY, nvml: Any = None) -> bool:
    """Register the GPU collector when NVML answers; False (and nothing registered) otherwise."""
    if nvml is None:
        try:
            import pynvml  # noqa: PLC0415 - only GPU hosts have it

            pynvml.nvmlInit()
        except Exception as e:  # ImportError, or NVMLError without a driver
            log.info("no GPU metrics: NVML unavailable (%s)", e.__class__.__name__)
            return False
        nvml = pynvml
    registry.register(GpuCollector(nvml))
    return True
