"""Transcript events on ``streamscribe.transcripts``: JSON, key = session id.

Two distinct types, one wire shape (``TranscriptEvent`` JSON, ``kind`` tells which):

- :class:`PartialTranscript` — the line so far; ``stable_text`` is a prefix of ``text``
  that later partials of the same line never retract; ``revision`` increases (it is the
  number of the line's utterance parts the partial saw, so it may skip numbers).
- :class:`FinalTranscript` — the line's final text; it replaces every partial. Its
  ``revision`` is the line's number of parts, above every partial's; a final published
  again after a crash is the same event (text and revision). Stored idempotently
  downstream under ``(session_id, channel, utterance)``.

Example::

    >>> f = FinalTranscript(session_id="s", channel=0, role="agent", utterance=3,
    ...                     revision=2, text="hello", start_ms=0.0, end_ms=900.0,
    ...                     confidence=0.9)
    >>> decode_transcript(f.encode()) == f
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from streamscribe.schemas.json_codec import JsonRecord, decode_json, from_doc

TRANSCRIPT_SCHEMA_VERSION: Final = 1
KIND_PARTIAL: Final = "partial"
KIND_FINAL: Final = "final"

#: Latency timestamps (epoch µs) in pipeline order. Consecutive differences are the stages.
TIMESTAMP_ORDER: Final = (
    "captured_at_us",  # edge: last sample of the chunk that ended the speech
    "broker_at_us",  # Kafka record timestamp of that chunk
    "received_at_us",  # processor took the chunk
    "decided_at_us",  # segmenter decided end of speech (or the update)
    "decode_start_us",  # recognizer started decoding
    "decode_end_us",  # recognizer finished decoding
    "published_at_us",  # recognizer handed the event to its producer
)


@dataclass(frozen=True)
class _TranscriptBase(JsonRecord):
    SCHEMA = "transcript_event"

    session_id: str
    channel: int
    role: str
    utterance: int
    revision: int
    text: str
    start_ms: float
    end_ms: float
    confidence: float | None = None
    error: str | None = None
    timestamps: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    degraded: bool = False
    raw_text: str | None = None  # the model's own text, before post-processing (audit)
    # The processor group (faust app id) whose recognizer published it: consumers tell the
    # live pipeline's group from a re-transcription group's; None = before the field existed.
    origin: str | None = None
    schema_version: int = TRANSCRIPT_SCHEMA_VERSION

    kind: str = field(init=False, default="")

    @property
    def key(self) -> bytes:
        return self.session_id.encode()

    @property
    def line_id(self) -> str:
        return f"{self.session_id}/{self.channel}/{self.utterance}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        d["line_id"] = self.line_id
        return d


@dataclass(frozen=True)
class PartialTranscript(_TranscriptBase):
    stable_text: str = ""
    kind: str = field(init=False, default=KIND_PARTIAL)


@dataclass(frozen=True)
class FinalTranscript(_TranscriptBase):
    reason: str | None = None
    kind: str = field(init=False, default=KIND_FINAL)


TranscriptEvent = PartialTranscript | FinalTranscript


def decode_transcript(data: bytes) -> TranscriptEvent:
    """Decode a ``TranscriptEvent`` JSON value into its typed form."""
    doc = decode_json(data, _TranscriptBase.SCHEMA)
    cls: type[PartialTranscript] | type[FinalTranscript]
    cls = PartialTranscript if doc["kind"] == KIND_PARTIAL else FinalTranscript
    return from_doc(cls, doc, data, "TranscriptEvent")
