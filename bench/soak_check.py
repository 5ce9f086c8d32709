"""The soak's verdict, from what it recorded and what it read back: no I/O here, so the rules are unit
tested with made-up observations (tests/unit/bench/test_soak.py).

Every job the soak got a 202 for must end in exactly one terminal state, in the read model and on its SSE
stream; a success leaves exactly its MP4 and poster under `jobs/<id>/attempt-<n>/`, and nothing else of
the job stays in the bucket (no other attempt's files, no checkpoint). A job that failed because of a
fault (attempts exhausted after repeated kills) is allowed, and reported by its error code.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.storage import (
    attempt_prefix,
    poster_key,
    preview_key,
    spritesheet_key,
    thumbnail_key,
    video_key,
)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_TYPES = frozenset(f"job.{s}" for s in TERMINAL_STATUSES)
PROBLEM_JSON = "application/problem+json"


@dataclass(slots=True)
class Submission:
    """One job the client meant to create, and what the api made of it (retried with the same key)."""

    n: int
    key: str  # Idempotency-Key: a retry after a 503 or a cut connection names the same job
    prompt: str
    body: dict[str, Any]
    at: float  # seconds into the run of the first POST
    job_id: str | None = None  # from the 202
    outcome: str = "pending"  # accepted | rejected <status> | gave up (<last answer>)
    tries: int = 0
    cancel: bool = False


@dataclass(slots=True)
class WatcherResult:
    """One SSE watcher: it follows its job to the end, reconnecting with Last-Event-ID when cut."""

    job_id: str
    ids: list[int] = field(default_factory=list)  # the ids of every identified event, across connections
    terminals: list[str] = field(default_factory=list)
    connections: int = 0
    early_disconnects: int = 0
    error: str | None = None

    def problem(self) -> str | None:
        """Why this watcher did not see its job end exactly once, in order (None: it did)."""
        if self.error:
            return self.error
        if len(self.terminals) != 1:
            return f"saw {len(self.terminals)} terminal events {self.terminals}"
        if any(b <= a for a, b in zip(self.ids, self.ids[1:], strict=False)):
            return f"event ids not strictly increasing across reconnects: {self.ids}"
        return None


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the read model holds it, with its applied terminal events (type, attempt)."""

    status: str
    attempt: int
    error_code: str | None
    video_key: str | None
    terminals: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """A 5xx the api gave, with what makes a 503 documented: problem+json and a Retry-After."""

    route: str
    status: int
    content_type: str
    retry_after: str | None
    at: float
    during_fault: str | None  # the fault under way (or just recovered from), if any
    body: str

    @property
    def documented(self) -> bool:
        return self.status == 503 and self.content_type.startswith(PROBLEM_JSON) and bool(self.retry_after)


@dataclass(slots=True)
class Observed:
    """Everything the checks need, gathered by bench/soak.py."""

    submissions: list[Submission]
    jobs: dict[str, JobView]  # read model rows of the soak's jobs (accepted or found by prompt)
    jobs_by_prompt: dict[str, list[str]]  # the soak's prompts -> the ids of the rows that carry them
    objects: dict[str, list[str]]  # job id -> keys under jobs/<id>/ and checkpoints/<id>/
    sse_terminals: dict[str, list[str] | str]  # job id -> terminal event types of a full read, or an error
    watchers: list[WatcherResult]
    fivexx: list[Answer]
    faults: list[dict[str, Any]]
    replay: list[str]  # differences between the read model and a replay (empty: equal)
    not_jobs: dict[str, list[str]] = field(default_factory=dict)  # poison ids -> rows/objects found


@dataclass(slots=True)
class Verdict:
    counts: dict[str, Any]
    violations: list[str]
    notes: list[str]


def allowed_objects(job_id: str, view: JobView, objects: Iterable[str] = ()) -> set[str]:
    """The objects a finished job may leave: a success its attempt's MP4, poster, thumbnail, spritesheet
    and the previews of that attempt (those among `objects`); anything else none."""
    if view.status != "succeeded" or len(view.terminals) != 1:
        return set()
    job, attempt = uuid.UUID(job_id), view.terminals[0][1]
    previews = preview_key(job, attempt, 0).removesuffix("00000.jpg")
    assert previews.startswith(attempt_prefix(job, attempt))
    kept = {video_key(job, attempt), poster_key(job, attempt)}
    kept |= {thumbnail_key(job, attempt), spritesheet_key(job, attempt)}
    return kept | {key for key in objects if key.startswith(previews) and key.endswith(".jpg")}


def _job_problems(job_id: str, view: JobView, objects: list[str], sse: list[str] | str | None) -> list[str]:
    out = []
    kinds = [t for t, _ in view.terminals]
    if view.status in TERMINAL_STATUSES and kinds != [f"job.{view.status}"]:
        out.append(f"{job_id}: status {view.status} but applied terminal events {kinds}")
    if isinstance(sse, str):
        out.append(f"{job_id}: SSE read failed: {sse}")
    elif sse is not None and view.status in TERMINAL_STATUSES and sse != [f"job.{view.status}"]:
        out.append(f"{job_id}: status {view.status} but its SSE stream ended with terminal events {sse}")
    if view.status == "succeeded" and kinds:
        wanted = video_key(uuid.UUID(job_id), view.terminals[0][1])
        mp4s = [k for k in objects if k.endswith(".mp4")]
        if mp4s != [wanted] or view.video_key != wanted:
            out.append(f"{job_id}: MP4 objects {mp4s}, result {view.video_key}; expected exactly {wanted}")
    return out


