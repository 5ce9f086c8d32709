"""The soak's verdict (bench/soak_check.py) and its seeded plans, on made-up observations: a clean run has
no violation, and each kind of broken guarantee is named with its job."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.soak_check import Answer, JobView, Observed, Submission, WatcherResult, evaluate, table
from bench.soak_client import plan_jobs
from bench.soak_faults import KINDS, plan_faults

A, B, C = (f"0193a000-0000-7000-8000-00000000000{i}" for i in range(3))


def done(job_id: str, attempt: int = 1) -> tuple[JobView, list[str]]:
    """A job that succeeded by `attempt`, and the objects it rightly leaves."""
    video = f"jobs/{job_id}/attempt-{attempt}/video.mp4"
    view = JobView("succeeded", attempt, None, video, (("job.succeeded", attempt),))
    return view, [video, f"jobs/{job_id}/attempt-{attempt}/poster.jpg"]


def sub(n: int, job_id: str | None) -> Submission:
    return Submission(
        n, f"k{n}", f"soak r #{n}", {}, float(n), job_id, "accepted" if job_id else "gave up (503)"
    )


def watcher(job_id: str, ids: list[int], terminals: list[str]) -> WatcherResult:
    return WatcherResult(job_id, ids, terminals, connections=2, early_disconnects=1)


def clean() -> Observed:
    (va, oa), (vb, ob) = done(A), done(B, attempt=2)
    vc = JobView("failed", 3, "attempts_exhausted", None, (("job.failed", 3),))
    return Observed(
        submissions=[sub(0, A), sub(1, B), sub(2, C)],
        jobs={A: va, B: vb, C: vc},
        jobs_by_prompt={"soak r #0": [A], "soak r #1": [B], "soak r #2": [C]},
        objects={A: oa, B: ob, C: []},
        sse_terminals={A: ["job.succeeded"], B: ["job.succeeded"], C: ["job.failed"]},
        watchers=[watcher(A, [0, 1, 2, 5], ["job.succeeded"])],
        fivexx=[Answer("POST /v1/jobs", 503, "application/problem+json", "5", 40.0, "restart-kafka", "")],
        faults=[{"kind": "restart-kafka", "at": 35.0, "problems": []}],
        replay=[],
    )


def verdict(**changes: Any) -> tuple[dict[str, Any], list[str]]:
    result = evaluate(dataclasses.replace(clean(), **changes))
    return result.counts, result.violations


def test_a_clean_run_has_no_violation_and_reports_faulted_failures() -> None:
    result = evaluate(clean())
    assert result.violations == []
    counts = result.counts
    assert (counts["succeeded"], counts["failed"], counts["cancelled"]) == (2, 1, 0)
    assert counts["failed_by"] == {"attempts_exhausted": 1}
    assert counts["5xx_documented"] == 1 and counts["5xx_undocumented"] == 0
    assert counts["watchers_ok"] == 1 and counts["faults"] == {"restart-kafka": 1}
    assert any("attempts_exhausted" in note for note in result.notes)


def test_a_202_without_a_row_is_lost_and_an_open_job_is_stuck() -> None:
    jobs = clean().jobs
    counts, violations = verdict(
        jobs={A: jobs[A], C: JobView("running", 2, None, None, ())}, sse_terminals={A: ["job.succeeded"]}
    )
    assert counts["lost"] == 1 and any(f"lost (202, no row in the read model): {B}" in v for v in violations)
    assert counts["stuck"] == 1 and any(C in v and "stuck" in v for v in violations)


def test_two_terminal_events_or_two_jobs_for_one_submit_are_duplicates() -> None:
    two = JobView("succeeded", 1, None, f"jobs/{A}/attempt-1/video.mp4", (("job.succeeded", 1),) * 2)
    counts, violations = verdict(jobs={**clean().jobs, A: two})
    assert counts["duplicated"] == 1 and any(A in v for v in violations)
    counts, violations = verdict(sse_terminals={**clean().sse_terminals, B: ["job.succeeded", "job.failed"]})
    assert counts["duplicated"] == 1 and any(B in v and "SSE" in v for v in violations)
    counts, _ = verdict(jobs_by_prompt={**clean().jobs_by_prompt, "soak r #0": [A, C]})
    assert counts["duplicated"] == 1


def test_other_attempts_files_and_checkpoints_are_orphans() -> None:
    objects = clean().objects
    stale = [f"jobs/{B}/attempt-1/video.mp4", f"checkpoints/{C}/attempt-2/step-00002.pt"]
    counts, violations = verdict(objects={A: objects[A], B: [*objects[B], stale[0]], C: [stale[1]]})
    assert counts["orphans"] == 2
    assert any(stale[1] in v for v in violations)
    assert any("MP4 objects" in v and B in v for v in violations)  # two MP4s for one success


def test_a_success_keeps_its_stills_and_previews_but_not_another_attempts_previews() -> None:
    objects = clean().objects
    kept = [
        f"jobs/{A}/attempt-1/{name}"
        for name in ("thumbnail.jpg", "spritesheet.jpg", "preview-step-00004.jpg")
    ]
    stale = f"jobs/{B}/attempt-1/preview-step-00002.jpg"  # B succeeded by attempt 2
    counts, violations = verdict(objects={A: [*objects[A], *kept], B: [*objects[B], stale], C: []})
    assert counts["orphans"] == 1 and any(stale in v for v in violations)


def test_only_a_problem_json_503_with_retry_after_is_documented() -> None:
    fivexx = [
        Answer("GET /v1/jobs/{id}", 500, "application/json", None, 50.0, None, "Internal Server Error"),
        Answer("POST /v1/jobs", 503, "text/plain", "5", 51.0, "kill-api", ""),
        Answer("POST /v1/jobs", 503, "application/problem+json", "5", 90.0, None, ""),
    ]
    counts, violations = verdict(fivexx=fivexx)
    assert counts["5xx_undocumented"] == 2 and counts["5xx_documented"] == 1
    assert counts["503_outside_faults"] == 1
    assert counts["5xx_by_route"] == {"500 GET /v1/jobs/{id}": 1, "503 POST /v1/jobs": 2}
    assert sum("undocumented" in v for v in violations) == 2


def test_a_watcher_must_see_one_end_with_ids_that_only_grow() -> None:
    counts, violations = verdict(
        watchers=[
            watcher(A, [0, 1, 1, 2], ["job.succeeded"]),  # an event twice after a reconnect
            watcher(B, [0, 1], []),
            WatcherResult(C, error="still watching when the drain ended"),
        ]
    )
    assert counts["watchers_not_ok"] == 3 and counts["watchers_ok"] == 0
    assert any("strictly increasing" in v for v in violations)


def test_a_poison_job_that_left_traces_and_a_failed_fault_check_are_violations() -> None:
    faults = [{"kind": "poison", "at": 70.0, "problems": ["a NUL prompt was answered 202"]}]
    counts, violations = verdict(
        faults=faults, not_jobs={"p1": ["jobs/p1/attempt-1/video.mp4"]}, replay=["x"]
    )
    assert counts["orphans"] == 1 and not counts["replay_equal"]
    assert any("answered 202" in v for v in violations) and any(v == "replay: x" for v in violations)


def test_a_503_that_still_became_a_job_is_a_note_not_a_loss() -> None:
    late = JobView("succeeded", 1, None, f"jobs/{C}/attempt-1/video.mp4", (("job.succeeded", 1),))
    base = clean()
    result = evaluate(
        dataclasses.replace(
            base,
            submissions=[sub(0, A), sub(1, B), sub(2, None)],
            jobs={**base.jobs, C: late},
            objects={**base.objects, C: [f"jobs/{C}/attempt-1/video.mp4"]},
            sse_terminals={**base.sse_terminals, C: ["job.succeeded"]},
        )
    )
    assert result.violations == [] and result.counts["accepted"] == 2
    assert any("although no 202 named it" in n for n in result.notes)


def test_the_table_names_every_figure() -> None:
    printed = table(evaluate(clean()).counts, {"api down (refused connections)": {"POST /v1/jobs": 3}})
    assert "| faults injected" in printed and "restart-kafka 1" in printed
    assert "2 / 1 / 0" in printed and "POST /v1/jobs 3" in printed


def test_plans_depend_on_the_seed_alone() -> None:
    first, again = plan_jobs(7, 120, 3.0, 100, "r"), plan_jobs(7, 120, 3.0, 100, "r")
    assert first == again and first != plan_jobs(8, 120, 3.0, 100, "r")
    assert 20 < len(first) < 70 and sum(j.gap for j in first) < 120
    assert {j.body["quality"] for j in first} <= {"low", "medium"}
    assert len(plan_jobs(7, 600, 3.0, 10, "r")) == 10  # the request bound
    faults = plan_faults(7, 600)
    assert faults == plan_faults(7, 600) and all(30 <= f.gap <= 60 for f in faults)
    assert {f.kind for f in faults} <= set(KINDS)
