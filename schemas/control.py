"""Control messages that travel inside the data topics.

``Tick``: a worker's timer sends one to each partition of ``streamscribe.audio``; the
segmenter handles it in its stream loop (where tables may change) by finalising sessions
that have been idle too long. Readers of the audio topic tell it from an ``AudioChunk`` by
its type id (:func:`is_tick`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from streamscribe.schemas.avro_codec import MAGIC, AvroType

TICK_TYPE = AvroType("Tick", type_id=3, versions={1: "tick.v1.avsc"})
TICK_KEY = b"__tick__"


@dataclass(frozen=True)
class Tick:
    issued_at_us: int
    issuer: str
    schema_version: int = TICK_TYPE.current

    def encode(self) -> bytes:
        return TICK_TYPE.encode(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Tick:
        rec = TICK_TYPE.decode(data)
        return cls(**{k: v for k, v in rec.items() if k in cls.__dataclass_fields__})


def is_tick(data: bytes | None) -> bool:
    return data is not None and len(data) >= 2 and data[0] == MAGIC and data[1] == TICK_TYPE.type_id
