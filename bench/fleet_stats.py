"""The fleet benchmark's workload and arithmetic: job kinds, seeded workloads, the ETA rule, the metrics.

Pure Python (no Kafka, no torch), so the unit tests check every number the benchmark reports.
Times are Mochi's on one H100 (docs/facts.md: 1.02 s per step at 31 frames, 7.76 s at 163 frames, CFG
batch 2, 480x848; the T5 prompt encode 0.07 s; the tiled VAE decode 7.1 s at 163 frames, 1.4 s at 31)
divided by `scale`, so a fleet of simulated slots runs on a laptop-sized machine. A job's GPU work is its
prompt encode, its steps and its decode; the MP4 encode that follows runs on the host's CPU while the
slot's GPU denoises the next job (docs/engine.md: 22 s for 163 frames at 848x480, the worst case of
random noise; no figure from a GPU host exists yet), scaled the same way.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# Measured seconds per denoising step on one H100 by frame count (480x848, eager diffusers, CFG).
H100_STEP_SECONDS: Final = {31: 1.02, 163: 7.76}
# The rest of a job's GPU time on one H100: T5 prompt encode (prompt + negative), tiled VAE decode.
H100_PROMPT_SECONDS: Final = 0.07
H100_DECODE_SECONDS: Final = {31: 1.4, 163: 7.1}
# MP4 encode (libx264, CRF 18) of 848x480 frames on the host CPU, after the frames are made: 22 s for
# 163 frames (docs/engine.md), in proportion to the frames for 31.
HOST_ENCODE_SECONDS: Final = {31: 22.0 * 31 / 163, 163: 22.0}
LANES: Final = ("interactive", "batch")


# How a simulated step keeps time (bench/fleet_worker.py, services/worker/engine/simulated.py).
PACINGS = ("sleep", "gpu")
PACING_HELP = (
    "sleep (the default): a step is a plain sleep of its step time after the previous step's callbacks, "
    "so a loaded host's late wake-ups count as GPU time; gpu: not counting the sleep's own wake-up delay "
    "(microseconds on a GPU, a deviation printed in the table)"
)


def _by_frames(measured: dict[int, float], num_frames: int, scale: float) -> float:
    """Linear between the two measured frame counts, divided by `scale`."""
    (f0, s0), (f1, s1) = sorted(measured.items())
    return max(s0 + (num_frames - f0) * (s1 - s0) / (f1 - f0), 0.0) / scale


def step_seconds(num_frames: int, scale: float) -> float:
    """H100 seconds per step for `num_frames`, linear between the two measured sizes, divided by `scale`."""
    return _by_frames(H100_STEP_SECONDS, num_frames, scale)


def prompt_seconds(scale: float) -> float:
    """H100 seconds of the prompt encode (every attempt encodes again), divided by `scale`."""
    return H100_PROMPT_SECONDS / scale


def decode_seconds(num_frames: int, scale: float) -> float:
    """H100 seconds of the VAE decode of `num_frames`, divided by `scale`."""
    return _by_frames(H100_DECODE_SECONDS, num_frames, scale)


def encode_seconds(num_frames: int, scale: float) -> float:
    """Host seconds of the MP4 encode of `num_frames` at 848x480, divided by `scale`."""
    return _by_frames(HOST_ENCODE_SECONDS, num_frames, scale)


@dataclass(frozen=True, slots=True)
class JobKind:
    """One class of job: Mochi at 848x480 with a frame count, a quality (steps) and a lane."""

    name: str
    num_frames: int
    quality: str
    steps: int
    lane: str

    def step_seconds(self, scale: float) -> float:
        return step_seconds(self.num_frames, scale)

    def denoise(self, scale: float) -> float:
        """The denoising steps alone."""
        return self.steps * self.step_seconds(scale)

    def work(self, scale: float, costs: bool = True) -> float:
        """GPU work of one job: prompt encode, the denoising steps and the VAE decode (the MP4 encode and
        the upload run on the host while the GPU denoises the slot's next job); the steps alone
        without `costs`."""
        if not costs:
            return self.denoise(scale)
        return prompt_seconds(scale) + self.denoise(scale) + decode_seconds(self.num_frames, scale)


# Mochi's catalog: quality low = 16 steps, high = 64 steps.
SHORT: Final = JobKind("short", num_frames=31, quality="low", steps=16, lane="interactive")
LONG: Final = JobKind("long", num_frames=163, quality="high", steps=64, lane="batch")
KINDS: Final = {SHORT.name: SHORT, LONG.name: LONG}


@dataclass(frozen=True, slots=True)
class BenchJob:
    """One job of a workload: its place in the submit order, its kind, and its arrival (s from start)."""

    index: int
    kind: JobKind
    arrival: float = 0.0
    tenant: str = "default"


def _mix(n: int, long_share: float, rng: random.Random) -> list[JobKind]:
    """Exactly round(n * long_share) long jobs, the rest short, in a seeded random order."""
    longs = round(n * long_share)
    kinds = [LONG] * longs + [SHORT] * (n - longs)
    rng.shuffle(kinds)
    return kinds


def burst(n: int, long_share: float, seed: int) -> list[BenchJob]:
    """`n` jobs that all arrive at once."""
    return [BenchJob(i, kind) for i, kind in enumerate(_mix(n, long_share, random.Random(seed)))]


def noisy_neighbour(noisy: int, quiet: int, every: float) -> list[BenchJob]:
    """Two tenants in the batch lane: `noisy` submits `noisy` long jobs at once, then `quiet` submits
    one long job every `every` seconds (the first after `every` / 2), while noisy's backlog stands."""
    jobs = [BenchJob(i, LONG, 0.0, "noisy") for i in range(noisy)]
    jobs += [BenchJob(noisy + i, LONG, every / 2 + i * every, "quiet") for i in range(quiet)]
    return jobs


def tenant_waits(waits: Iterable[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """Per tenant: how many jobs started, and their waits (p50, p95, max)."""
    by: dict[str, list[float]] = {}
    for tenant, wait in waits:
        by.setdefault(tenant, []).append(wait)
    return {
        t: {"n": len(w), "p50": percentile(w, 50), "p95": percentile(w, 95), "max": max(w)}
        for t, w in sorted(by.items())
    }


def mean_work(long_share: float, scale: float) -> float:
    return long_share * LONG.work(scale) + (1 - long_share) * SHORT.work(scale)


def arrival_rate(load: float, slots: int, long_share: float, scale: float) -> float:
    """Jobs per second that keep `slots` busy a `load` share of the time: load * slots / mean work."""
    return load * slots / mean_work(long_share, scale)


def poisson(
    seconds: float, *, load: float, slots: int, long_share: float, scale: float, seed: int
) -> list[BenchJob]:
    """A Poisson stream lasting about `seconds`: exponential gaps at `arrival_rate`, the same mix."""
    rate = arrival_rate(load, slots, long_share, scale)
    rng = random.Random(seed)
    kinds = _mix(max(1, round(rate * seconds)), long_share, rng)
    jobs, t = [], 0.0
    for i, kind in enumerate(kinds):
        jobs.append(BenchJob(i, kind, t))
        t += rng.expovariate(rate)
    return jobs


def total_work(jobs: Iterable[BenchJob], scale: float, costs: bool = True) -> float:
    return sum(job.kind.work(scale, costs) for job in jobs)


def ideal_makespan(jobs: Sequence[BenchJob], slots: int, scale: float, costs: bool = True) -> float:
    """A lower bound on the makespan: the work shared perfectly by the slots, or the latest
    arrival plus its own work when arrivals, not work, decide (a stream); with `costs`, plus the MP4
    encode of a job whose GPU work ends last (the shortest encode for a burst). A burst gives work /
    slots + the shortest encode."""

    def encode(job: BenchJob) -> float:
        return encode_seconds(job.kind.num_frames, scale) if costs else 0.0

    first = min(job.arrival for job in jobs)
    latest = max(job.arrival - first + job.kind.work(scale, costs) + encode(job) for job in jobs)
    return max(total_work(jobs, scale, costs) / slots + min(encode(job) for job in jobs), latest)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class QueueView:
    """What the queue looks like to an observer of the events: waiting jobs by lane, running jobs' steps.

    `eta_wait` is the scheduler-side estimate of a new job's wait: the remaining work of the running jobs
    plus the work of every job that the scheduler would start before it (all waiting interactive jobs
    first, then older jobs of its own lane), shared by the slots. Same rule as the api's ETA, with each
    job's own step time.
    """

    slots: int
    scale: float
    waiting: dict[str, tuple[int, float]] = field(default_factory=dict)
    running: dict[str, tuple[JobKind, int]] = field(default_factory=dict)

    def eta_wait(self, kind: JobKind) -> float:
        """Seconds until a job of `kind` submitted now starts, if every job ran exactly its work."""
        rank = LANES.index(kind.lane)
        ahead = sum(work for lane, work in self.waiting.values() if lane <= rank)
        busy = sum(
            (k.steps - step) * k.step_seconds(self.scale) + decode_seconds(k.num_frames, self.scale)
            for k, step in self.running.values()
        )
        return (ahead + busy) / self.slots

    def submitted(self, key: str, kind: JobKind) -> None:
        self.waiting[key] = (LANES.index(kind.lane), kind.work(self.scale))

    def started(self, key: str, kind: JobKind) -> None:
        """A job started (a retried one keeps the step it had reached)."""
        self.waiting.pop(key, None)
        self.running.setdefault(key, (kind, 0))

    def progressed(self, key: str, step: int) -> None:
        if key in self.running:
            kind, _ = self.running[key]
            self.running[key] = (kind, min(step, kind.steps))

    def ended(self, key: str) -> None:
        self.waiting.pop(key, None)
        self.running.pop(key, None)


@dataclass
class Outcome:
    """What happened to one job, in seconds on one clock (event timestamps, UTC epoch).

    `dispatched` is the first `job.dispatched` (reelstream only); `uploading` the first progress event
    of the upload phase, so started..uploading is the generation and uploading..ended the upload.
    """

    kind: JobKind
    requested: float
    eta_wait: float | None = None
    tenant: str = "default"
    api_eta_start: float | None = None
    dispatched: float | None = None
    started: float | None = None
    uploading: float | None = None
    ended: float | None = None
    status: str | None = None
    slot: int | None = None
    # Per attempt: [slot, denoising started, GPU side done (frames made, preempted or ended)].
    spans: dict[int, list[Any]] = field(default_factory=dict)
    preemptions: int = 0


def _waits(outcomes: Iterable[Outcome], lane: str) -> list[float]:
    return [o.started - o.requested for o in outcomes if o.kind.lane == lane and o.started is not None]


def _eta_errors(outcomes: Iterable[Outcome]) -> tuple[list[float], list[float]]:
    rule, api = [], []
    for o in outcomes:
        if o.started is None:
            continue
        if o.eta_wait is not None:
            rule.append(o.started - o.requested - o.eta_wait)
        if o.api_eta_start is not None:
            api.append(o.started - o.api_eta_start)
    return rule, api


def _error_stats(errors: list[float]) -> dict[str, Any]:
    absolute = [abs(e) for e in errors]
    return {
        "n": len(errors),
        "abs_p50": percentile(absolute, 50),
        "abs_p95": percentile(absolute, 95),
        "bias": sum(errors) / len(errors) if errors else math.nan,
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}


def overheads(outcomes: Iterable[Outcome], scale: float, lane: str, costs: bool = True) -> dict[str, Any]:
    """Wall time of succeeded jobs beyond their pure work, whole and split into its parts."""
    done = [o for o in outcomes if o.kind.lane == lane and o.status == "succeeded"]
    total, dispatch, run, upload = [], [], [], []
    for o in done:
        if o.started is None or o.ended is None:
            continue
        total.append(o.ended - o.started - o.kind.work(scale, costs))
        if o.dispatched is not None:
            dispatch.append(o.started - o.dispatched)
        if o.uploading is not None:
            run.append(o.uploading - o.started - o.kind.work(scale, costs))
            upload.append(o.ended - o.uploading)
    return {
        "total": _spread(total),
        "dispatched_to_started": _spread(dispatch),
        "started_to_upload_minus_work": _spread(run),
        "upload_to_end": _spread(upload),
    }


def spans_by_slot(outcomes: Iterable[Outcome], slots: int = 0) -> dict[int, list[tuple[float, float]]]:
    """Each slot's attempts as (started, GPU side done), in order; slots 0..`slots`-1 even if idle."""
    by_slot: dict[int, list[tuple[float, float]]] = {s: [] for s in range(slots)}
    for o in outcomes:
        for slot, start, done in o.spans.values():
            if start is not None and done is not None:
                by_slot.setdefault(slot, []).append((start, done))
    for spans in by_slot.values():
        spans.sort()
    return by_slot


def slot_gaps(outcomes: Iterable[Outcome]) -> list[float]:
    """Idle time of a slot's GPU side: from one attempt's frames being made (or its preemption, or its
    end) to the start of the slot's next attempt. Encoding and storing a video overlap the next job."""
    return [
        nxt[0] - cur[1]
        for spans in spans_by_slot(outcomes).values()
        for cur, nxt in itertools.pairwise(spans)
        if nxt[0] >= cur[1]
    ]


def slot_time(outcomes: Sequence[Outcome], slots: int, scale: float, costs: bool = True) -> dict[str, float]:
    """Where the slots' time beyond the work went, in seconds summed over the slots, from the first
    request to the last terminal event: denoising beyond the work (callbacks, checkpoints, a host
    late to wake; redone steps after a kill), idle between two attempts on a slot, idle before a
    slot's first attempt, idle after a slot's last attempt while others still denoise (the end's
    imbalance), and after the last frames while the last video is stored. They add up to
    slots x makespan - work."""
    done = [o for o in outcomes if o.status == "succeeded" and o.ended is not None]
    if not done:
        return {}
    first = min(o.requested for o in outcomes)
    end = max(o.ended for o in done if o.ended is not None)
    by_slot = spans_by_slot(outcomes, slots)
    spans = [span for slot_spans in by_slot.values() for span in slot_spans]
    last_frames = max((frames for _, frames in spans), default=first)
    parts = {"generating": 0.0, "between": sum(slot_gaps(outcomes)), "before_first": 0.0, "end_spread": 0.0}
    for slot_spans in by_slot.values():
        if not slot_spans:
            parts["before_first"] += last_frames - first
            continue
        parts["generating"] += sum(frames - start for start, frames in slot_spans)
        parts["before_first"] += slot_spans[0][0] - first
        parts["end_spread"] += last_frames - max(frames for _, frames in slot_spans)
    parts["generating"] -= sum(o.kind.work(scale, costs) for o in done)
    parts["after_last"] = len(by_slot) * (end - last_frames)
    return parts


def summarize(
    outcomes: Sequence[Outcome], jobs: Sequence[BenchJob], slots: int, scale: float, costs: bool = True
) -> dict[str, Any]:
    """Makespan and utilisation against the ideal, waits per lane, ETA errors, per-job overhead."""
    done = [o for o in outcomes if o.status == "succeeded" and o.ended is not None]
    first = min(o.requested for o in outcomes)
    makespan = max(o.ended for o in done if o.ended is not None) - first if done else math.nan
    work = sum(o.kind.work(scale, costs) for o in done)
    ideal = ideal_makespan(jobs, slots, scale, costs)
    rule, api = _eta_errors(outcomes)
    out: dict[str, Any] = {
        "jobs": len(outcomes),
        "succeeded": len(done),
        "makespan_s": makespan,
        "ideal_makespan_s": ideal,
        "utilisation": work / (slots * makespan) if done else math.nan,
        "ideal_over_makespan": ideal / makespan if done else math.nan,
        "eta_rule": _error_stats(rule),
        "eta_api": _error_stats(api),
        "slot_gap": _spread(slot_gaps(outcomes)),
        "slot_time": slot_time(outcomes, slots, scale, costs),
        "preemptions": sum(o.preemptions for o in outcomes),
    }
    if len({o.tenant for o in outcomes}) > 1:
        started = [(o.tenant, o.started - o.requested) for o in outcomes if o.started is not None]
        out["wait_by_tenant"] = tenant_waits(started)
    for lane in LANES:
        out[f"wait_{lane}"] = _spread(_waits(outcomes, lane))
        out[f"overhead_{lane}"] = overheads(outcomes, scale, lane, costs)
        rule, api = _eta_errors(o for o in outcomes if o.kind.lane == lane)
        out[f"eta_rule_{lane}"], out[f"eta_api_{lane}"] = _error_stats(rule), _error_stats(api)
    return out


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
