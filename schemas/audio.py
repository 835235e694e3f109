"""``AudioChunk``: what the edge publishes to ``streamscribe.audio`` (Avro, key = session).

Example::

    >>> c = AudioChunk(session_id="s1", channel=0, role="mic", seq=0, position=0,
    ...                n_samples=2, sample_rate=16000, encoding="pcm_s16le",
    ...                captured_at_us=1, payload=b"\\x00\\x00\\x01\\x00")
    >>> AudioChunk.decode(c.encode()) == c
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from streamscribe.core.errors import ContractError
from streamscribe.schemas.avro_codec import AvroType

AUDIO_CHUNK_TYPE = AvroType(
    "AudioChunk", type_id=1, versions={1: "audio_chunk.v1.avsc", 2: "audio_chunk.v2.avsc"}
)
AUDIO_SCHEMA_VERSION = AUDIO_CHUNK_TYPE.current

ROLE_AGENT = "agent"
ROLE_CUSTOMER = "customer"
ROLE_MIC = "mic"
DEFAULT_STEREO_ROLES = (ROLE_AGENT, ROLE_CUSTOMER)


@dataclass(frozen=True)
class SessionMeta:
    """Session metadata, carried by each channel's first chunk.

    ``live`` (v2): False for a recording replayed as fast as it can be read (``produce
    --pace asap``): nobody watches it as it happens, so it gets finals only, and the
    recognizer may decode them in batches (cheaper, but a batched final can differ from
    the offline transcription in a near-tie token, mostly punctuation). A v1 chunk reads
    as live.
    """

    source: str
    language: str = "en"
    call_id: str | None = None
    channels: int = 1
    roles: tuple[str, ...] = ()
    live: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d


@dataclass(frozen=True)
class AudioChunk:
    """One chunk of one channel of one session."""

    session_id: str
    channel: int
    role: str
    seq: int
    position: int
    n_samples: int
    sample_rate: int
    encoding: str
    captured_at_us: int
    payload: bytes = field(repr=False)
    end_of_stream: bool = False
    session_meta: SessionMeta | None = None
    schema_version: int = AUDIO_SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        """The Kafka key: the session id."""
        return self.session_id.encode()

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.n_samples / self.sample_rate if self.sample_rate else 0.0

    def encode(self) -> bytes:
        rec = asdict(self)
        rec["session_meta"] = self.session_meta.to_dict() if self.session_meta else None
        return AUDIO_CHUNK_TYPE.encode(rec)

    @classmethod
    def decode(cls, data: bytes) -> AudioChunk:
        """Decode a value; :class:`ContractError` (with the raw bytes) if it is not one."""
        rec = AUDIO_CHUNK_TYPE.decode(data)
        meta = rec.pop("session_meta", None)
        try:
            return cls(
                session_meta=(
                    SessionMeta(**{**meta, "roles": tuple(meta.get("roles", ()))}) if meta else None
                ),
                **{k: v for k, v in rec.items() if k in _FIELDS},
            )
        except TypeError as exc:
            raise ContractError(f"AudioChunk: {exc}", raw=data) from exc

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view: fields, with the payload as byte count and sha256."""
        d = asdict(self)
        d.pop("payload")
        d["session_meta"] = self.session_meta.to_dict() if self.session_meta else None
        d["payload_bytes"] = len(self.payload)
        d["payload_sha256"] = hashlib.sha256(self.payload).hexdigest()
        return d


_FIELDS = {f for f in AudioChunk.__dataclass_fields__ if f != "session_meta"}
