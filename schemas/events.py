"""JSON side types: ``SessionEvent``, ``DeadLetter``, ``LatencyRecord``, ``Alert``.

Example::

    >>> d = DeadLetter.from_raw(b"\\xff", reason="not Avro", stage="segmenter",
    ...                         source_topic="streamscribe.audio", partition=0, offset=7)
    >>> DeadLetter.decode(d.encode()).raw
    b'\\xff'
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Final

from streamscribe.core.errors import StreamscribeError
from streamscribe.schemas.json_codec import JsonRecord

EVENT_SESSION_START: Final = "session_start"
EVENT_SPEECH_START: Final = "speech_start"
EVENT_SPEECH_END: Final = "speech_end"
EVENT_GAP: Final = "gap"
EVENT_SESSION_END: Final = "session_end"
EVENT_IDLE_TIMEOUT: Final = "idle_timeout"
SESSION_EVENT_KINDS: Final = (
    EVENT_SESSION_START,
    EVENT_SPEECH_START,
    EVENT_SPEECH_END,
    EVENT_GAP,
    EVENT_SESSION_END,
    EVENT_IDLE_TIMEOUT,
)


def now_us() -> int:
    """Wall clock, epoch microseconds (the unit of every timestamp in the contract)."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class SessionEvent(JsonRecord):
    """Something that happened to a session's channel, at a stream time."""

    SCHEMA = "session_event"

    session_id: str
    channel: int
    kind: str
    at_ms: float
    utterance: int | None = None
    wall_us: int = field(default_factory=now_us)
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1

    @property
    def key(self) -> bytes:
        return self.session_id.encode()


@dataclass(frozen=True)
class DeadLetter(JsonRecord):
    """A message a stage could not handle, with where it came from and why."""

    SCHEMA = "dead_letter"

    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    stage: str
    error_type: str
    raw_base64: str
    key: str | None = None
    session_id: str | None = None
    at_us: int = field(default_factory=now_us)
    schema_version: int = 1

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_base64)

    @classmethod
    def from_raw(
        cls,
        raw: bytes | None,
        *,
        reason: str,
        stage: str,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None = None,
        error_type: str = "ContractError",
        session_id: str | None = None,
    ) -> DeadLetter:
        return cls(
            source_topic=source_topic,
            source_partition=partition,
            source_offset=offset,
            reason=reason,
            stage=stage,
            error_type=error_type,
            raw_base64=base64.b64encode(raw or b"").decode(),
            key=key.decode("utf-8", "replace") if key is not None else None,
            session_id=session_id,
        )

    @classmethod
    def from_error(
        cls,
        err: StreamscribeError,
        *,
        stage: str,
        key: bytes | None = None,
        session_id: str | None = None,
    ) -> DeadLetter:
        return cls.from_raw(
            err.raw,
            reason=err.reason,
            stage=stage,
            source_topic=err.topic or "",
            partition=err.partition if err.partition is not None else -1,
            offset=err.offset if err.offset is not None else -1,
            key=key,
            error_type=type(err).__name__,
            session_id=session_id,
        )


@dataclass(frozen=True)
class LatencyRecord(JsonRecord):
    """Per-utterance stage latencies (ms), computed from a final's timestamps."""

    SCHEMA = "latency_record"

    session_id: str
    channel: int
    utterance: int
    stages_ms: dict[str, float]
    end_to_end_ms: float
    clamped: list[str] = field(default_factory=list)
    schema_version: int = 1


@dataclass(frozen=True)
class Alert(JsonRecord):
    """A configured phrase found in a final transcript."""

    SCHEMA = "alert"

    session_id: str
    channel: int
    role: str
    utterance: int
    phrase: str
    text: str
    start_ms: float
    at_us: int = field(default_factory=now_us)
    schema_version: int = 1

    @property
    def key(self) -> bytes:
        return self.session_id.encode()
