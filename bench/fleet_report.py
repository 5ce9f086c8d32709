"""The fleet benchmark's tables: phases side by side, the kill test, and the targets."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

from fleet_kafka import Track
from fleet_stats import LONG, markdown_table

ORDER = ("reelstream burst", "naive burst", "reelstream poisson", "naive poisson")
UTILISATION_TARGET = 0.98
INTERACTIVE_P95_TARGET = 10.0
RESUME_TARGET = 15.0


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _settled(s: dict[str, Any]) -> str:
    settled = s.get("settled")
    return f"{_f(settled['waited_s'])} / {_f(settled['busy_cores'], 2)}" if settled else "-"


def _pair(d: dict[str, Any], a: str = "p50", b: str = "p95", digits: int = 1) -> str:
    return f"{_f(d[a], digits)} / {_f(d[b], digits)}"


def _slot_time(s: dict[str, Any]) -> str:
    parts = s.get("slot_time") or {}
    names = ("generating", "between", "before_first", "end_spread", "after_last")
    return " / ".join(_f(parts.get(name)) for name in names)


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("jobs succeeded / submitted", lambda s: f"{s['succeeded']} / {s['jobs']}"),
    ("makespan (s)", lambda s: _f(s["makespan_s"])),
    ("ideal makespan (s)", lambda s: _f(s["ideal_makespan_s"])),
    ("utilisation = work / (slots x makespan)", lambda s: _f(s["utilisation"], 3)),
    ("ideal makespan / makespan", lambda s: _f(s["ideal_over_makespan"], 3)),
    ("interactive wait p50 / p95 (s)", lambda s: _pair(s["wait_interactive"])),
    ("batch wait p50 / p95 (s)", lambda s: _pair(s["wait_batch"])),
    ("ETA error (rule) abs p50 / p95 (s)", lambda s: _pair(s["eta_rule"], "abs_p50", "abs_p95")),
    ("ETA error (rule) mean signed (s)", lambda s: _f(s["eta_rule"]["bias"])),
    (
        "ETA error (api) abs p50 / p95 (s), n",
        lambda s: f"{_pair(s['eta_api'], 'abs_p50', 'abs_p95')}, {s['eta_api']['n']}",
    ),
    ("overhead per job p50, short / long (s)", lambda s: _lanes(s, "total")),
    ("  dispatched -> started p50 (s)", lambda s: _lanes(s, "dispatched_to_started")),
    ("  started -> upload, beyond the work, p50 (s)", lambda s: _lanes(s, "started_to_upload_minus_work")),
    ("  upload -> succeeded p50 (s)", lambda s: _lanes(s, "upload_to_end")),
    ("GPU idle between jobs on a slot p50 / p95 (s)", lambda s: _pair(s["slot_gap"], digits=2)),
    ("slot-s beyond the work: denoising / between / before first / end spread / last video", _slot_time),
    ("jobs preempted at a checkpoint", lambda s: str(s.get("preemptions", 0))),
    ("CPU-s: its 8 workers / the other design's idle 8", lambda s: _cpu(s, *_fleets(s))),
    ("CPU-s: scheduler / api / projector", lambda s: _cpu(s, "scheduler", "api", "projector")),
    ("CPU-s: kafka / s3 / postgres", lambda s: _cpu(s, "kafka", "s3", "postgres")),
    ("CPU-s: other users of the machine / all (2 cores)", lambda s: _cpu(s, "other", "machine")),
    ("load average, 1 min, before / after", lambda s: " / ".join(_f(x) for x in s["load_1min"])),
    ("waited for a quiet machine (s) / cores busy then", _settled),
]


def _lanes(s: dict[str, Any], part: str) -> str:
    short, long = s["overhead_interactive"][part]["p50"], s["overhead_batch"][part]["p50"]
    return f"{_f(short, 2)} / {_f(long, 2)}"


def _fleets(s: dict[str, Any]) -> tuple[str, str]:
    return ("naive", "fleet") if s.get("design") == "naive" else ("fleet", "naive")


def _cpu(s: dict[str, Any], *groups: str) -> str:
    cpu = s.get("cpu_s", {})
    return " / ".join(_f(cpu.get(g)) for g in groups)


def one_line(s: dict[str, Any]) -> str:
    return (
        f"makespan {_f(s['makespan_s'])} s (ideal {_f(s['ideal_makespan_s'])}), "
        f"utilisation {_f(s['utilisation'], 3)}, interactive wait p95 {_f(s['wait_interactive']['p95'])} s, "
        f"batch wait p95 {_f(s['wait_batch']['p95'])} s, {s['succeeded']}/{s['jobs']} succeeded"
    )


def kill_result(track: Track, kill: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Resume delay and lost work of one killed attempt, from the job's events."""
    step_s, killed_at = LONG.step_seconds(args.scale), kill["killed_at"]
    seen = [(step, t) for attempt, step, t in track.steps if attempt == 1 and t <= killed_at]
    last_step, last_t = max(seen) if seen else (0, killed_at)
    # Progress is throttled: add the steps that fit between the last published one and the kill.
    at_kill = min(LONG.steps, last_step + int((killed_at - last_t) / step_s))
    key = track.resume.get(2)
    found = re.search(r"step-(\d+)", key or "")
    resumed_from = int(found.group(1)) if found else 0
    started2 = track.started.get(2)
    return {
        "job": str(kill["job"]),
        "slot": kill["slot"],
        "restarted": kill["restarted"],
        "step_at_kill_published": last_step,
        "step_at_kill": at_kill,
        "resumed_from_step": resumed_from,
        "resumed_on_slot": track.slots.get(2),
        "kill_to_retry_s": track.retried_at - killed_at if track.retried_at else None,
        "kill_to_resume_s": started2 - killed_at if started2 else None,
        "gpu_seconds_lost": (at_kill - resumed_from) * step_s,
        "checkpoint_interval_s": args.checkpoint_every * step_s,
        "final_status": track.outcome.status,
    }


