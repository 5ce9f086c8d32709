"""Idle cost: the CPU the services and the stack burn while no job runs, by the consumers' fetch wait.

Every consumer (scheduler, projector, workers, the api's) keeps a fetch open at the broker; one that
finds no record comes back after `REELSTREAM_KAFKA_FETCH_MAX_WAIT_MS` and is sent again. A short wait
keeps each hop's delay short when the system is quiet (progress reaches SSE clients sooner) and costs
fetches per second while it is idle. For each wait this starts the normal services (api, scheduler,
projector, REELSTREAM_GPU_SLOTS workers on tiny-mochi), lets them settle, and measures the CPU of each
service, Kafka and Postgres over a quiet window. Every wait is measured in the same run, one after the
other; the services come back with their defaults at the end if they were running before.

    .venv/bin/python bench/idle.py                    # waits 100 and 500 ms, 60 s each
    .venv/bin/python bench/idle.py --waits 50,100,500 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fleet_procs import children_of, cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
SERVICES = ("api", "scheduler", "projector")


def services(slots: int) -> list[str]:
    return [*SERVICES, *(f"worker-{slot}" for slot in range(slots))]


def pid_of(name: str) -> int | None:
    try:
        return int((RUN / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def cpu_by_part(names: Sequence[str]) -> dict[str, float]:
    """CPU seconds so far of each service, of Kafka, and of Postgres with all its backends."""
    out = {name: cpu_seconds(pid) if (pid := pid_of(name)) else 0.0 for name in (*names, "kafka")}
    postmaster = pid_of("postgres")
    if postmaster:
        out["postgres"] = cpu_seconds(postmaster) + sum(cpu_seconds(p) for p in children_of(postmaster))
    return out


def services_sh(action: str, env: dict[str, str]) -> None:
    lock = [sys.executable, str(ROOT / "infra" / "with_services_lock.py")]
    subprocess.run([*lock, "bash", "infra/services.sh", action], cwd=ROOT, env=env, check=True)


def measure(wait_ms: int, args: argparse.Namespace) -> dict[str, float]:
    """Percent of one core per part over a quiet window, with the services started at `wait_ms`."""
    env = {
        **os.environ,
        "REELSTREAM_KAFKA_FETCH_MAX_WAIT_MS": str(wait_ms),
        "REELSTREAM_GPU_SLOTS": str(args.slots),
    }
    names = services(args.slots)
    services_sh("start", env)
    try:
        time.sleep(args.settle)
        before, started = cpu_by_part(names), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = cpu_by_part(names), time.monotonic() - started
    finally:
        services_sh("stop", env)
    return {part: 100 * (after[part] - before.get(part, 0.0)) / elapsed for part in after}


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--waits", type=lambda s: [int(w) for w in s.split(",")], default=[100, 500])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measured quiet window")
    p.add_argument("--settle", type=float, default=20.0, help="wait after the start before measuring")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    was_running = pid_of("api") is not None and Path(f"/proc/{pid_of('api')}").exists()
    services_sh("stop", dict(os.environ))
    try:
        results = {wait: measure(wait, args) for wait in args.waits}
    finally:
        if was_running:
            services_sh("start", {k: v for k, v in os.environ.items() if not k.startswith("REELSTREAM_")})
    parts = list(next(iter(results.values())))
    print("| % of one core, idle | " + " | ".join(f"fetch wait {w} ms" for w in results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for part in [*parts, "all"]:
        cells = [sum(r.values()) if part == "all" else r[part] for r in results.values()]
        print(f"| {part} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
