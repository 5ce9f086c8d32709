"""The fleet benchmark's workload generator and metric arithmetic (bench/fleet_stats.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bench import fleet_stats as fs
from schemas.catalog import CATALOG, Quality

SCALE = 50.0


def test_job_kinds_follow_mochis_catalog_and_h100_step_times() -> None:
    mochi = CATALOG["mochi-1-preview"]
    assert (fs.SHORT.steps, fs.LONG.steps) == (mochi.steps[Quality.LOW], mochi.steps[Quality.HIGH])
    assert mochi.frames_allowed(fs.SHORT.num_frames) and mochi.frames_allowed(fs.LONG.num_frames)
    assert (fs.SHORT.lane, fs.LONG.lane) == ("interactive", "batch")
    assert fs.SHORT.step_seconds(SCALE) == pytest.approx(1.02 / 50)
    assert fs.LONG.step_seconds(SCALE) == pytest.approx(7.76 / 50)
    assert fs.LONG.denoise(SCALE) == pytest.approx(64 * 7.76 / 50)
    assert fs.step_seconds(97, 1.0) == pytest.approx((1.02 + 7.76) / 2)


def test_a_jobs_gpu_work_is_its_prompt_encode_steps_and_decode_at_h100_times() -> None:
    """docs/facts.md: T5 0.07 s, tiled VAE decode 7.1 s at 163 frames; 1.4 s at 31 frames."""
    assert fs.LONG.work(SCALE) == pytest.approx((0.07 + 64 * 7.76 + 7.1) / 50)
    assert fs.SHORT.work(SCALE) == pytest.approx((0.07 + 16 * 1.02 + 1.4) / 50)
    assert fs.LONG.work(SCALE, costs=False) == fs.LONG.denoise(SCALE)
    assert fs.decode_seconds(97, 1.0) == pytest.approx((1.4 + 7.1) / 2)
    # The MP4 encode is the host's (docs/engine.md: 22 s for 163 frames), not part of the GPU work.
    assert fs.encode_seconds(163, SCALE) == pytest.approx(22.0 / 50)
    assert fs.encode_seconds(31, 1.0) == pytest.approx(22.0 * 31 / 163)


def test_seeded_burst_has_the_exact_mix_in_a_repeatable_order() -> None:
    jobs = fs.burst(300, 0.2, seed=7)
    kinds = [j.kind.name for j in jobs]
    assert (kinds.count("long"), kinds.count("short")) == (60, 240)
    assert [j.index for j in jobs] == list(range(300))
    assert all(j.arrival == 0.0 for j in jobs)
    assert kinds == [j.kind.name for j in fs.burst(300, 0.2, seed=7)]
    assert kinds != [j.kind.name for j in fs.burst(300, 0.2, seed=8)]


def test_ideal_makespan_of_a_burst_is_total_work_over_slots() -> None:
    jobs = fs.burst(300, 0.2, seed=1)
    steps = 60 * 64 * 7.76 / 50 + 240 * 16 * 1.02 / 50
    assert fs.total_work(jobs, SCALE, costs=False) == pytest.approx(steps)
    assert fs.ideal_makespan(jobs, 8, SCALE, costs=False) == pytest.approx(84.288)
    work = steps + (300 * 0.07 + 60 * 7.1 + 240 * 1.4) / 50
    assert fs.total_work(jobs, SCALE) == pytest.approx(work)
    # The last job's video is encoded after its frames: at least a short one's encode.
    assert fs.ideal_makespan(jobs, 8, SCALE) == pytest.approx(work / 8 + fs.encode_seconds(31, SCALE))
    assert work / 8 == pytest.approx(86.2455)


def test_ideal_makespan_of_a_stream_is_bounded_by_the_last_arrival() -> None:
    jobs = [fs.BenchJob(0, fs.SHORT, 0.0), fs.BenchJob(1, fs.LONG, 100.0)]
    last = 100.0 + fs.LONG.work(SCALE) + fs.encode_seconds(163, SCALE)
    assert fs.ideal_makespan(jobs, 8, SCALE) == pytest.approx(last)


def test_poisson_stream_runs_at_the_requested_load_with_the_same_mix() -> None:
    rate = fs.arrival_rate(0.8, 8, 0.2, SCALE)
    assert rate == pytest.approx(0.8 * 8 / (0.2 * fs.LONG.work(SCALE) + 0.8 * fs.SHORT.work(SCALE)))
    jobs = fs.poisson(600, load=0.8, slots=8, long_share=0.2, scale=SCALE, seed=3)
    assert len(jobs) == round(rate * 600)
    assert sum(j.kind is fs.LONG for j in jobs) == round(len(jobs) * 0.2)
    arrivals = [j.arrival for j in jobs]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    gaps = np.diff(arrivals)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.1)
    # Exponential gaps: the standard deviation equals the mean.
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.15)


def test_percentile_interpolates_like_numpy() -> None:
    assert fs.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert fs.percentile([4.0, 1.0, 3.0, 2.0], 95) == pytest.approx(3.85)
    assert fs.percentile([5.0], 95) == 5.0
    assert math.isnan(fs.percentile([], 50))
    rng = random.Random(0)
    values = [rng.expovariate(1.0) for _ in range(101)]
    for q in (0, 50, 95, 99, 100):
        assert fs.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_eta_rule_counts_running_work_and_the_jobs_ahead_by_lane() -> None:
    view = fs.QueueView(slots=8, scale=SCALE)
    assert view.eta_wait(fs.SHORT) == 0.0
    for i in range(8):
        view.submitted(f"s{i}", fs.SHORT)
    view.submitted("l0", fs.LONG)
    short, long = fs.SHORT.work(SCALE), fs.LONG.work(SCALE)
    # A new short job waits for the 8 shorts only; a new long one for everything before it.
    assert view.eta_wait(fs.SHORT) == pytest.approx(8 * short / 8)
    assert view.eta_wait(fs.LONG) == pytest.approx((8 * short + long) / 8)
    view.started("l0", fs.LONG)
    view.progressed("l0", 48)
    left = fs.LONG.denoise(SCALE) / 4 + fs.decode_seconds(163, SCALE)  # 16 steps and the decode
    assert view.eta_wait(fs.SHORT) == pytest.approx((8 * short + left) / 8)
    view.ended("l0")
    assert view.eta_wait(fs.LONG) == pytest.approx(8 * short / 8)


def test_summary_of_a_perfectly_packed_fleet() -> None:
    long = fs.LONG.work(SCALE)
    jobs = [fs.BenchJob(i, fs.LONG) for i in range(8)] + [fs.BenchJob(8, fs.SHORT)]
    outcomes = [fs.Outcome(fs.LONG, 0.0, eta_wait=0.0, started=0.0, ended=long, status="succeeded")] * 8
    outcomes.append(fs.Outcome(fs.SHORT, 0.0, eta_wait=1.0, started=2.0, ended=2.5, status="cancelled"))
    s = fs.summarize(outcomes, jobs, 8, SCALE)
    assert s["succeeded"] == 8 and s["makespan_s"] == pytest.approx(long)
    assert s["utilisation"] == pytest.approx(1.0)
    assert s["wait_batch"]["p95"] == 0.0 and s["wait_interactive"]["p50"] == 2.0
    assert s["eta_rule"]["n"] == 9 and s["eta_rule"]["abs_p95"] == pytest.approx(0.6)
    assert s["overhead_batch"]["total"]["p50"] == pytest.approx(0.0)
    assert s["eta_api"]["n"] == 0


def test_slot_gaps_are_the_gpu_idle_time_between_attempts_on_one_slot() -> None:
    def done(*spans: tuple[int, float, float]) -> object:
        o = fs.Outcome(fs.SHORT, 0.0, status="succeeded")
        o.spans = {attempt: list(span) for attempt, span in enumerate(spans, 1)}
        return o

    # Slot 0 runs a job to 1.0, the next from 1.5 (preempted at 2.0, resumed on slot 1 from 3.0),
    # then one from 2.25; a job whose video is stored after its frames overlaps nothing here.
    outcomes = [
        done((0, 0.0, 1.0)),
        done((0, 1.5, 2.0), (1, 3.0, 4.0)),
        done((1, 0.0, 3.0)),
        done((0, 2.25, 3.0)),
    ]
    assert sorted(fs.slot_gaps(outcomes)) == [0.0, 0.25, 0.5]


def test_slot_time_beyond_the_work_adds_up_to_slots_times_makespan_minus_work() -> None:
    short = fs.SHORT.work(SCALE)

    def job(requested: float, *spans: tuple[int, float, float], ended: float) -> fs.Outcome:
        o = fs.Outcome(fs.SHORT, requested, ended=ended, status="succeeded")
        o.spans = {attempt: list(span) for attempt, span in enumerate(spans, 1)}
        return o

    # Two slots, three short jobs requested at 0: slot 0 starts at 0.1 and takes 0.05 s more than the
    # work; slot 1 starts at 0.2, runs two jobs 0.1 s apart, and the last video is stored 0.2 s after.
    outcomes = [
        job(0.0, (0, 0.1, 0.1 + short + 0.05), ended=0.5),
        job(0.0, (1, 0.2, 0.2 + short), ended=0.6),
        job(0.0, (1, 0.3 + short, 0.3 + 2 * short), ended=0.5 + 2 * short),
    ]
    parts = fs.slot_time(outcomes, 2, SCALE)
    assert parts["generating"] == pytest.approx(0.05)
    assert parts["between"] == pytest.approx(0.1)
    assert parts["before_first"] == pytest.approx(0.3)
    assert parts["end_spread"] == pytest.approx((0.3 + 2 * short) - (0.15 + short))
    assert parts["after_last"] == pytest.approx(2 * 0.2)
    makespan = 0.5 + 2 * short
    assert sum(parts.values()) == pytest.approx(2 * makespan - 3 * short)


def test_overhead_splits_dispatch_generation_and_upload() -> None:
    work = fs.SHORT.work(SCALE)
    o = fs.Outcome(fs.SHORT, 0.0, dispatched=1.0, started=1.5, uploading=2.0 + work, ended=3.0 + work)
    o.status = "succeeded"
    parts = fs.overheads([o], SCALE, "interactive")
    assert parts["total"]["p50"] == pytest.approx(1.5)
    assert parts["dispatched_to_started"]["p50"] == pytest.approx(0.5)
    assert parts["started_to_upload_minus_work"]["p50"] == pytest.approx(0.5)
    assert parts["upload_to_end"]["p50"] == pytest.approx(1.0)
