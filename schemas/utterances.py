"""``UtteranceMessage``: what the segmenter publishes to ``streamscribe.utterances``.

An utterance travels as a run of messages that share ``(session_id, channel, utterance)``:
zero or more ``update`` messages ("speech so far", every ~0.5 s of new speech) and one
``final``. Each message carries only the 16 kHz PCM16 audio since the previous message of
the same utterance (a delta), so bytes on Kafka grow linearly with the audio. The audio of
the utterance is the concatenation of all parts in ``part`` order.

An update flagged ``end_candidate`` (v3) ends exactly where the utterance will end if the
silence that just began holds: a recognizer may start the final's decode on it. If the
silence holds, the final follows with an empty tail and the same ``end_sample``; if speech
resumes, it was just an update. Versions 1 and 2 are still read (``end_candidate`` false).

``live`` (v4) is False when the session's metadata says nobody watches it as it happens
(:class:`~streamscribe.schemas.audio.SessionMeta`, a recording replayed ``--pace asap``):
a recognizer sends no partials for it and may decode its finals in batches. Older
versions read as live.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from streamscribe.core.errors import ContractError
from streamscribe.schemas.avro_codec import AvroType

UTTERANCE_TYPE = AvroType(
    "UtteranceMessage",
    type_id=2,
    versions={
        1: "utterance.v1.avsc",
        2: "utterance.v2.avsc",
        3: "utterance.v3.avsc",
        4: "utterance.v4.avsc",
    },
)
KIND_UPDATE: Final = "update"
KIND_FINAL: Final = "final"
SAMPLE_RATE: Final = 16000


def line_id(session_id: str, channel: int, utterance: int) -> str:
    """The stable id of a transcript line: ``session/channel/utterance``."""
    return f"{session_id}/{channel}/{utterance}"


@dataclass(frozen=True)
class UtteranceMessage:
    session_id: str
    channel: int
    role: str
    utterance: int
    kind: str
    part: int
    start_sample: int
    offset_sample: int
    end_sample: int
    payload: bytes = field(repr=False)
    captured_at_us: int = 0
    broker_at_us: int = 0
    received_at_us: int = 0
    decided_at_us: int = 0
    reason: str | None = None
    degraded: bool = False
    summary_json: str | None = None
    origin: str | None = None  # v2: the processor group whose segmenter wrote it
    end_candidate: bool = False  # v3: an update ending where the utterance may end
    live: bool = True  # v4: False: the session is not watched live (finals only)
    sample_rate: int = SAMPLE_RATE
    schema_version: int = UTTERANCE_TYPE.current

    @property
    def key(self) -> bytes:
        return self.session_id.encode()

    @property
    def line_id(self) -> str:
        return line_id(self.session_id, self.channel, self.utterance)

    @property
    def start_ms(self) -> float:
        return 1000.0 * self.start_sample / self.sample_rate

    @property
    def end_ms(self) -> float:
        return 1000.0 * self.end_sample / self.sample_rate

    @property
    def summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary_json) if self.summary_json else None

    def encode(self) -> bytes:
        return UTTERANCE_TYPE.encode(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> UtteranceMessage:
        rec = UTTERANCE_TYPE.decode(data)
        try:
            msg = cls(**{k: v for k, v in rec.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise ContractError(f"UtteranceMessage: {exc}", raw=data) from exc
        if msg.kind not in (KIND_UPDATE, KIND_FINAL):
            raise ContractError(f"UtteranceMessage: unknown kind {msg.kind!r}", raw=data)
        return msg

    def summary_view(self) -> dict[str, Any]:
        """JSON-friendly view with the payload as byte count and sha256."""
        d = asdict(self)
        d.pop("payload")
        d["start_ms"] = round(self.start_ms, 3)
        d["end_ms"] = round(self.end_ms, 3)
        d["payload_bytes"] = len(self.payload)
        d["payload_sha256"] = hashlib.sha256(self.payload).hexdigest()
        return d
