"""Create reelstream's Kafka topics (schemas/topics.py) with their partition counts and configs.

Idempotent: missing topics are created, existing ones get their configs set again (so a config the
contract added, like `message.timestamp.type=LogAppendTime` on reelstream.jobs.requested, reaches a stack
created before it) and, when the topic has fewer partitions than wanted (more GPU slots), more
partitions. Partitions are never removed: Kafka cannot do that, so a topic with too many is reported and
left alone.

Locally the replication factor and min.insync.replicas are 1/1 (one broker); a production cluster of
three or more brokers runs this with REELSTREAM_TOPIC_REPLICATION_FACTOR=3 and
REELSTREAM_TOPIC_MIN_INSYNC_REPLICAS=2, so an acks=all write survives the loss of one broker.

    uv run python infra/create_topics.py [--wait-timeout SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from pydantic import Field

from schemas.topics import DLQ, JOBS_EVENTS, JOBS_REQUESTED, TopicSpec, internal_topic_specs, topic_specs
from services.common.settings import CommonSettings

TOPIC_ALREADY_EXISTS = 36
# Kafka keeps these forever: they are the system of record the projector replays from the start,
# and the dead-letter topic must never lose a poison message before someone has looked at it.
KEEP_FOREVER = frozenset({JOBS_REQUESTED, JOBS_EVENTS, DLQ})


class TopicSettings(CommonSettings):
    """Layout of the contract topics; REELSTREAM_TOPIC_* in the environment overrides each field."""

    topic_partitions: int = Field(default=6, ge=1, description="Partitions of every keyed topic.")
    topic_replication_factor: int = Field(default=1, ge=1, description="1 locally, 3 in production.")
    topic_min_insync_replicas: int = Field(default=1, ge=1, description="1 locally, 2 in production.")
    topic_retention_ms: int = Field(
        default=7 * 24 * 3600 * 1000, ge=-1, description="Retention of the operational topics."
    )


class TopicError(RuntimeError):
    """A topic could not be created or configured."""


def partitions_for(spec: TopicSpec, settings: TopicSettings) -> int:
    return settings.gpu_slots if spec.partitions is None else spec.partitions


def configs_for(spec: TopicSpec, settings: TopicSettings) -> dict[str, str]:
    """The topic-level configs we own; anything not listed keeps the broker default."""
    configs = {"min.insync.replicas": str(settings.topic_min_insync_replicas), **spec.configs}
    if spec.compacted:
        # Only the latest record per key matters (a slot's heartbeat, the scheduler's snapshot); small
        # segments let compaction drop the older ones soon.
        configs |= {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"}
    elif spec.name in KEEP_FOREVER:
        configs |= {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    else:
        configs |= {"cleanup.policy": "delete", "retention.ms": str(settings.topic_retention_ms)}
    return configs


async def wait_for_broker(admin: AIOKafkaAdminClient, bootstrap: str, timeout_s: float) -> None:
    """Returns once the cluster answers a metadata request and names a controller."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            cluster = await admin.describe_cluster()
            if cluster.get("brokers") and cluster.get("controller_id", -1) >= 0:
                return
        except (KafkaError, OSError) as e:
            last_error = e
        await asyncio.sleep(0.5)
    raise TopicError(f"kafka at {bootstrap} did not answer within {timeout_s:.0f}s: {last_error!r}")


async def start_admin(settings: TopicSettings, timeout_s: float) -> AIOKafkaAdminClient:
    """An admin client connected to the cluster; retries while the broker is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="reelstream-create-topics",
            request_timeout_ms=settings.kafka_request_timeout_ms,
        )
        try:
            await admin.start()
        except (KafkaError, OSError) as e:
            await admin.close()
            if time.monotonic() >= deadline:
                raise TopicError(f"kafka at {settings.kafka_bootstrap} is not reachable: {e!r}") from e
            await asyncio.sleep(0.5)
            continue
        await wait_for_broker(admin, settings.kafka_bootstrap, max(1.0, deadline - time.monotonic()))
        return admin


def check_errors(action: str, errors: Sequence[tuple[str, int, str | None]], ok: set[int]) -> None:
    failed = [(name, code, msg) for name, code, msg in errors if code and code not in ok]
    if failed:
        details = "; ".join(
            f"{name}: {for_code(code).__name__} {msg or ''}".strip() for name, code, msg in failed
        )
        raise TopicError(f"could not {action}: {details}")


async def existing_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {
        t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names) if t["error_code"] == 0
    }


async def create_missing(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], existing: dict[str, int], settings: TopicSettings
) -> None:
    new = [
        NewTopic(
            name=spec.name,
            num_partitions=partitions_for(spec, settings),
            replication_factor=settings.topic_replication_factor,
            topic_configs=configs_for(spec, settings),
        )
        for spec in specs
        if spec.name not in existing
    ]
    if not new:
        return
    response = await admin.create_topics(new)
    # A concurrent run may have created one in between; that is the outcome we want.
    check_errors("create topics", response.topic_errors, ok={TOPIC_ALREADY_EXISTS})
    for topic in new:
        print(f"created {topic.name} ({topic.num_partitions} partitions)")


async def grow_partitions(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], existing: dict[str, int], settings: TopicSettings
) -> None:
    grow: dict[str, NewPartitions] = {}
    for spec in specs:
        have, want = existing.get(spec.name), partitions_for(spec, settings)
        if have is None or have == want:
            continue
        if have < want:
            grow[spec.name] = NewPartitions(total_count=want)
            print(f"growing {spec.name} from {have} to {want} partitions")
        else:
            warning = f"{spec.name} has {have} partitions, more than {want}; Kafka cannot shrink a topic"
            print(f"warning: {warning}", file=sys.stderr)
    if grow:
        await admin.create_partitions(grow)


async def apply_configs(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], settings: TopicSettings
) -> None:
    """Sets our configs on every topic, so a changed setting reaches topics that already exist."""
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=configs_for(spec, settings))
        for spec in specs
    ]
    for response in await admin.alter_configs(resources):
        check_errors(
            "set topic configs",
            [(name, code, msg) for code, msg, _type, name in response.resources],
            ok=set(),
        )


async def ensure_topics(settings: TopicSettings, wait_timeout_s: float) -> None:
    specs = (*topic_specs(default_partitions=settings.topic_partitions), *internal_topic_specs())
    admin = await start_admin(settings, wait_timeout_s)
    try:
        existing = await existing_partitions(admin, [spec.name for spec in specs])
        await create_missing(admin, specs, existing, settings)
        await grow_partitions(admin, specs, existing, settings)
        await apply_configs(admin, specs, settings)
        names = [spec.name for spec in specs]
        # A new topic shows in the metadata only once its partitions have leaders: ask again for a while.
        deadline = time.monotonic() + wait_timeout_s
        while True:
            final = await existing_partitions(admin, names)
            missing = [name for name in names if name not in final]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    if missing:
        raise TopicError(f"topics still missing after creation: {', '.join(missing)}")
    print("topics: " + ", ".join(f"{name}={count}" for name, count in sorted(final.items())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait for the broker")
    args = parser.parse_args(argv)
    try:
        asyncio.run(ensure_topics(TopicSettings(), args.wait_timeout))
    except (TopicError, KafkaError) as e:
        print(f"kafka: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
