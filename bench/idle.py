"""Idle cost: the CPU the services and the stack burn while no job runs, by the consumers' fetch wait.

Every consumer (scheduler, projector, workers, the api's) keeps a fetch open at the broker; one that
finds no record comes back after `REELSTREAM_KAFKA_FETCH_MAX_WAIT_MS` and is sent again. A short wait
keeps each hop's delay short when the system is quiet (progress reaches SSE clients sooner) and costs
fetches per second while it is idle. For each wait this starts the normal services (api, scheduler,
projector, REELSTREAM_GPU_SLOTS workers on tiny-mochi), lets them settle, and measures the CPU of each
service, Kafka and Postgres over a quiet window. Every wait is measured in the same run, one after the
other; the services come back with their defaults at the end if they were running before.

Then the hop itself, for each wait: a consumer made as the services make theirs (`make_consumer`) reads
a scratch topic of 6 partitions, first idle between records that come one at a time (a user watching
a lone job), then busy 30 ms with each batch while records arrive at 30 a second on any partition;
each record's delay is its send → the consumer's read. The services' own hops under load are the
control-plane benchmark's overhead phase (`REELSTREAM_KAFKA_FETCH_MAX_WAIT_MS` set for the run).

    .venv/bin/python bench/idle.py                    # waits 100 and 500 ms, 60 s each
    .venv/bin/python bench/idle.py --waits 50,100,500 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fleet_procs import children_of, cpu_seconds
from fleet_stats import percentile

from services.common.kafka import make_consumer, make_producer
from services.common.settings import CommonSettings

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


async def hop_delays(wait_ms: int, records: int, busy: bool) -> list[float]:
    """Seconds from each record's send to its read by a consumer with fetch wait `wait_ms`."""
    settings = CommonSettings(kafka_fetch_max_wait_ms=wait_ms)
    topic = f"bench.idle.hop-{wait_ms}-{os.getpid()}-{int(busy)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
        await asyncio.sleep(1)  # the new partitions' leaders are elected
        producer = make_producer(settings, "bench-idle-hop")
        consumer = make_consumer(
            settings, group_id=None, client_id="bench-idle-hop", topics=[topic], auto_offset_reset="latest"
        )
        await producer.start()
        await consumer.start()
        delays: list[float] = []

        async def read() -> None:
            while len(delays) < records:
                batch = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                delays.extend(now - float(m.value) for msgs in batch.values() for m in msgs)
                if batch and busy:
                    await asyncio.sleep(0.03)  # the batch's work, while records keep coming

        try:
            await asyncio.sleep(2)  # the consumer's first fetches are out
            reader = asyncio.create_task(read())
            for _ in range(records):
                await asyncio.sleep(random.expovariate(30) if busy else random.uniform(0.2, 0.6))
                sent = str(time.time()).encode()
                await producer.send_and_wait(topic, value=sent, key=None, partition=random.randrange(6))
            await asyncio.wait_for(reader, 20)
        finally:
            await consumer.stop()
            await producer.stop()
        return delays
    finally:
        await admin.delete_topics([topic])
        await admin.close()


def percentiles_ms(delays: Sequence[float]) -> str:
    return f"{percentile(delays, 50) * 1000:.1f} / {percentile(delays, 99) * 1000:.1f}"


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--waits", type=lambda s: [int(w) for w in s.split(",")], default=[100, 500])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measured quiet window")
    p.add_argument("--settle", type=float, default=20.0, help="wait after the start before measuring")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--records", type=int, default=100, help="records per hop measurement")
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
    kinds = ("quiet", "busy")
    hops = {
        wait: {k: asyncio.run(hop_delays(wait, args.records, k == "busy")) for k in kinds}
        for wait in args.waits
    }
    for kind in kinds:
        delays = [percentiles_ms(by_kind[kind]) for by_kind in hops.values()]
        print(f"| hop delay p50 / p99 (ms), consumer {kind} | " + " | ".join(delays) + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_percent": results, "hop_delays_s": hops}, indent=2))
    return results


if __name__ == "__main__":
    main()
