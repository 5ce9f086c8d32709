"""The fleet benchmark's processes: the scheduler, the slots, api/projector and the baselines' workers.

Each runs as its own process with its log in .run/bench-fleet/logs/<name>.log. Only processes started
here are ever signalled, by their own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from bench.fleet_settings import environment

PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = {
    "fleet-": "fleet",
    "naive-": "naive",
    "celery-": "celery",
    "redis": "redis",
    "scheduler": "scheduler",
    "api": "api",
    "projector": "projector",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS


def settle(idle_below: float = 1.0, window_s: float = 2.0, limit_s: float = 60.0) -> tuple[float, float]:
    """Wait until the machine is quiet (fewer than `idle_below` cores busy over `window_s`), at most
    `limit_s`: a phase must not start while process start-ups or the last phase still load it.
    Returns (seconds waited, cores busy in the last window)."""
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        busy = (machine_busy_seconds() - before) / window_s
        waited = time.monotonic() - started
        if busy < idle_below or waited >= limit_s:
            return waited, busy


def group_settled(owned: list[list[list[Any]]], slots: int, topics: int) -> bool:
    """Every member owns one partition of each topic, and no partition is owned twice."""
    if len(owned) != slots or any(
        len({t for t, _ in parts}) != topics or len(parts) != topics for parts in owned
    ):
        return False
    every = [tuple(p) for parts in owned for p in parts]
    return len(set(every)) == slots * topics


class Procs:
    def __init__(self, root: Path, run_dir: Path, infra_root: Path | None = None) -> None:
        self.root = root
        self.infra_root = infra_root or root  # whose .run/ holds the local stack's pids
        self.logs = run_dir / "logs"
        self.state_dir = run_dir / "naive"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.specs: dict[str, tuple[list[str], dict[str, str], str | None]] = {}
        self.offsets: dict[str, int] = {}
        self._files: list[IO[bytes]] = []

    @staticmethod
    def run_script(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
        return subprocess.run(argv, cwd=cwd, env=env, check=False).returncode

    # ---- starting -------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str], ready: str | None) -> None:
        """Start `argv`; it is ready once its log shows `ready` (None: no marker to wait for)."""
        self.specs[name] = (argv, env, ready)
        path = self.logs / f"{name}.log"
        self.offsets[name] = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115 - stays open for the process's lifetime
        self._files.append(log)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **env}
        self.procs[name] = subprocess.Popen(
            argv, cwd=self.root, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def restart(self, name: str) -> None:
        argv, env, ready = self.specs[name]
        self.start(name, argv, env, ready)

    def start_scheduler(self, args: argparse.Namespace) -> None:
        """With every scheduling setting given (`args.used`: production's unless told otherwise)."""
        env = {"REELSTREAM_GPU_SLOTS": str(args.slots), **environment(args.used, "scheduler")}
        self.start("scheduler", [PY, "-m", "services.scheduler.main"], env, "rebuilt state")

    def _slot_argv(self, module: str, args: argparse.Namespace) -> list[str]:
        argv = [PY, "-m", f"bench.{module}", "--slots", str(args.slots), "--scale", str(args.scale)]
        argv += ["--step-pacing", args.used["step_pacing"].value]
        return argv if args.used["costs"].value else [*argv, "--no-costs"]

    def _slot_env(self, args: argparse.Namespace) -> dict[str, str]:
        return {"REELSTREAM_GPU_SLOTS": str(args.slots), **environment(args.used, "worker")}

    def start_workers(self, args: argparse.Namespace) -> None:
        for slot in range(args.slots):
            argv = [*self._slot_argv("fleet_worker", args), "--slot", str(slot)]
            self.start(f"fleet-{slot}", argv, self._slot_env(args), "ready with model")

    def start_api_and_projector(self, args: argparse.Namespace) -> None:
        """At `--control-plane-nice`: in a deployment they run on other nodes than the GPU workers,
        here they share two cores with them (nice execs the service: the pid stays the service's)."""
        env = {"REELSTREAM_GPU_SLOTS": str(args.slots)}
        nice = ["nice", "-n", str(args.control_plane_nice)] if args.control_plane_nice else []
        self.start("api", [*nice, PY, "-m", "services.api.main"], env, "Application startup complete")
        self.start("projector", [*nice, PY, "-m", "services.projector.main"], env, "assigned partitions")

    def start_naive(self, args: argparse.Namespace, topics: list[str], events: str, group: str) -> None:
        """The Kafka baseline's workers: one consumer group on `topics`, the first served first."""
        for index in range(args.slots):
            (self.state_dir / f"naive-{index}.json").unlink(missing_ok=True)
            argv = [*self._slot_argv("naive_worker", args), "--index", str(index)]
            for topic in topics:
                argv += ["--topic", topic]
            argv += ["--events-topic", events, "--group", group, "--state-dir", str(self.state_dir)]
            self.start(f"naive-{index}", argv, self._slot_env(args), None)

    # ---- waiting --------------------------------------------------------------------------------
    def _logged(self, name: str, text: str) -> bool:
        with open(self.logs / f"{name}.log", "rb") as f:
            f.seek(self.offsets[name])
            return text.encode() in f.read()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        pending = {n for n, (_, _, ready) in self.specs.items() if ready is not None}
        while pending:
            for name in list(pending):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.logs / name}.log")
                if self._logged(name, self.specs[name][2] or ""):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(sorted(pending))}")
            time.sleep(0.5)

    def wait_group_settled(self, slots: int, topics: int, timeout: float = 180) -> None:
        """Until each baseline worker owns exactly one partition of each requests topic."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owned = []
            for index in range(slots):
                path = self.state_dir / f"naive-{index}.json"
                owned.append(json.loads(path.read_text() or "[]") if path.exists() else [])
            if group_settled(owned, slots, topics):
                return
            time.sleep(0.5)
        raise RuntimeError("the baseline's consumer group did not settle")

    # ---- stopping -------------------------------------------------------------------------------
    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def _terminate(self, names: list[str], timeout: float = 30) -> None:
        running = [self.procs[n] for n in names if self.procs[n].poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_matching(self, prefix: str) -> None:
        self._terminate([n for n in self.procs if n.startswith(prefix)])

    def stop_all(self) -> None:
        # Workers first, while the scheduler still listens; api and projector last.
        order = ("fleet-", "naive-", "celery-", "redis", "scheduler", "api", "projector")
        for prefix in order:
            self.stop_matching(prefix)
        for f in self._files:
            f.close()

    def _infra_pid(self, name: str) -> int | None:
        try:
            return int((self.infra_root / ".run" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far by group: our processes, the stack's (read only), the whole machine."""
        out: dict[str, float] = {"machine": machine_busy_seconds()}
        for name, proc in self.procs.items():
            group = next(g for prefix, g in GROUPS.items() if name.startswith(prefix))
            out[group] = out.get(group, 0.0) + cpu_seconds(proc.pid)
        for name in ("kafka", "s3", "postgres"):
            if (pid := self._infra_pid(name)) is not None:
                pids = [pid, *children_of(pid)] if name == "postgres" else [pid]
                out[name] = sum(cpu_seconds(p) for p in pids)
        return out

    @staticmethod
    def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds used between two snapshots; `other` is the rest of the machine (the
        benchmark's own process, other users)."""
        delta = {k: max(0.0, after.get(k, 0.0) - v) for k, v in before.items()}
        delta["other"] = max(0.0, delta["machine"] - sum(v for k, v in delta.items() if k != "machine"))
        return delta

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each live process, in MiB."""
        out = {}
        for name, proc in self.procs.items():
            with open(f"/proc/{proc.pid}/status") as f:
                line = next(ln for ln in f if ln.startswith("VmRSS:"))
            out[name] = int(line.split()[1]) / 1024
        return out
