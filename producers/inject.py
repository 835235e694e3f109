"""Seeded fault injection at the edge, applied after encoding (for tests and demos).

``--inject duplicate=0.1,reorder=0.1,drop=0.01,garbage=0.01,nan=0.01``:

- ``duplicate``: the chunk is sent twice;
- ``reorder``: the chunk is held and sent after the next one (neighbours swap);
- ``drop``: the chunk is not sent (the last chunk of a channel, which carries the
  end-of-stream flag, is never dropped, so the session still ends);
- ``garbage``: an undecodable value is sent under the session key before the chunk;
- ``nan``: a ``pcm_f32le`` copy of the chunk with NaNs in it is sent before the chunk
  (same seq): validation must reject it and the real chunk must still be used.

Example::

    >>> spec = parse_inject_spec("duplicate=0.5,drop=0")
    >>> spec.duplicate, spec.drop
    (0.5, 0.0)
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from streamscribe.core.errors import ProducerError
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.pcm import PCM_F32LE, decode_payload

KINDS = ("duplicate", "reorder", "drop", "garbage", "nan")
GARBAGE_BYTES = 64


@dataclass(frozen=True)
class InjectSpec:
    duplicate: float = 0.0
    reorder: float = 0.0
    drop: float = 0.0
    garbage: float = 0.0
    nan: float = 0.0

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in KINDS)


def parse_inject_spec(text: str | None) -> InjectSpec:
    if not text:
        return InjectSpec()
    values: dict[str, float] = {}
    for part in text.split(","):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise ProducerError(f"--inject {text!r}: expected KIND=P with KIND in {KINDS}")
        try:
            p = float(raw)
        except ValueError:
            raise ProducerError(f"--inject {text!r}: {raw!r} is not a probability") from None
        if not 0.0 <= p <= 1.0:
            raise ProducerError(f"--inject {text!r}: {name}={p} is not in [0, 1]")
        values[name] = p
    return InjectSpec(**values)


@dataclass(frozen=True)
class Outgoing:
    """One value to send: a chunk, or raw garbage under a session key."""

    key: bytes
    chunk: AudioChunk | None = None
    raw: bytes | None = None

    def value(self) -> bytes:
        if self.chunk is not None:
            return self.chunk.encode()
        assert self.raw is not None
        return self.raw


@dataclass
class Injector:
    """Applies an :class:`InjectSpec` to one channel's chunk stream, deterministically."""

    spec: InjectSpec
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def apply(self, chunks: Iterable[AudioChunk], stream_seed: int = 0) -> Iterator[Outgoing]:
        rng = random.Random(self.seed * 1_000_003 + stream_seed)
        held: AudioChunk | None = None
        for chunk in chunks:
            out: list[Outgoing] = []
            key = chunk.key
            if self.spec.garbage and rng.random() < self.spec.garbage:
                out.append(Outgoing(key, raw=rng.randbytes(GARBAGE_BYTES)))
                self.counts["garbage"] += 1
            if self.spec.nan and rng.random() < self.spec.nan and chunk.n_samples:
                out.append(Outgoing(key, chunk=_nan_copy(chunk)))
                self.counts["nan"] += 1
            if not chunk.end_of_stream and self.spec.drop and rng.random() < self.spec.drop:
                self.counts["drop"] += 1
                yield from out
                continue
            copies = [Outgoing(key, chunk=chunk)]
            if self.spec.duplicate and rng.random() < self.spec.duplicate:
                copies.append(Outgoing(key, chunk=chunk))
                self.counts["duplicate"] += 1
            if held is not None:
                out.extend(copies)
                out.append(Outgoing(key, chunk=held))
                held = None
            elif not chunk.end_of_stream and self.spec.reorder and rng.random() < self.spec.reorder:
                held = chunk
                self.counts["reorder"] += 1
                out.extend(copies[1:])
            else:
                out.extend(copies)
            yield from out
        if held is not None:
            yield Outgoing(held.key, chunk=held)


def _nan_copy(chunk: AudioChunk) -> AudioChunk:
    samples = decode_payload(chunk.payload, chunk.encoding).copy()
    samples[:: max(1, len(samples) // 4)] = np.nan
    return dataclasses.replace(
        chunk,
        encoding=PCM_F32LE,
        payload=samples.astype("<f4").tobytes(),
        end_of_stream=False,
        session_meta=None,
    )
