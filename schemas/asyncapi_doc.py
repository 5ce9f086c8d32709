"""The AsyncAPI 3.0 document: every topic of `topic_specs()` as a channel, its messages and who uses it.

Built as plain data by `build()`; `schemas.export` writes it to `schemas/asyncapi.yaml`. Message payloads
point at the exported JSON Schema files, so the document never restates a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from schemas.dlq import (
    DLQ_CONSUMER,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
)
from schemas.envelope import CONTENT_TYPE, SPEC_VERSION
from schemas.events import EVENT_CLASSES, EventType
from schemas.topics import (
    DLQ,
    JOBS_CONTROL,
    JOBS_DISPATCH,
    JOBS_EVENTS,
    JOBS_REQUESTED,
    PREFIX,
    WORKERS_HEARTBEAT,
    TopicSpec,
    topic_specs,
)

ASYNCAPI_VERSION: Final = "3.0.0"
DOCUMENT_VERSION: Final = "1.0.0"
KAFKA_BINDING_VERSION: Final = "0.5.0"
HEARTBEAT: Final = "worker.heartbeat"
DEAD_LETTER: Final = "dead_letter"

SERVICES: Final = {
    "api": "Accepts jobs over REST and publishes them; serves job state from Postgres.",
    "scheduler": "Owns the queue: dispatches each job to exactly one idle GPU slot.",
    "worker": "One process per GPU slot: runs the pipeline and reports every step of the job.",
    "projector": "Folds the topics into the Postgres read model, idempotently.",
    "operators": "People and tools that inspect the dead-letter topic and replay fixed records.",
}

_ET = EventType
_SCHEDULER_EVENTS: Final = (_ET.DISPATCHED, _ET.RETRYING, _ET.FAILED, _ET.CANCELLED)
_WORKER_EVENTS: Final = (
    _ET.STARTED,
    _ET.PROGRESS,
    _ET.PREVIEW,
    _ET.CHECKPOINTED,
    _ET.PREEMPTED,
    _ET.SUCCEEDED,
    _ET.FAILED,
    _ET.CANCELLED,
)


def topic_messages() -> dict[str, tuple[str, ...]]:
    """Message names carried by each topic. A new event type lands on `jobs.events` by default."""
    on_other_topics = {_ET.REQUESTED, _ET.CANCEL_REQUESTED, _ET.PREEMPT_REQUESTED}
    return {
        JOBS_REQUESTED: (_ET.REQUESTED.value,),
        JOBS_DISPATCH: (_ET.DISPATCHED.value,),
        JOBS_EVENTS: tuple(t.value for t in EVENT_CLASSES if t not in on_other_topics),
        JOBS_CONTROL: (_ET.CANCEL_REQUESTED.value, _ET.PREEMPT_REQUESTED.value, _ET.RETRYING.value),
        WORKERS_HEARTBEAT: (HEARTBEAT,),
        DLQ: (DEAD_LETTER,),
    }


SUMMARIES: Final[dict[str, str]] = {
    _ET.REQUESTED: "A job was accepted: the resolved request, tenant and priority.",
    _ET.DISPATCHED: "The scheduler assigned the job (this attempt) to a GPU slot.",
    _ET.STARTED: "A worker took the job and began loading.",
    _ET.PROGRESS: "Phase and 0..1 progress; step and total_steps while denoising. Droppable.",
    _ET.CHECKPOINTED: "Denoising latents were saved; a retry resumes from here.",
    _ET.PREVIEW: "A low-resolution JPEG of the latents after a step (no VAE), at preview_key. Droppable.",
    _ET.SUCCEEDED: "Terminal: the video, poster, thumbnail and spritesheet are in S3.",
    _ET.FAILED: "Terminal: the job failed, with an error code.",
    _ET.CANCEL_REQUESTED: "A client asked to cancel the job.",
    _ET.CANCELLED: "Terminal: the job was cancelled.",
    _ET.RETRYING: "The attempt was lost (worker crash); the job goes back to the queue.",
    _ET.PREEMPT_REQUESTED: "The scheduler preempts the job: its slot stops it with a checkpoint at at_step.",
    _ET.PREEMPTED: "The slot stopped the job after a durable checkpoint; it waits again and resumes there.",
    _ET.DELETED: "Tombstone: the job and its S3 objects are deleted; forget it. Nothing of the job follows.",
    HEARTBEAT: "Slot liveness: state, loaded model, current job, seconds per step.",
}


@dataclass(frozen=True, slots=True)
class PayloadSchema:
    """Where a message's payload schema was exported: file name under `json/`, its `$id`, its title."""

    file: str
    schema_id: str
    title: str


@dataclass(frozen=True, slots=True)
class Operation:
    service: str
    action: Literal["send", "receive"]
    topic: str
    description: str
    messages: tuple[str, ...] | None = None  # None: every message of the channel


def _dead_letter_ops() -> tuple[Operation, ...]:
    why = "Records it cannot process (not JSON, unknown type, schema mismatch), instead of dropping them."
    return tuple(Operation(s, "send", DLQ, why) for s in ("scheduler", "worker", "projector"))


