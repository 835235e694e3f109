"""JSON side types: ``SessionEvent``, ``DeadLetter``, ``LatencyRecord``, ``Alert``.

Example::

    >>> d = DeadLetter.from_raw(b"\\xff", reason="not Avro", stage="segmenter",
    ...                         source_topic="streamscribe.audio", partition=0, offset=7)
    >>> DeadLetter.decode(d.encode()).raw
    b'\\xff'

A dead letter is always small enough to send: raw bytes over :data:`DEAD_LETTER_MAX_RAW_BYTES`
are cut to that many (``raw_truncated``; ``raw_size`` and ``raw_sha256`` describe the whole
value, which stays in its source topic at ``source_offset``), and an over-long key or reason
is cut too (schema version 2)::

    >>> big = DeadLetter.from_raw(bytes(2_000_000), reason="too big", stage="segmenter",
    ...                           source_topic="streamscribe.audio", partition=0, offset=8)
    >>> big.raw_truncated, big.raw_size, len(big.raw), len(big.encode()) < 400_000
    (True, 2000000, 262144, True)
"""

from __future__ import annotations

import base64
import hashlib
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


# Raw bytes kept in a dead letter; the rest stays in the source topic (see its offset). With
# base64 this keeps every dead letter far under any producer's request limit (1 MB default).
DEAD_LETTER_MAX_RAW_BYTES: Final = 256 * 1024
DEAD_LETTER_MAX_TEXT: Final = 1024  # characters kept of a key, a session id or a reason
DEAD_LETTER_VERSION: Final = 2


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= DEAD_LETTER_MAX_TEXT:
        return text
    return f"{text[:DEAD_LETTER_MAX_TEXT]}... ({len(text)} characters)"


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
    raw_size: int | None = None  # length of the whole raw value (v2)
    raw_sha256: str | None = None  # of the whole raw value (v2)
    raw_truncated: bool = False  # raw_base64 holds only its first DEAD_LETTER_MAX_RAW_BYTES
    schema_version: int = DEAD_LETTER_VERSION

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
        max_raw_bytes: int = DEAD_LETTER_MAX_RAW_BYTES,
    ) -> DeadLetter:
        """A dead letter for ``raw``, cut to a sendable size (see the module docstring)."""
        whole = bytes(raw or b"")
        kept = whole[: max(0, max_raw_bytes)]
        return cls(
            source_topic=source_topic,
            source_partition=partition,
            source_offset=offset,
            reason=_cut(reason) or "",
            stage=stage,
            error_type=error_type,
            raw_base64=base64.b64encode(kept).decode(),
            key=_cut(bytes(key).decode("utf-8", "replace")) if key is not None else None,
            session_id=_cut(session_id),
            raw_size=len(whole),
            raw_sha256=hashlib.sha256(whole).hexdigest(),
            raw_truncated=len(kept) < len(whole),
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
