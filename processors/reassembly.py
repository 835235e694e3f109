"""Jitter buffer: puts one channel's chunks back in ``seq`` order, declaring gaps deterministically.

Chunks of a channel carry ``seq`` (0, 1, 2, ... contiguous) and ``position`` (the index of
their first sample in the channel's stream). :class:`JitterBuffer` emits them in ``seq``
order and

- drops **duplicates** (a ``seq`` already emitted or already held);
- holds chunks that arrive early (**reorders**), at most ``window_chunks`` of them;
- declares a **gap** for the missing ``seq`` when the held chunks reach more than
  ``gap_timeout_ms`` of stream time past the missing position, when the window overflows
  (an **overrun**), when the end-of-stream chunk arrives, or on :meth:`JitterBuffer.flush`.
  The :class:`Gap` carries the missing position and the number of silent samples to insert,
  computed from positions, so timing after a gap stays exact. Every rule depends only on
  the order of arrivals, never on wall-clock time, so a replay gives the same result;
- drops chunks that arrive after their gap was declared (**late**);
- **bounds every gap**: the silence a gap inserts is at most ``max_gap_ms`` whatever the
  positions say (the rest of the jump is counted in ``gap_samples_skipped``, not filled
  sample by sample), so one forged position costs O(1) worker time;
- **rejects positions that contradict the seq order**
  (:class:`~streamscribe.core.errors.ValidationError`, raised before any state change): a
  chunk that starts before the stream position already reached, elsewhere than that
  position although no seq is missing before it, or further ahead than its missing chunks
  could fill (``max_chunk_samples`` each).

The end-of-stream chunk has a ``seq`` too (it may carry samples or none); once everything
up to it is emitted the channel is :attr:`~JitterBuffer.finished`.

This module also holds the compact state codec shared by all segmenter cores
(:func:`pack_state` / :func:`unpack_state`): a small JSON header plus raw numpy buffers,
never pickle, so that state can live in a changelog table.

Example::

    >>> jb = JitterBuffer()
    >>> c = lambda s: Chunk(seq=s, position=1600 * s, n_samples=1600, sample_rate=16000)
    >>> [type(i).__name__ + str(getattr(i, "seq", "")) for i in jb.push(c(1)) + jb.push(c(0))]
    ['Chunk0', 'Chunk1']
    >>> jb.counters.reorders
    1
    >>> restored = JitterBuffer.from_bytes(jb.to_bytes())
    >>> restored.push(c(1)), restored.counters.duplicates
    ([], 1)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import SegmenterError, ValidationError
from streamscribe.schemas.pcm import PCM_S16LE, Float32Array

if TYPE_CHECKING:
    from streamscribe.core.settings import Settings

DEFAULT_WINDOW_CHUNKS: Final = 8
DEFAULT_GAP_TIMEOUT_MS: Final = 1000
# The most silence one gap inserts; a longer jump ends the utterance and is reported.
DEFAULT_MAX_GAP_MS: Final = 10_000
# The most samples one chunk can hold (the payload limit at one byte per sample, µ-law):
# a missing chunk cannot account for more of a position jump than this.
DEFAULT_MAX_CHUNK_SAMPLES: Final = 1 << 20
# How many declared gaps are remembered to tell a late chunk from a duplicate.
RECENT_GAP_RANGES: Final = 16

_STATE_MAGIC: Final = b"SSC1"
_HEADER_LEN: Final = struct.Struct("<I")


# --------------------------------------------------------------------------- state codec


@dataclass(frozen=True)
class PackedState:
    """A decoded state blob: JSON-able ``meta`` plus named numpy ``arrays``."""

    meta: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]


def pack_state(
    kind: str, meta: Mapping[str, Any], arrays: Mapping[str, npt.ArrayLike] | None = None
) -> bytes:
    """Serialise state as ``magic | u32 header length | JSON header | raw array bytes``.

    Floats in ``meta`` round-trip exactly (JSON writes ``repr``). Arrays keep dtype and shape.

    >>> blob = pack_state("demo", {"n": 3}, {"x": np.arange(3, dtype=np.int16)})
    >>> s = unpack_state(blob, "demo")
    >>> s.meta["n"], s.arrays["x"].tolist()
    (3, [0, 1, 2])
    """
    specs: list[list[Any]] = []
    bodies: list[bytes] = []
    for name, value in (arrays or {}).items():
        arr = np.ascontiguousarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dtype, copy=False)
        specs.append([name, arr.dtype.str, list(arr.shape)])
        bodies.append(arr.tobytes())
    header = json.dumps({"k": kind, "m": dict(meta), "a": specs}, separators=(",", ":")).encode()
    return b"".join([_STATE_MAGIC, _HEADER_LEN.pack(len(header)), header, *bodies])


def unpack_state(data: bytes, kind: str) -> PackedState:
    """Inverse of :func:`pack_state`; :class:`SegmenterError` if not a ``kind`` state blob."""
    if data[:4] != _STATE_MAGIC or len(data) < 8:
        raise SegmenterError(f"not a streamscribe state blob (expected {kind!r})", raw=data)
    (hlen,) = _HEADER_LEN.unpack_from(data, 4)
    try:
        header = json.loads(data[8 : 8 + hlen])
    except ValueError as exc:
        raise SegmenterError(f"corrupt state header: {exc}", raw=data) from None
    if header.get("k") != kind:
        raise SegmenterError(f"state is a {header.get('k')!r}, expected {kind!r}", raw=data)
    arrays: dict[str, npt.NDArray[Any]] = {}
    offset = 8 + hlen
    for name, dtype_str, shape in header["a"]:
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(data):
            raise SegmenterError(f"state blob truncated in array {name!r}", raw=data)
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays[name] = arr.copy()
        offset += nbytes
    return PackedState(meta=header["m"], arrays=arrays)


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Chunk:
    """One chunk of one channel as it arrives; ``payload`` is opaque to the jitter buffer.

    ``samples`` are the decoded payload once the chunk was admitted
    (:func:`~streamscribe.processors.validate.admit`); a bare chunk has ``None`` there and
    is validated and decoded where it is consumed. They are not part of its identity.
    """

    seq: int
    position: int
    n_samples: int
    sample_rate: int
    payload: bytes = b""
    encoding: str = PCM_S16LE
    end_of_stream: bool = False
    duration_ms: float | None = None
    samples: Float32Array | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Gap:
    """Missing chunks, replaced by ``n_samples`` of silence starting at ``position``.

    ``n_samples`` is at the source ``sample_rate`` and computed from positions
    (next held chunk's position minus the expected position), so timing stays exact.
    """

    position: int
    n_samples: int
    sample_rate: int
    first_missing_seq: int
    missing_count: int
    degraded: bool = True
    declared_samples: int | None = None  # the position jump, when over the bound (capped)


Item = Chunk | Gap


@dataclass
class ReassemblyCounters:
    """Per-channel counters of the jitter buffer."""

    chunks_in: int = 0
    emitted: int = 0
    reorders: int = 0  # chunks that arrived ahead of a missing seq and were held
    duplicates: int = 0
    gaps: int = 0
    gap_samples: int = 0
    late: int = 0  # arrived after their gap was declared, or after the end of stream
    overruns: int = 0  # gaps forced because the window was full
    misaligned: int = 0  # emitted chunks whose position was not where the stream stood
    gaps_capped: int = 0  # gaps whose position jump was over max_gap_ms
    gap_samples_skipped: int = 0  # source samples of those jumps not filled with silence
    contradicting: int = 0  # chunks rejected: their position contradicts the seq order

    def to_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for metrics and session events); the counters of
        hostile input (:data:`_RARE_COUNTERS`) only when they are not zero."""
        return {k: v for k, v in vars(self).items() if v or k not in _RARE_COUNTERS}


_RARE_COUNTERS: Final = frozenset({"gaps_capped", "gap_samples_skipped", "contradicting"})


@dataclass(frozen=True)
class JitterConfig:
    """Knobs of the jitter buffer (settings ``jitter_window_chunks``, ``gap_timeout_ms``;
    ``max_chunk_samples`` follows ``max_payload_bytes``)."""

    window_chunks: int = DEFAULT_WINDOW_CHUNKS
    gap_timeout_ms: int = DEFAULT_GAP_TIMEOUT_MS
    max_gap_ms: int = DEFAULT_MAX_GAP_MS
    max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES

    def __post_init__(self) -> None:
        if self.window_chunks < 1 or self.gap_timeout_ms < 0:
            raise ValueError("window_chunks must be >= 1 and gap_timeout_ms >= 0")
        if self.max_gap_ms < 0 or self.max_chunk_samples < 1:
            raise ValueError("max_gap_ms must be >= 0 and max_chunk_samples >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> JitterConfig:
        """Build from a :class:`streamscribe.core.settings.Settings`."""
        return cls(
            window_chunks=settings.jitter_window_chunks,
            gap_timeout_ms=settings.gap_timeout_ms,
            max_chunk_samples=max(1, settings.max_payload_bytes),
        )


@dataclass
class _GapRange:
    first: int
    end: int  # exclusive


@dataclass
class JitterBuffer:
    """Per-(session, channel) reorder buffer; see the module docstring for the rules.

    State is small: a few integers, at most ``window_chunks`` held chunks (usually none)
    and the last :data:`RECENT_GAP_RANGES` gap ranges.
    """

    config: JitterConfig = field(default_factory=JitterConfig)
    counters: ReassemblyCounters = field(default_factory=ReassemblyCounters)
    next_seq: int = 0
    next_position: int = 0
    finished: bool = False
    _held: dict[int, Chunk] = field(default_factory=dict)
    _gap_ranges: list[_GapRange] = field(default_factory=list)

    @property
    def held(self) -> int:
        """How many out-of-order chunks are waiting."""
        return len(self._held)

    def push(self, chunk: Chunk) -> list[Item]:
        """Accept one arrival; return the items now ready, in stream order.

        :class:`ValidationError` (state untouched but the counter) if its position
        contradicts the seq order, or it differs from the copy of its seq already held.
        """
        if not self.finished and chunk.seq >= self.next_seq:
            held = self._held.get(chunk.seq)
            if held is None:
                self._check_position(chunk)
            else:
                self._check_copy(held, chunk)
        self.counters.chunks_in += 1
        out: list[Item] = []
        if chunk.seq < self.next_seq or self.finished:
            if (self.finished and chunk.seq >= self.next_seq) or self._in_gap(chunk.seq):
                self.counters.late += 1
            else:
                self.counters.duplicates += 1
            return out
        if chunk.seq in self._held:
            self.counters.duplicates += 1
            return out
        if chunk.seq == self.next_seq:
            self._emit(chunk, out)
        else:
            self._held[chunk.seq] = chunk
            self.counters.reorders += 1
        self._drain(out)
        eos_held = any(c.end_of_stream for c in self._held.values())
        while self._held:
            if len(self._held) > self.config.window_chunks:
                self.counters.overruns += 1
            elif not (eos_held or self._timed_out()):
                break
            self._declare_gap(out)
            self._drain(out)
        return out

    def flush(self) -> list[Item]:
        """Declare gaps for everything missing and emit all held chunks (idle / shutdown)."""
        out: list[Item] = []
        while self._held:
            self._declare_gap(out)
            self._drain(out)
        return out

    # ---------------------------------------------------------------- internals

    def _check_copy(self, held: Chunk, chunk: Chunk) -> None:
        """A second arrival of a held seq is a resend (dropped) unless it says otherwise."""
        if (held.position, held.n_samples, held.sample_rate) == (
            chunk.position,
            chunk.n_samples,
            chunk.sample_rate,
        ):
            return
        self.counters.contradicting += 1
        raise ValidationError(
            f"chunk seq {chunk.seq} (position {chunk.position}, {chunk.n_samples} samples at "
            f"{chunk.sample_rate} Hz) contradicts the copy already held (position "
            f"{held.position}, {held.n_samples} samples at {held.sample_rate} Hz)"
        )

    def _check_position(self, chunk: Chunk) -> None:
        """Reject a chunk ahead in seq whose position its missing chunks cannot explain."""
        missing = chunk.seq - self.next_seq
        jump = chunk.position - self.next_position
        bound = missing * self.config.max_chunk_samples
        if 0 <= jump <= bound:
            return
        self.counters.contradicting += 1
        if missing == 0:
            why = (
                f"is not where the stream stands ({self.next_position}) although no seq is missing"
            )
        elif jump < 0:
            why = f"starts {-jump} samples before the stream position {self.next_position}"
        else:
            why = (
                f"is {jump} samples past the stream position {self.next_position}, more than"
                f" its {missing} missing chunk(s) can hold ({bound})"
            )
        raise ValidationError(
            f"position {chunk.position} of seq {chunk.seq} contradicts the seq order: it {why}",
            raw=chunk.payload,
        )

    def _in_gap(self, seq: int) -> bool:
        return any(r.first <= seq < r.end for r in self._gap_ranges)

    def _emit(self, chunk: Chunk, out: list[Item]) -> None:
        if chunk.position != self.next_position:
            self.counters.misaligned += 1
        out.append(chunk)
        self.counters.emitted += 1
        self.next_seq = chunk.seq + 1
        self.next_position = chunk.position + chunk.n_samples
        if chunk.end_of_stream:
            self.finished = True
            late = [s for s in self._held if s > chunk.seq]
            for s in late:
                del self._held[s]
            self.counters.late += len(late)

    def _drain(self, out: list[Item]) -> None:
        while not self.finished and self.next_seq in self._held:
            self._emit(self._held.pop(self.next_seq), out)

    def _timed_out(self) -> bool:
        first = self._held[min(self._held)]
        reach = max(c.position + c.n_samples for c in self._held.values())
        timeout_samples = self.config.gap_timeout_ms * first.sample_rate // 1000
        return reach - self.next_position > timeout_samples

    def _declare_gap(self, out: list[Item]) -> None:
        first_held = min(self._held)
        chunk = self._held[first_held]
        jump = max(0, chunk.position - self.next_position)
        n = min(jump, self.config.max_gap_ms * chunk.sample_rate // 1000)
        out.append(
            Gap(
                position=self.next_position,
                n_samples=n,
                sample_rate=chunk.sample_rate,
                first_missing_seq=self.next_seq,
                missing_count=first_held - self.next_seq,
                declared_samples=jump if jump > n else None,
            )
        )
        self.counters.gaps += 1
        self.counters.gap_samples += n
        if jump > n:
            self.counters.gaps_capped += 1
            self.counters.gap_samples_skipped += jump - n
        self._gap_ranges.append(_GapRange(self.next_seq, first_held))
        del self._gap_ranges[:-RECENT_GAP_RANGES]
        self.next_seq = first_held
        self.next_position = chunk.position

    # ---------------------------------------------------------------- state

    def state_meta(self) -> dict[str, Any]:
        """The state's scalars (the held payloads travel in :meth:`state_arrays`)."""
        held = sorted(self._held.values(), key=lambda c: c.seq)
        return {
            "next_seq": self.next_seq,
            "next_position": self.next_position,
            "finished": self.finished,
            "counters": self.counters.to_dict(),
            "gaps": [[r.first, r.end] for r in self._gap_ranges],
            "held": [
                [
                    c.seq,
                    c.position,
                    c.n_samples,
                    c.sample_rate,
                    c.encoding,
                    c.end_of_stream,
                    c.duration_ms,
                    len(c.payload),
                ]
                for c in held
            ],
        }

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The held payloads, as one byte array (none when nothing is held)."""
        if not self._held:
            return {}
        held = sorted(self._held.values(), key=lambda c: c.seq)
        return {"payloads": np.frombuffer(b"".join(c.payload for c in held), dtype=np.uint8)}

    @classmethod
    def from_state(
        cls,
        meta: dict[str, Any],
        arrays: Mapping[str, npt.NDArray[Any]],
        config: JitterConfig | None = None,
    ) -> JitterBuffer:
        """Inverse of :meth:`state_meta` + :meth:`state_arrays` (held chunks come back bare)."""
        blob = arrays["payloads"].tobytes() if "payloads" in arrays else b""
        held: dict[int, Chunk] = {}
        offset = 0
        for seq, pos, n, sr, enc, eos, dur, length in meta["held"]:
            held[seq] = Chunk(seq, pos, n, sr, blob[offset : offset + length], enc, eos, dur)
            offset += length
        names = {f.name for f in fields(ReassemblyCounters)}
        return cls(
            config=config or JitterConfig(),
            counters=ReassemblyCounters(
                **{k: v for k, v in meta["counters"].items() if k in names}
            ),
            next_seq=meta["next_seq"],
            next_position=meta["next_position"],
            finished=meta["finished"],
            _held=held,
            _gap_ranges=[_GapRange(a, b) for a, b in meta["gaps"]],
        )

    def to_bytes(self) -> bytes:
        """Compact state on its own: JSON header + held payloads as one byte array."""
        return pack_state("jitter", self.state_meta(), self.state_arrays() or None)

    @classmethod
    def from_bytes(cls, data: bytes, config: JitterConfig | None = None) -> JitterBuffer:
        """Restore a buffer saved by :meth:`to_bytes`."""
        state = unpack_state(data, "jitter")
        return cls.from_state(state.meta, state.arrays, config)