OPERATIONS: Final = (
    Operation(
        "api",
        "send",
        JOBS_REQUESTED,
        "A submitted job; the 202 is sent only after acks=all, for an append time not after accept_by.",
    ),
    Operation("api", "send", JOBS_CONTROL, "POST /v1/jobs/{id}/cancel; DELETE of a job not yet ended."),
    Operation(
        "api",
        "send",
        JOBS_EVENTS,
        "DELETE /v1/jobs/{id} (and /v1/videos/{id}): the tombstone, once the job's S3 objects are gone.",
        (_ET.DELETED,),
    ),
    Operation(
        "scheduler",
        "receive",
        JOBS_REQUESTED,
        "New jobs enter their priority lane; a record appended after its accept_by is not a job.",
    ),
    Operation("scheduler", "receive", JOBS_EVENTS, "Frees slots on terminal events; fences stale attempts."),
    Operation("scheduler", "receive", JOBS_CONTROL, "Cancels queued jobs before they are dispatched."),
    Operation(
        "scheduler", "receive", WORKERS_HEARTBEAT, "Which slots are alive, idle, and with which model."
    ),
    Operation("scheduler", "send", JOBS_DISPATCH, "To the partition numbered as the chosen idle slot."),
    Operation(
        "scheduler",
        "send",
        JOBS_CONTROL,
        "Preempt requests for batch jobs, to balance the fleet; a copy of each job.retrying, so that a"
        " worker still running the given-up attempt stops it.",
        (_ET.PREEMPT_REQUESTED, _ET.RETRYING),
    ),
    Operation(
        "scheduler",
        "send",
        JOBS_EVENTS,
        "Dispatches, retries, give-ups, cancels of queued jobs.",
        _SCHEDULER_EVENTS,
    ),
    Operation(
        "worker",
        "receive",
        JOBS_DISPATCH,
        "Only its own partition (partition = slot id), by manual assignment.",
    ),
    Operation(
        "worker",
        "receive",
        JOBS_CONTROL,
        "Every worker reads every cancel request, preempt request and job.retrying, and acts on its own"
        " jobs'.",
    ),
    Operation("worker", "send", JOBS_EVENTS, "The lifecycle of the job it runs, in order.", _WORKER_EVENTS),
    Operation("worker", "send", WORKERS_HEARTBEAT, "Every few seconds, keyed by slot id."),
    Operation(
        "projector",
        "receive",
        JOBS_REQUESTED,
        "Creates the job row; dead-letters a record appended after its accept_by (not a job).",
    ),
    Operation(
        "projector",
        "receive",
        JOBS_EVENTS,
        "Updates the job row and appends to its event history; a tombstone removes the row and history.",
    ),
    Operation(
        "projector",
        "send",
        JOBS_EVENTS,
        "The retention sweeper's tombstones for jobs that ended more than REELSTREAM_RETENTION_DAYS ago.",
        (_ET.DELETED,),
    ),
    *_dead_letter_ops(),
    Operation("operators", "receive", DLQ, "Inspect dead letters; replay them to their source topic."),
)


def channel_id(topic: str) -> str:
    return topic.removeprefix(f"{PREFIX}.")


def operation_id(op: Operation) -> str:
    return f"{op.service}.{op.action}.{channel_id(op.topic)}"


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(parts)}


def _cloudevent_properties() -> dict[str, Any]:
    return {
        "ce_specversion": {"type": "string", "const": SPEC_VERSION},
        "ce_id": {"type": "string", "format": "uuid", "description": "The payload's event_id."},
        "ce_source": {"type": "string", "pattern": f"^/{PREFIX}/", "description": "/reelstream/<producer>."},
        "ce_type": {
            "type": "string",
            "pattern": r"^io\.reelstream\.",
            "description": "io.reelstream.<type>.",
        },
        "ce_subject": {"type": "string", "description": "The job id; `slot-<n>` for heartbeats."},
        "ce_time": {"type": "string", "format": "date-time", "description": "The payload's occurred_at."},
        "ce_dataschema": {
            "type": "string",
            "pattern": "^urn:reelstream:schema:",
            "description": "The `$id` of the payload's JSON Schema: urn:reelstream:schema:<type>:v<version>.",
        },
        "content-type": {"type": "string", "const": CONTENT_TYPE},
    }


def _dlq_properties() -> dict[str, Any]:
    decimal = {"type": "string", "pattern": "^[0-9]+$"}
    return {
        DLQ_REASON: {"type": "string", "description": "Why the consumer could not process the record."},
        DLQ_SOURCE_TOPIC: {"type": "string", "description": "The topic the record was read from."},
        DLQ_SOURCE_PARTITION: {**decimal, "description": "Its partition, in decimal."},
        DLQ_SOURCE_OFFSET: {**decimal, "description": "Its offset, in decimal."},
        DLQ_CONSUMER: {"type": "string", "description": "The consumer (service and group) that parked it."},
    }


def _copied(names: Mapping[str, Any]) -> dict[str, Any]:
    # A poison record's headers may be anything, so the dead letter only promises they are copied.
    return {name: {"type": "string", "description": "Copied from the original record."} for name in names}