def _kill_table(kills: list[dict[str, Any]]) -> str:
    header = [
        "killed slot",
        "step at kill",
        "resumed from step",
        "kill -> retry decided (s)",
        "kill -> attempt 2 started (s)",
        "GPU-s lost",
        "checkpoint interval (s)",
        "final",
    ]
    rows = [
        [
            f"{k['slot']} ({'restarted at once' if k['restarted'] else 'left dead'})",
            str(k["step_at_kill"]),
            str(k["resumed_from_step"]),
            _f(k["kill_to_retry_s"]),
            _f(k["kill_to_resume_s"]),
            _f(k["gpu_seconds_lost"], 2),
            _f(k["checkpoint_interval_s"], 2),
            str(k["final_status"]),
        ]
        for k in kills
    ]
    return markdown_table(header, rows)


def _targets(results: dict[str, Any]) -> list[str]:
    lines = []
    burst = results["phases"].get("reelstream burst")
    if burst:
        util, p95 = burst["ideal_over_makespan"], burst["wait_interactive"]["p95"]
        both = util >= UTILISATION_TARGET and p95 <= INTERACTIVE_P95_TARGET
        lines.append(
            f"- burst: utilisation {util:.3f} of ideal (target >= {UTILISATION_TARGET}) and interactive "
            f"p95 wait {p95:.1f} s (target <= {INTERACTIVE_P95_TARGET:g} s): {'met' if both else 'MISSED'}"
        )
    for k in results["kill"]:
        resumed, lost = k["kill_to_resume_s"], k["gpu_seconds_lost"]
        ok = resumed is not None and resumed <= RESUME_TARGET and lost <= k["checkpoint_interval_s"] + 1e-9
        lines.append(
            f"- kill slot {k['slot']} ({'restarted' if k['restarted'] else 'left dead'}): resumed after "
            f"{_f(resumed)} s (target <= {RESUME_TARGET:g} s), lost {lost:.2f} GPU-s (target <= "
            f"{k['checkpoint_interval_s']:.2f}): {'met' if ok else 'MISSED'}"
        )
    return lines


def _tenant_table(s: dict[str, Any]) -> str:
    """The noisy-neighbour phase: each tenant's waits."""
    rows = [
        [tenant, str(w["n"]), _f(w["p50"]), _f(w["p95"]), _f(w["max"])]
        for tenant, w in s.get("wait_by_tenant", {}).items()
    ]
    return markdown_table(
        ["tenant (noisy neighbour phase)", "jobs", "wait p50 (s)", "wait p95 (s)", "max (s)"], rows
    )


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    phases = results["phases"]
    names = [n for n in ORDER if n in phases]
    parts = []
    if names:
        rows = [[label, *(cell(phases[n]) for n in names)] for label, cell in ROWS]
        parts.append(markdown_table(["metric", *names], rows))
    if (tenants := phases.get("reelstream tenants")) is not None:
        parts.append(_tenant_table(tenants))
    if results["kill"]:
        parts.append(_kill_table(results["kill"]))
    parts.append("\n".join(_targets(results)))
    return "\n\n".join(p for p in parts if p)
