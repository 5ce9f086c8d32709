"""The scheduler's own rules on a virtual clock: what its order and its preemptions can reach at best.

The real `SchedulerState` and `plan` decide; simulated slots carry the decisions out instantly (or with
a fixed delay and per-job overhead you choose) and answer with the events a worker sends: started,
progress and a checkpoint every `--checkpoint-every` steps, the stop of a preempted job (with a
checkpoint at the step asked), the end of denoising, the terminal event. A job spends the GPU time the
fleet benchmark's slots spend (`fleet_stats`: the prompt encode at every start, the steps, the VAE
decode; `--no-costs` for the steps alone), and its MP4 encode overlaps the slot's next job. No Kafka, no
processes: it isolates the policy from the machine, so it gives the bound that the real fleet benchmark
(`fleet.py`) is compared with.

    python -m bench.fleet_sim                      # the fleet benchmark's burst, rules on and off
    python -m bench.fleet_sim --gap 0.05 --finish 0.1 --dispatch-delay 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.fleet_kafka import requested_event
from bench.fleet_stats import (
    BenchJob,
    burst,
    decode_seconds,
    encode_seconds,
    ideal_makespan,
    noisy_neighbour,
    percentile,
    prompt_seconds,
    step_seconds,
    tenant_waits,
)
from schemas.events import (
    HeldJob,
    JobCheckpointed,
    JobDispatched,
    JobPreempted,
    JobPreemptRequested,
    JobProgress,
    JobStarted,
    JobSucceeded,
    SlotState,
    VideoResult,
    WorkerHeartbeat,
)
from schemas.jobs import Phase
from services.scheduler.plan import plan
from services.scheduler.state import Dispatch, Finish, Preempt, Retry, SchedulerState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BALANCE_MIN_GAIN_H100 = 60.0  # the scheduler's balance_min_gain_seconds, GPU time
BOOT = uuid.UUID(int=1)
RESULT = VideoResult(
    video_key="k", poster_key=None, size_bytes=1, width=848, height=480, fps=30, frames=31, duration_seconds=1
)


@dataclass
class Run:
    job_id: uuid.UUID
    attempt: int
    start: float  # when denoising began (virtual seconds)
    first_step: int
    total: int
    per_step: float
    preempt_at: int | None = None

    def step_at(self, t: float) -> float:
        return self.first_step + (t - self.start) / self.per_step


@dataclass
class SimSlot:
    slot: int
    running: Run | None = None
    pending: list[Dispatch] = field(default_factory=list)
    finishing: dict[uuid.UUID, int] = field(default_factory=dict)
    free_from: float = 0.0  # the slot's gap between jobs ends here
    preempts: dict[tuple[uuid.UUID, int], int] = field(default_factory=dict)  # asked before it started
    token: int = 0  # invalidates the scheduled events of a run that was preempted


@dataclass(frozen=True, slots=True)
class SimConfig:
    slots: int = 8
    scale: float = 50.0
    checkpoint_every: int = 8
    # The scheduler's production settings (bench/fleet_settings.py): the balancing gain is GPU time (60 s
    # / scale), the tick and the look-ahead are the host's (not scaled).
    tick: float = 0.5
    lookahead: float = 2.0
    balance_gain: float | None = 1.2
    dispatch_delay: float = 0.0  # decision -> record readable by the slot
    gap: float = 0.0  # slot time between two jobs (start-up of a job)
    finish: float = 0.0  # upload after the encode, overlapped with the next job
    resume: float = 0.0  # extra start-up of a job that resumes from a checkpoint
    costs: bool = True  # prompt encode and VAE decode on the GPU, MP4 encode after (H100's / scale)


class Fleet:
    """Virtual time, the scheduler state, and the slots that obey it."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.state = SchedulerState(
            slots_total=config.slots,
            dead_after=timedelta(seconds=10),
            lost_grace=timedelta(seconds=3),
            max_attempts=3,
            lookahead=timedelta(seconds=config.lookahead),
            balance_gain=timedelta(seconds=config.balance_gain) if config.balance_gain else None,
            epoch=T0,
        )
        self.slots = [SimSlot(i) for i in range(config.slots)]
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.submitted: dict[uuid.UUID, tuple[BenchJob, float]] = {}
        self.first_start: dict[uuid.UUID, float] = {}
        self.ended: dict[uuid.UUID, float] = {}
        self.preemptions = 0
        self.busy = 0.0  # slot-seconds of denoising done

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), action))

    def clock(self, t: float | None = None) -> datetime:
        return T0 + timedelta(seconds=self.now if t is None else t)

    # ---- the workload ----------------------------------------------------------------------------
    def submit(self, jobs: Sequence[BenchJob]) -> None:
        for job in jobs:
            event = requested_event(job, {})
            self.at(job.arrival, lambda e=event, j=job: self._arrive(e, j))

    def _arrive(self, event: Any, job: BenchJob) -> None:
        self.submitted[event.job_id] = (job, self.now)
        self.state.on_event(event.model_copy(update={"occurred_at": self.clock()}))

    # ---- decisions -----------------------------------------------------------------------------------
    def decide(self) -> None:
        self.state.on_input(self.clock())
        for decision in plan(self.state, self.clock()):
            if isinstance(decision, Dispatch):
                self._dispatch(decision)
            elif isinstance(decision, Preempt):
                self._preempt(decision)
            elif isinstance(decision, Retry | Finish):  # nothing is lost in this simulation
                raise AssertionError(f"unexpected {decision}")

    def _dispatch(self, d: Dispatch) -> None:
        record = JobDispatched(
            job_id=d.job_id,
            producer="scheduler",
            attempt=d.attempt,
            slot=d.slot,
            request=d.request,
            resume_checkpoint=d.resume_checkpoint,
            occurred_at=self.clock(),
        )
        self.state.on_event(record)
        self.state.on_dispatch(record, offset=next(self.seq))
        slot = self.slots[d.slot]
        slot.pending.append(d)
        self.at(self.now + self.config.dispatch_delay, lambda: self._maybe_start(slot))

    def _preempt(self, p: Preempt) -> None:
        asked = JobPreemptRequested(
            job_id=p.job_id,
            producer="scheduler",
            attempt=p.attempt,
            at_step=p.at_step,
            reason=p.reason,
            occurred_at=self.clock(),
        )
        self.state.on_event(asked)
        for slot in self.slots:  # every slot reads every control record, like the workers
            run = slot.running
            if run is not None and (run.job_id, run.attempt) == (p.job_id, p.attempt):
                run.preempt_at = p.at_step
                slot.token += 1  # the run stops at that step now, not at its next regular checkpoint
                self._next_checkpoint(slot, run, slot.token)
            else:
                slot.preempts[(p.job_id, p.attempt)] = p.at_step

    # ---- the slots -------------------------------------------------------------------------------------
    def _maybe_start(self, slot: SimSlot) -> None:
        if slot.running is not None or not slot.pending or self.now < slot.free_from:
            return
        d = slot.pending.pop(0)
        first_step = 0
        delay = self.config.gap
        if d.resume_checkpoint is not None:
            first_step = int(d.resume_checkpoint.rsplit("-", 1)[1])
            delay += self.config.resume
        per_step = step_seconds(d.request.num_frames, self.config.scale)
        if self.config.costs:
            delay += prompt_seconds(self.config.scale)
        run = Run(d.job_id, d.attempt, self.now + delay, first_step, d.request.num_inference_steps, per_step)
        run.preempt_at = slot.preempts.pop((d.job_id, d.attempt), None)
        slot.running = run
        slot.token += 1
        self.first_start.setdefault(d.job_id, self.now)
        self.state.on_event(
            JobStarted(
                job_id=d.job_id,
                producer="w",
                attempt=d.attempt,
                slot=slot.slot,
                worker_id="w",
                occurred_at=self.clock(run.start),
            )
        )
        self._next_checkpoint(slot, run, slot.token)

    def _next_checkpoint(self, slot: SimSlot, run: Run, token: int) -> None:
        every = self.config.checkpoint_every
        done = int(run.step_at(max(self.now, run.start)) + 1e-9)
        step = (done // every + 1) * every
        if run.preempt_at is not None:  # a worker stops at the step asked, or the next one
            step = min(step, max(run.preempt_at, done + 1))
        step = min(step, run.total)
        when = run.start + (step - run.first_step) * run.per_step
        self.at(when, lambda: self._at_step(slot, run, token, step))

    def _at_step(self, slot: SimSlot, run: Run, token: int, step: int) -> None:
        if slot.token != token:
            return
        self._event(
            JobProgress(
                job_id=run.job_id,
                producer="w",
                attempt=run.attempt,
                phase=Phase.DENOISING,
                progress=step / run.total,
                step=step,
                total_steps=run.total,
                seconds_per_step=run.per_step,
                occurred_at=self.clock(),
            )
        )
        if step >= run.total:
            if self.config.costs:  # the slot's GPU decodes before the frames exist
                decode = decode_seconds(run_frames(self, run), self.config.scale)
                self.at(
                    self.now + decode, lambda: self._generated(slot, run) if slot.token == token else None
                )
            else:
                self._generated(slot, run)
            return
        key = f"checkpoints/{run.job_id}/attempt-{run.attempt}/step-{step:05d}"
        self._event(
            JobCheckpointed(
                job_id=run.job_id,
                producer="w",
                attempt=run.attempt,
                step=step,
                total_steps=run.total,
                checkpoint_key=key,
                occurred_at=self.clock(),
            )
        )
        if run.preempt_at is not None and step >= run.preempt_at:
            self.preemptions += 1
            self._free(slot, run)
            self._event(
                JobPreempted(
                    job_id=run.job_id,
                    producer="w",
                    attempt=run.attempt,
                    step=step,
                    total_steps=run.total,
                    checkpoint_key=key,
                    reason="asked",
                    occurred_at=self.clock(),
                )
            )
            return
        self._next_checkpoint(slot, run, token)

    def _generated(self, slot: SimSlot, run: Run) -> None:
        self._free(slot, run)
        slot.finishing[run.job_id] = run.attempt
        self._event(
            JobProgress(
                job_id=run.job_id,
                producer="w",
                attempt=run.attempt,
                phase=Phase.ENCODING_VIDEO,
                progress=0.95,
                occurred_at=self.clock(),
            )
        )
        finish = self.config.finish
        if self.config.costs:
            finish += encode_seconds(run_frames(self, run), self.config.scale)
        self.at(self.now + finish, lambda: self._succeeded(slot, run))

    def _succeeded(self, slot: SimSlot, run: Run) -> None:
        slot.finishing.pop(run.job_id, None)
        self.ended[run.job_id] = self.now
        self._event(
            JobSucceeded(
                job_id=run.job_id,
                producer="w",
                attempt=run.attempt,
                result=RESULT,
                generation_seconds=1,
                occurred_at=self.clock(),
            )
        )

    def _free(self, slot: SimSlot, run: Run) -> None:
        self.busy += self.now - run.start
        slot.running = None
        slot.token += 1
        slot.free_from = self.now
        self._maybe_start(slot)

    def _event(self, event: Any) -> None:
        self.state.on_event(event)
        self.decide()

    def beat(self) -> None:
        for slot in self.slots:
            run = slot.running
            self.state.on_heartbeat(
                WorkerHeartbeat(
                    producer="w",
                    slot=slot.slot,
                    worker_id="w",
                    boot_id=BOOT,
                    state=SlotState.BUSY if run else SlotState.IDLE,
                    job_id=run.job_id if run else None,
                    attempt=run.attempt if run else None,
                    model="mochi-1-preview",
                    dispatch_position=10**9,  # every record it was sent has been read
                    finishing=[HeldJob(job_id=j, attempt=a) for j, a in slot.finishing.items()],
                    occurred_at=self.clock(),
                )
            )

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[BenchJob]) -> dict[str, Any]:
        self.submit(jobs)
        self.beat()
        ticks = itertools.count()
        self.at(0.0, self._tick(ticks))
        while self.events and len(self.ended) < len(jobs):
            t, _, action = heapq.heappop(self.events)
            self.now = t
            action()
        return self.report(jobs)

    def _tick(self, ticks: itertools.count[int]) -> Callable[[], None]:
        def tick() -> None:
            if next(ticks) % max(1, round(1 / self.config.tick)) == 0:
                self.beat()
            self.decide()
            self.at(self.now + self.config.tick, tick)

        return tick

    def report(self, jobs: Sequence[BenchJob]) -> dict[str, Any]:
        ideal = ideal_makespan(jobs, self.config.slots, self.config.scale, self.config.costs)
        first = min(arrival for _, arrival in self.submitted.values())
        makespan = max(self.ended.values()) - first
        waits: dict[str, list[float]] = {"interactive": [], "batch": []}
        by_tenant: list[tuple[str, float]] = []
        for job_id, (job, arrival) in self.submitted.items():
            waits[job.kind.lane].append(self.first_start[job_id] - arrival)
            by_tenant.append((job.tenant, self.first_start[job_id] - arrival))
        return {
            "wait_by_tenant": tenant_waits(by_tenant),
            "jobs": len(self.ended),
            "makespan": makespan,
            "ideal": ideal,
            "utilisation": ideal / makespan,
            "interactive_p50": percentile(waits["interactive"], 50),
            "interactive_p95": percentile(waits["interactive"], 95),
            "batch_p50": percentile(waits["batch"], 50),
            "batch_p95": percentile(waits["batch"], 95),
            "preemptions": self.preemptions,
        }