def _component_schemas() -> dict[str, Any]:
    ce = _cloudevent_properties()
    return {
        "CloudEventHeaders": {
            "type": "object",
            "description": (
                "CloudEvents 1.0 Kafka protocol binding, binary content mode: the attributes travel as"
                " UTF-8 `ce_*` record headers; the record value is the event itself as JSON."
            ),
            "required": list(ce),
            "properties": ce,
        },
        "DeadLetterHeaders": {
            "type": "object",
            "description": (
                "The original record's headers, unchanged (the `ce_*` ones when it had them), followed by"
                " the `dlq_*` headers. See schemas/dlq.py."
            ),
            "required": list(_dlq_properties()),
            "properties": {**_copied(ce), **_dlq_properties()},
        },
    }


def _kafka_key(spec: TopicSpec) -> dict[str, Any]:
    key: dict[str, Any]
    if spec.key == "job id":
        key = {"type": "string", "format": "uuid", "description": "The job id, as UTF-8 text."}
    elif spec.key == "slot id":
        key = {"type": "string", "pattern": "^[0-9]+$", "description": "The slot id, in decimal."}
    else:
        key = {"type": "string", "format": "binary", "description": f"The {spec.key}, byte for byte."}
    return {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}


def _event_message(name: str, spec: TopicSpec, payload: PayloadSchema) -> dict[str, Any]:
    return {
        "name": name,
        "title": payload.title,
        "summary": SUMMARIES.get(name, name),
        "contentType": CONTENT_TYPE,
        "headers": {
            "allOf": [
                _ref("components", "schemas", "CloudEventHeaders"),
                {
                    "properties": {
                        "ce_type": {"const": f"io.reelstream.{name}"},
                        "ce_dataschema": {"const": payload.schema_id},
                    }
                },
            ]
        },
        "payload": {"$ref": f"./json/{payload.file}"},
        **({"correlationId": {"location": "$message.payload#/job_id"}} if spec.key == "job id" else {}),
        "bindings": _kafka_key(spec),
    }


def _dead_letter_message(spec: TopicSpec) -> dict[str, Any]:
    return {
        "name": DEAD_LETTER,
        "title": "DeadLetter",
        "summary": "A record some consumer could not process, parked with the reason.",
        "contentType": "application/octet-stream",
        "headers": _ref("components", "schemas", "DeadLetterHeaders"),
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The original record value, byte for byte (it may not be JSON at all).",
        },
        "bindings": _kafka_key(spec),
    }


def _channel(spec: TopicSpec) -> dict[str, Any]:
    kafka: dict[str, Any] = {"topic": spec.name}
    partitions = "one per GPU slot"
    if spec.partitions is not None:
        kafka["partitions"] = spec.partitions
        partitions = f"{spec.partitions} by default"
    kafka["topicConfiguration"] = {
        "cleanup.policy": ["compact" if spec.compacted else "delete"],
        **dict(sorted(spec.configs.items())),
    }
    kafka["bindingVersion"] = KAFKA_BINDING_VERSION
    names = topic_messages()[spec.name]
    return {
        "address": spec.name,
        "title": spec.name,
        "description": f"{spec.description} Key: {spec.key}. Partitions: {partitions}.",
        "messages": {n: _ref("components", "messages", n) for n in names},
        "bindings": {"kafka": kafka},
    }


def _operation(op: Operation) -> dict[str, Any]:
    cid = channel_id(op.topic)
    names = op.messages if op.messages is not None else topic_messages()[op.topic]
    return {
        "action": op.action,
        "channel": _ref("channels", cid),
        "summary": f"{op.service} {op.action}s {op.topic}",
        "description": op.description,
        "tags": [{"name": op.service}],
        "messages": [_ref("channels", cid, "messages", n) for n in names],
    }


def build(payloads: Mapping[str, PayloadSchema], default_partitions: int = 6) -> dict[str, Any]:
    """The whole document. `payloads` maps a message name to its exported JSON Schema."""
    specs = topic_specs(default_partitions)
    messages: dict[str, Any] = {}
    for spec in specs:
        for name in topic_messages()[spec.name]:
            if name == DEAD_LETTER:
                messages[name] = _dead_letter_message(spec)
            elif name not in messages:
                messages[name] = _event_message(name, spec, payloads[name])
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "reelstream events",
            "version": DOCUMENT_VERSION,
            "description": (
                "The Kafka contract of reelstream, an asynchronous text-to-video service. Every record"
                " follows the CloudEvents 1.0 Kafka binding in binary mode. Changes are additive; a breaking"
                " change gets a new schema version and an upcaster (see schemas/README.md)."
            ),
            "tags": [{"name": name, "description": text} for name, text in SERVICES.items()],
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local stack's single KRaft broker.",
            }
        },
        "channels": {channel_id(spec.name): _channel(spec) for spec in specs},
        "operations": {operation_id(op): _operation(op) for op in OPERATIONS},
        "components": {"messages": messages, "schemas": _component_schemas()},
    }