def evaluate(obs: Observed) -> Verdict:
    """Counts for the table, every violation with its evidence, and notes (allowed but worth saying)."""
    violations: list[str] = []
    notes: list[str] = []
    accepted = {s.job_id for s in obs.submissions if s.job_id}
    found = set(obs.jobs) | accepted
    statuses: Counter[str] = Counter()
    failed_by: Counter[str] = Counter()
    lost, stuck, duplicated, orphans = [], [], [], {}
    for job_id in sorted(found):
        view = obs.jobs.get(job_id)
        if view is None:
            lost.append(job_id)
            continue
        statuses[view.status] += 1
        if view.status == "failed":
            failed_by[view.error_code or "?"] += 1
        if view.status not in TERMINAL_STATUSES:
            stuck.append(f"{job_id} ({view.status}, attempt {view.attempt})")
        sse = obs.sse_terminals.get(job_id)
        if len(view.terminals) > 1 or (isinstance(sse, list) and len(sse) > 1):
            duplicated.append(job_id)
        violations += _job_problems(job_id, view, obs.objects.get(job_id, []), sse)
        kept = obs.objects.get(job_id, [])
        if extra := sorted(set(kept) - allowed_objects(job_id, view, kept)):
            orphans[job_id] = extra
    for sub in obs.submissions:
        rows = obs.jobs_by_prompt.get(sub.prompt, [])
        if len(rows) > 1:
            duplicated.append(f"{sub.key}: {len(rows)} jobs {rows}")
        elif rows and not sub.job_id:
            notes.append(f"{sub.key} ({sub.outcome}) exists as job {rows[0]} although no 202 named it")
    for poison, leftovers in obs.not_jobs.items():
        if leftovers:
            orphans[poison] = leftovers
    undocumented = [a for a in obs.fivexx if not a.documented]
    watchers_bad = [(w.job_id, p) for w in obs.watchers if (p := w.problem())]
    violations += [f"lost (202, no row in the read model): {j}" for j in lost]
    violations += [f"stuck (not terminal after the drain): {j}" for j in stuck]
    violations += [f"duplicated: {d}" for d in duplicated]
    violations += [f"orphan objects of {j}: {keys}" for j, keys in orphans.items()]
    violations += [
        f"undocumented {a.status} on {a.route} at {a.at:.1f}s: {a.body[:300]}" for a in undocumented
    ]
    violations += [f"watcher of {j}: {p}" for j, p in watchers_bad]
    violations += [f"replay: {r}" for r in obs.replay]
    violations += [
        f"fault {f['kind']} at {f['at']:.1f}s: {p}" for f in obs.faults for p in f.get("problems", [])
    ]
    if failed_by:
        notes.append(f"failed jobs by error code (allowed when a fault caused them): {dict(failed_by)}")
    counts = {
        "faults": dict(Counter(f["kind"] for f in obs.faults)),
        "submitted": len(obs.submissions),
        "accepted": len(accepted),
        "refused": dict(Counter(s.outcome for s in obs.submissions if not s.job_id)),
        "succeeded": statuses["succeeded"],
        "failed": statuses["failed"],
        "failed_by": dict(failed_by),
        "cancelled": statuses["cancelled"],
        "lost": len(lost),
        "duplicated": len(duplicated),
        "stuck": len(stuck),
        "orphans": sum(len(k) for k in orphans.values()),
        "5xx_documented": len(obs.fivexx) - len(undocumented),
        "5xx_undocumented": len(undocumented),
        "5xx_by_route": dict(Counter(f"{a.status} {a.route}" for a in obs.fivexx)),
        "503_outside_faults": sum(1 for a in obs.fivexx if a.documented and a.during_fault is None),
        "watchers_ok": len(obs.watchers) - len(watchers_bad),
        "watchers_not_ok": len(watchers_bad),
        "replay_equal": not obs.replay,
    }
    return Verdict(counts, violations, notes)


def table(counts: dict[str, Any], extra: dict[str, Any]) -> str:
    """The printed summary: one row per figure, in a Markdown table (pasteable into docs)."""

    def text(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
        return str(value)

    rows = [
        ("faults injected", counts["faults"]),
        ("jobs submitted / accepted (202)", f"{counts['submitted']} / {counts['accepted']}"),
        ("submits not accepted", counts["refused"]),
        (
            "succeeded / failed / cancelled",
            f"{counts['succeeded']} / {counts['failed']} / {counts['cancelled']}",
        ),
        ("failed by error code", counts["failed_by"]),
        ("lost / duplicated / stuck", f"{counts['lost']} / {counts['duplicated']} / {counts['stuck']}"),
        ("orphan objects", counts["orphans"]),
        ("5xx documented (503) / undocumented", f"{counts['5xx_documented']} / {counts['5xx_undocumented']}"),
        ("5xx by status and route", counts["5xx_by_route"]),
        ("documented 503 outside a fault", counts["503_outside_faults"]),
        ("watchers ok / not ok", f"{counts['watchers_ok']} / {counts['watchers_not_ok']}"),
        ("read model equals replay", "yes" if counts["replay_equal"] else "NO"),
        *extra.items(),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'check'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {text(value)} |" for name, value in rows]
    return "\n".join(lines)