def run_frames(fleet: Fleet, run: Run) -> int:
    job, _ = fleet.submitted[run.job_id]
    return job.kind.num_frames


def simulate(jobs: Sequence[BenchJob], config: SimConfig) -> dict[str, Any]:
    return Fleet(config).run(jobs)


def neighbour_table(jobs: Sequence[BenchJob], config: SimConfig) -> str:
    """Each tenant's waits with fair share, and with the same jobs in one queue (all one tenant: the
    lane's age order alone, as before tenants)."""
    one_queue = [dataclasses.replace(j, tenant="default") for j in jobs]
    owner = {j.index: j.tenant for j in jobs}
    lines = [
        "| order | tenant | jobs | wait p50 (s) | wait p95 (s) | wait max (s) | utilisation |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in (("fair share", jobs), ("one queue", one_queue)):
        fleet = Fleet(config)
        r = fleet.run(run)
        if name == "one queue":  # label each job with its real tenant again
            waits = [(owner[job.index], fleet.first_start[i] - t) for i, (job, t) in fleet.submitted.items()]
            r["wait_by_tenant"] = tenant_waits(waits)
        for tenant, w in r["wait_by_tenant"].items():
            lines.append(
                f"| {name} | {tenant} | {w['n']} | {w['p50']:.1f} | {w['p95']:.1f} | {w['max']:.1f} |"
                f" {r['utilisation']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--long-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=20240611, help="the fleet benchmark's default")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--scale", type=float, default=50.0)
    p.add_argument("--checkpoint-every", type=int, default=8)
    p.add_argument("--dispatch-delay", type=float, default=0.0)
    p.add_argument("--gap", type=float, default=0.0)
    p.add_argument("--finish", type=float, default=0.0)
    p.add_argument("--resume", type=float, default=0.0)
    p.add_argument("--no-costs", dest="costs", action="store_false", help="the denoising steps alone")
    p.add_argument("--noisy-neighbour", action="store_true", help="two tenants in the batch lane instead")
    p.add_argument("--noisy-jobs", type=int, default=120)
    p.add_argument("--quiet-jobs", type=int, default=8)
    p.add_argument("--quiet-every", type=float, default=12.0, help="seconds between the quiet tenant's jobs")
    args = p.parse_args(argv)
    base = SimConfig(
        slots=args.slots,
        scale=args.scale,
        checkpoint_every=args.checkpoint_every,
        dispatch_delay=args.dispatch_delay,
        gap=args.gap,
        finish=args.finish,
        resume=args.resume,
        costs=args.costs,
        balance_gain=BALANCE_MIN_GAIN_H100 / args.scale,
    )
    if args.noisy_neighbour:
        print(neighbour_table(noisy_neighbour(args.noisy_jobs, args.quiet_jobs, args.quiet_every), base))
        return
    print(bound_table(burst(args.jobs, args.long_share, args.seed), base))


def bound_table(jobs: Sequence[BenchJob], base: SimConfig) -> str:
    """The rules with and without balancing, with the steps alone and with every GPU cost."""
    header = ("GPU time", "rules", "utilisation", "makespan / ideal (s)", "interactive p50 / p95 (s)")
    lines = ["| " + " | ".join((*header, "batch p50 / p95 (s)", "preemptions")) + " |", "|---" * 7 + "|"]
    for costs in (False, True):
        for name, gain in (("lanes only", None), ("lanes + balance", base.balance_gain)):
            r = simulate(jobs, dataclasses.replace(base, costs=costs, balance_gain=gain))
            gpu = "steps + prompt + decode" if costs else "steps only"
            lines.append(
                f"| {gpu} | {name} | {r['utilisation']:.3f} | "
                f"{r['makespan']:.1f} / {r['ideal']:.1f} | "
                f"{r['interactive_p50']:.1f} / {r['interactive_p95']:.1f} | "
                f"{r['batch_p50']:.1f} / {r['batch_p95']:.1f} | {r['preemptions']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
