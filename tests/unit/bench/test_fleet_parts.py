"""The fleet benchmark's parts that decide what is measured: production's settings and the deviations
printed, the realistic encode, the baselines' queue rules, the kill test's moment, the runs' table."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from bench import fleet, fleet_celery, fleet_report, fleet_settings, fleet_stats
from bench.fleet_kafka import Track, requested_event
from bench.fleet_procs import group_settled
from bench.fleet_worker import StepTimeGenerator, stretched_encode
from bench.naive_worker import next_batch
from services.scheduler.settings import SchedulerSettings

SCALE = 50.0


# ---- settings ----------------------------------------------------------------------------------------
def test_production_is_the_settings_defaults_with_the_deployments_values_on_top() -> None:
    prod = fleet_settings.production()
    assert prod["dead_after_seconds"] == SchedulerSettings.model_fields["dead_after_seconds"].default
    assert prod["lookahead_seconds"] == SchedulerSettings.model_fields["lookahead_seconds"].default
    # k8s/base/kustomization.yaml sets 30 s (the class default is 0).
    assert fleet_settings.deployment_values()["checkpoint_min_seconds"] == "30"
    assert prod["checkpoint_min_seconds"] == 30
    assert (prod["step_pacing"], prod["costs"]) == ("sleep", True)


def test_gpu_time_settings_are_scaled_and_nothing_else_and_no_deviation_by_default() -> None:
    used = fleet_settings.resolve([], SCALE)
    prod = fleet_settings.production()
    assert used["balance_min_gain_seconds"].value == pytest.approx(prod["balance_min_gain_seconds"] / SCALE)
    assert used["checkpoint_min_seconds"].value == pytest.approx(30 / SCALE)
    assert used["dead_after_seconds"].value == prod["dead_after_seconds"]  # the host's time: unscaled
    assert used["tick_seconds"].value == prod["tick_seconds"]
    assert not any(u.deviation for u in used.values())
    assert fleet_settings.deviations(used) == []


def test_a_changed_setting_is_a_deviation_named_in_the_table() -> None:
    used = fleet_settings.resolve(["dead_after_seconds=5", "step_pacing=gpu", "tick_seconds=0.5"], SCALE)
    assert used["dead_after_seconds"].value == 5.0 and used["dead_after_seconds"].deviation
    assert used["step_pacing"].deviation
    assert not used["tick_seconds"].deviation  # asked for production's own value
    rows = [fleet_settings.as_row(u) for u in used.values()]
    assert fleet_settings.deviations(rows) == [
        "dead_after_seconds=5.0 (production: 10.0)",
        "step_pacing=gpu (production: sleep)",
    ]
    cells = {r[1]: r for r in fleet_settings.table(rows)}
    assert cells["dead_after_seconds"][4] == "DEVIATION"
    assert cells["balance_min_gain_seconds"][4] == "GPU time / scale"
    assert cells["tick_seconds"][4] == "production"
    with pytest.raises(ValueError, match="NAME=VALUE"):
        fleet_settings.resolve(["no_such_setting=1"], SCALE)


def test_every_service_gets_all_of_its_settings_in_its_environment() -> None:
    used = fleet_settings.resolve(["balance_batch=false"], SCALE)
    scheduler = fleet_settings.environment(used, "scheduler")
    worker = fleet_settings.environment(used, "worker")
    assert scheduler["REELSTREAM_BALANCE_BATCH"] == "false"
    assert scheduler["REELSTREAM_DEAD_AFTER_SECONDS"] == "10.0"
    assert worker["REELSTREAM_CHECKPOINT_MIN_SECONDS"] == "0.6"
    assert worker["REELSTREAM_PROGRESS_INTERVAL_SECONDS"] == "0.25"
    assert worker["REELSTREAM_PREVIEW_EVERY_STEPS"] == "4"  # previews of the latents, production's default
    assert not set(scheduler) & set(worker)
    # Every name is a field of the settings the service reads.
    assert {k.removeprefix("REELSTREAM_").lower() for k in scheduler} <= set(SchedulerSettings.model_fields)


def test_the_command_line_defaults_are_production() -> None:
    args = fleet.parse([])
    assert args.phases == ["burst", "kill"] and args.baseline_list == list(fleet.BASELINES)
    assert fleet_settings.deviations(args.used) == []
    with pytest.raises(SystemExit):
        fleet.parse(["--baselines", "rabbitmq"])


# ---- the simulated slot --------------------------------------------------------------------------------
def test_the_encode_lasts_what_848x480_frames_take_on_the_host() -> None:
    slept: list[float] = []
    encoded: list[tuple[int, int, Path]] = []

    def real(frames: Any, fps: int, path: Path) -> None:
        encoded.append((len(frames), fps, path))

    encode = stretched_encode(real, SCALE, sleep=slept.append)
    encode([0] * 163, 30, Path("v.mp4"))
    assert encoded == [(163, 30, Path("v.mp4"))]
    assert slept and slept[0] == pytest.approx(fleet_stats.encode_seconds(163, SCALE), abs=0.01)
    assert fleet_stats.encode_seconds(163, SCALE) == pytest.approx(22.0 / SCALE)


# ---- the baselines -------------------------------------------------------------------------------------
def test_celery_modes_read_the_seeds_queues() -> None:
    assert fleet_celery.worker_queues("priority", 0, 4) == (
        "short-low,long-high",
        {"PEER_QUEUE_ORDER": "priority"},
    )
    assert fleet_celery.worker_queues("shared", 7, 4)[1] == {"PEER_QUEUE_ORDER": "round_robin"}
    split = [fleet_celery.worker_queues("split", slot, 4)[0] for slot in range(8)]
    assert split == ["long-high"] * 4 + ["short-low"] * 4
    with pytest.raises(ValueError, match="fifo"):
        fleet_celery.worker_queues("fifo", 0, 4)


def test_a_celery_job_hash_becomes_an_outcome() -> None:
    job = fleet_stats.BenchJob(0, fleet_stats.LONG)
    h = {"submitted": "10.0", "started": "12.0", "slot": "3", "generated": "22.1", "finished": "22.5"}
    o = fleet_celery.outcome(job, h | {"status": "SUCCEEDED"})
    assert (o.requested, o.started, o.ended, o.status, o.slot) == (10.0, 12.0, 22.5, "succeeded", 3)
    assert o.spans == {1: [3, 12.0, 22.1]}  # the GPU side ends with the decode, before the encode
    waiting = fleet_celery.outcome(job, {"submitted": "10.0"})
    assert waiting.started is None and waiting.status is None


class FakeConsumer:
    """What `next_batch` uses of an AIOKafkaConsumer: its assignment and `getmany` of some partitions."""

    def __init__(self, records: dict[TopicPartition, list[str]]) -> None:
        self.records = records

    def assignment(self) -> set[TopicPartition]:
        return set(self.records)

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        for tp in partitions:
            if self.records[tp]:
                return {tp: [self.records[tp].pop(0)]}
        return {}


def test_the_kafka_baseline_takes_interactive_first() -> None:
    inter, batch = TopicPartition("i", 3), TopicPartition("b", 3)
    consumer = FakeConsumer({inter: ["i1"], batch: ["b1", "b2"]})

    async def take() -> dict[Any, Any]:
        return await next_batch(consumer, ["i", "b"], wait_s=0)  # type: ignore[arg-type]

    assert asyncio.run(take()) == {inter: ["i1"]}
    assert asyncio.run(take()) == {batch: ["b1"]}
    consumer.records[inter].append("i2")
    assert asyncio.run(take()) == {inter: ["i2"]}
    assert asyncio.run(take()) == {batch: ["b2"]}
    assert asyncio.run(take()) == {}


def test_the_group_is_settled_when_each_member_has_one_partition_of_each_topic() -> None:
    good = [[["b", i], ["i", i]] for i in range(8)]
    assert group_settled(good, 8, 2)
    assert not group_settled([*good[:7], []], 8, 2)
    assert not group_settled([*good[:7], [["b", 0], ["i", 7]]], 8, 2)  # b/0 owned twice
    assert not group_settled([*good[:7], [["i", 7], ["i", 6]]], 8, 2)


# ---- the kill test ---------------------------------------------------------------------------------
def _track(steps: list[tuple[int, int, float]], spans: dict[int, list[Any]]) -> Track:
    outcome = fleet_stats.Outcome(fleet_stats.LONG, 0.0)
    outcome.spans = spans
    track = Track(fleet_stats.LONG, outcome)
    track.steps = steps
    return track


def test_the_kill_comes_a_quarter_step_before_the_checkpoint() -> None:
    step_s = fleet_stats.LONG.step_seconds(SCALE)
    track = _track([(1, 9, 100.0), (1, 11, 100.0 + 2 * step_s)], {1: [0, 98.0, None]})
    at = fleet.kill_moment(track, 16, 8, step_s)
    assert at == pytest.approx(100.0 + (16 - 9 - fleet.KILL_BEFORE_STEPS) * step_s)
    assert fleet.kill_moment(track, 24, 8, step_s) is None  # not yet in the interval before step 24
    assert fleet.kill_moment(_track([(1, 16, 5.0)], {}), 16, 8, step_s) is None  # past it


def test_busy_slots_are_those_whose_gpu_side_runs() -> None:
    collector = argparse.Namespace(tracks={})
    keys = [uuid.uuid4() for _ in range(3)]
    collector.tracks[keys[0]] = _track([], {1: [0, 1.0, None]})  # denoising on slot 0
    collector.tracks[keys[1]] = _track([], {1: [1, 1.0, 2.0], 2: [2, 3.0, None]})  # resumed on 2
    collector.tracks[keys[2]] = _track([], {1: [3, 1.0, 9.0]})  # frames made: slot 3 is free
    assert fleet.busy_slots(collector, keys) == {0, 2}  # type: ignore[arg-type]


def test_a_kill_loses_the_steps_since_the_checkpoint_and_the_prompt() -> None:
    step_s = fleet_stats.LONG.step_seconds(SCALE)
    track = _track([(1, 14, 100.0), (2, 20, 200.0)], {})
    track.resume[2] = "checkpoints/x/attempt-1/step-00008"
    track.started[2] = 110.0
    args = argparse.Namespace(scale=SCALE, used=fleet_settings.resolve([], SCALE))
    kill = {"job": "j", "slot": 4, "restarted": False, "killed_at": 100.0 + 1.75 * step_s, "busy_slots": 8}
    r = fleet_report.kill_result(track, kill, args)
    assert r["step_at_kill"] == pytest.approx(15.75)
    assert r["resumed_from_step"] == 8 and r["steps_lost"] == pytest.approx(7.75)
    assert r["gpu_seconds_lost"] == pytest.approx(7.75 * step_s + fleet_stats.prompt_seconds(SCALE))
    assert r["kill_to_resume_s"] == pytest.approx(110.0 - kill["killed_at"])
    assert r["busy_slots_at_kill"] == 8


# ---- several runs ------------------------------------------------------------------------------------
def test_spread_is_min_median_max() -> None:
    assert fleet_report.spread([3.0, 1.0, 2.0]) == "1.0 / 2.0 / 3.0"
    assert fleet_report.spread([0.9812], 3) == "0.981"
    assert fleet_report.spread([None, float("nan")]) == "-"


def _summary(util: float, p95: float) -> dict[str, Any]:
    lane = {"p50": 1.0, "p95": p95, "n": 1}
    total = {"total": {"p50": 0.02}}
    return {
        "jobs": 300,
        "succeeded": 300,
        "makespan_s": 86.3 / util,
        "ideal_over_makespan": util,
        "wait_interactive": lane,
        "wait_batch": lane,
        "slot_gap": {"p95": 0.1},
        "overhead_interactive": total,
        "preemptions": 4,
        "cpu_s": {"machine": 150.0},
    }


def test_runs_table_shows_each_design_as_min_median_max_and_the_targets() -> None:
    settings = [fleet_settings.as_row(u) for u in fleet_settings.resolve([], SCALE).values()]
    runs = [
        {
            "phases": {"reelstream burst": _summary(u, p), "kafka burst": _summary(0.7, 90.0)},
            "kill": [],
            "settings": settings,
            "commit": "abc",
            "machine": {"written": f"2026-12-06 04:{i}0:00 UTC"},
        }
        for i, (u, p) in enumerate(((0.985, 10.4), (0.981, 10.1), (0.990, 9.9)))
    ]
    text = fleet_report.render_runs(runs)
    row = "| utilisation: ideal makespan / makespan | 0.981 / 0.985 / 0.990 | 0.700 / 0.700 / 0.700 |"
    assert row in text
    assert "| interactive wait p95 (s) | 9.9 / 10.1 / 10.4 |" in text
    assert "both met in 1 of 3 runs" in text
    assert "deviations from production: none" in text
    assert "commit abc" in text


def test_the_p95_goal_is_the_same_h100_time_on_every_clock() -> None:
    assert fleet_report.p95_target(50) == pytest.approx(10.0)
    assert fleet_report.p95_target(10) == pytest.approx(50.0)
    run = {"phases": {"reelstream burst": _summary(0.99, 45.0)}, "kill": [], "config": {"scale": 10.0}}
    assert "(target <= 50 s): met" in fleet_report._targets(run)[0]
    run["config"] = {"scale": 50.0}
    assert "(target <= 10 s): MISSED" in fleet_report._targets(run)[0]


def test_runs_on_different_clocks_are_shown_side_by_side_with_the_rules_bound() -> None:
    def run(scale: float, util: float) -> dict[str, Any]:
        summary = _summary(util, 20.0) | {"ideal_makespan_s": 86.3 * 50 / scale}
        summary["makespan_s"] = summary["ideal_makespan_s"] / util
        summary["slot_time"] = {"generating": 0.05 * 8 * summary["makespan_s"], "between": 0.0}
        config = {"scale": scale, "slots": 8, "jobs": 40, "long_share": 0.2, "seed": 1}
        return {"phases": {"reelstream burst": summary}, "config": config, "commit": "abc"}

    text = fleet_report.render_scales([run(10.0, 0.97), run(50.0, 0.85)])
    header = text.splitlines()[0]
    assert header.index("reelstream / 50") < header.index("reelstream / 10")  # the bench's clock first
    assert "| utilisation: ideal makespan / makespan | 0.850 | 0.970 |" in text
    assert "| slot time beyond the work: denoising / between jobs (%) | 5.0 / 0.0 | 5.0 / 0.0 |" in text
    assert "|   goal: 500 s of H100 time | 10.0 | 50.0 |" in text
    bound = fleet_report.policy_bound(run(50.0, 0.85))
    assert 0.9 < bound["ideal"] / bound["makespan"] <= 1.0


def test_a_simulated_job_spends_the_prompt_encode_the_steps_and_the_decode() -> None:
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    request = requested_event(fleet_stats.BenchJob(0, fleet_stats.SHORT), {}).request
    generator = StepTimeGenerator("mochi-1-preview", SCALE, sleep=sleep, clock=lambda: clock[0])
    generator.load()
    video = generator.generate(request, on_phase=lambda phase: None, on_step=lambda info: None)
    assert sum(slept) == pytest.approx(fleet_stats.SHORT.work(SCALE))
    assert slept[0] == pytest.approx(fleet_stats.prompt_seconds(SCALE))
    assert slept[-1] == pytest.approx(fleet_stats.decode_seconds(31, SCALE))
    assert len(video.frames) == 31
    bare = StepTimeGenerator("mochi-1-preview", SCALE, costs=False, sleep=slept.append)
    slept.clear()
    bare.generate(request, on_phase=lambda phase: None, on_step=lambda info: None)
    assert sum(slept) == pytest.approx(fleet_stats.SHORT.denoise(SCALE), rel=0.05)


def test_the_old_flag_for_reelstream_alone_still_works() -> None:
    assert fleet.parse(["--skip-naive"]).baseline_list == []
    assert fleet.parse(["--baselines", "none"]).baseline_list == []
    assert fleet.parse(["--baselines", "kafka,celery-split"]).baseline_list == ["kafka", "celery-split"]
