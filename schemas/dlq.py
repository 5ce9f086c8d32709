"""The dead-letter record format of `reelstream.dlq`.

A consumer that cannot process a record (not JSON, unknown type, schema mismatch) must not drop it, nor stop
on it forever. It produces the record to the DLQ and moves on:

- key: the original key, unchanged;
- value: the original bytes, unchanged (they may not be JSON at all);
- headers: the original headers (the CloudEvents `ce_*` ones and `content-type` included), followed by the
  `dlq_*` headers below. Header values are UTF-8 text; partition and offset are decimal.

Keeping the record byte for byte means a fixed consumer can replay it to its source topic as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DLQ_REASON: Final = "dlq_reason"
DLQ_SOURCE_TOPIC: Final = "dlq_source_topic"
DLQ_SOURCE_PARTITION: Final = "dlq_source_partition"
DLQ_SOURCE_OFFSET: Final = "dlq_source_offset"
DLQ_CONSUMER: Final = "dlq_consumer"
DLQ_HEADER_NAMES: Final = (
    DLQ_REASON,
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    DLQ_CONSUMER,
)

# A reason is meant for a person; an unbounded one (a whole traceback) could push the record past the
# broker's message size limit, and then the poison record could not be parked at all.
MAX_REASON_CHARS: Final = 2000


class NotADeadLetter(ValueError):
    """Headers that lack one of the `dlq_*` headers, or carry an unreadable partition or offset."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Where a poison record came from and why it was parked; `headers()` gives its DLQ record headers."""

    original_headers: tuple[tuple[str, bytes], ...]
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    consumer: str

    def headers(self) -> list[tuple[str, bytes]]:
        """The original headers, then the `dlq_*` ones.

        `dlq_*` headers already present (a record dead-lettered again after a replay) are replaced, so each
        name appears once and describes the latest failure.
        """
        reason = self.reason
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        ours = (
            (DLQ_REASON, reason),
            (DLQ_SOURCE_TOPIC, self.source_topic),
            (DLQ_SOURCE_PARTITION, str(self.source_partition)),
            (DLQ_SOURCE_OFFSET, str(self.source_offset)),
            (DLQ_CONSUMER, self.consumer),
        )
        kept = [(k, v) for k, v in self.original_headers if k not in DLQ_HEADER_NAMES]
        return kept + [(k, v.encode()) for k, v in ours]

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
        """Read a DLQ record's headers back (to inspect or replay it). Raises `NotADeadLetter`."""
        found: dict[str, str] = {}
        for key, value in headers:
            if key in DLQ_HEADER_NAMES:
                found[key] = value.decode(errors="replace")
        missing = [name for name in DLQ_HEADER_NAMES if name not in found]
        if missing:
            raise NotADeadLetter(f"missing dead-letter headers: {', '.join(missing)}")
        try:
            partition = int(found[DLQ_SOURCE_PARTITION])
            offset = int(found[DLQ_SOURCE_OFFSET])
        except ValueError as e:
            raise NotADeadLetter(f"partition or offset is not a decimal integer: {e}") from e
        return cls(
            original_headers=tuple((k, v) for k, v in headers if k not in DLQ_HEADER_NAMES),
            reason=found[DLQ_REASON],
            source_topic=found[DLQ_SOURCE_TOPIC],
            source_partition=partition,
            source_offset=offset,
            consumer=found[DLQ_CONSUMER],
        )
