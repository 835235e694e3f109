"""The segmenter stage core: arrivals of many channels in, contract messages out. No Kafka.

Per (session, channel) it admits each arrival (:func:`~streamscribe.processors.validate.
admit`: every check, and the payload decoded once — a bad chunk is rejected with a reason
before it reaches the jitter buffer, and the channel goes on), chains
:class:`~streamscribe.processors.reassembly.JitterBuffer` and
:class:`~streamscribe.processors.channel_segmenter.ChannelSegmenter`, batches the VAD
across all channels of a batch (:meth:`~streamscribe.processors.channel_segmenter.
Segmenters.step`), and maps the core events onto the contract: :class:`UtteranceMessage`
(update deltas and finals with a ``part`` index per utterance, for dedupe downstream; the
update that may end the utterance carries ``end_candidate``, and its final then has an
empty tail) and :class:`SessionEvent`.

Hostile input is rejected per chunk, one reason each, and never costs the chunks around it:
a chunk whose sample rate is not the channel's (the rate of its first admitted chunk), or
whose position contradicts the seq order (:class:`~streamscribe.processors.reassembly.
JitterBuffer`), is rejected before it changes anything. Once a channel has ended (end of
stream or idle timeout) its state is replaced by an :class:`EndedChannel` marker holding the
offset of the message that ended it: a replayed arrival at or before that offset, or a
producer's duplicate of a chunk it had, is dropped silently (it was handled); every other
later arrival (a late chunk, or a new stream under the old session id) is refused with a
dead letter -- never a second run that would overwrite the
first one's utterances downstream.

The whole per-channel state is one :class:`ChannelState` object, kept in memory by the
caller between batches and changed in place by :meth:`StreamSegmenter.process`; its one
codec (:meth:`ChannelState.to_bytes`, a single :func:`~streamscribe.processors.reassembly.
pack_state` blob) is the changelog copy. Feeding the same arrivals to a state restored from
those bytes gives the same messages, byte for byte: that is what makes a crash recoverable.

Example::

    >>> from streamscribe.processors.vad import SileroVad
    >>> core = StreamSegmenter(SileroVad(), clock=lambda: 0)
    >>> chunk = AudioChunk(session_id="s", channel=0, role="mic", seq=0, position=0,
    ...                    n_samples=1600, sample_rate=16000, encoding="pcm_s16le",
    ...                    captured_at_us=0, payload=bytes(3200))
    >>> key = ChannelKey("s", 0)
    >>> (res,) = core.process([ChannelBatch(key, None, [Arrival(chunk, Stamps(0, 0, 0))])])
    >>> [e.kind for e, _ in res.events], res.utterances, res.rejected
    (['session_start'], [], [])
    >>> blob = res.state.to_bytes()  # the changelog copy; res.state stays in memory
    >>> core.load(blob).seg.stream_samples
    1600
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from streamscribe.core.errors import SegmenterError, StreamscribeError, ValidationError
from streamscribe.processors.channel_segmenter import ChannelSegmenter, Segmenters
from streamscribe.processors.reassembly import (
    Chunk,
    Gap,
    Item,
    JitterBuffer,
    JitterConfig,
    pack_state,
    unpack_state,
)
from streamscribe.processors.segmenter_types import (
    GapInserted,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
    UtteranceFinal,
    UtteranceUpdate,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.processors.validate import admit
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.events import (
    EVENT_GAP,
    EVENT_IDLE_TIMEOUT,
    EVENT_SESSION_END,
    EVENT_SESSION_START,
    EVENT_SPEECH_END,
    EVENT_SPEECH_START,
    SessionEvent,
    now_us,
)
from streamscribe.schemas.utterances import KIND_FINAL, KIND_UPDATE, UtteranceMessage

log = logging.getLogger(__name__)

STATE_KIND: Final = "channel"
JITTER_ARRAY_PREFIX: Final = "jitter_"
RATE: Final = 16000


@dataclass(frozen=True)
class ChannelKey:
    session_id: str
    channel: int

    def __str__(self) -> str:
        return f"{self.session_id}#{self.channel}"


@dataclass(frozen=True)
class Stamps:
    """Latency timestamps (epoch µs) of the chunk that caused an output."""

    captured_at_us: int
    broker_at_us: int
    received_at_us: int


@dataclass(frozen=True)
class Arrival:
    """One chunk as it arrived (decoded from Avro, not yet admitted), with an opaque handle."""

    chunk: AudioChunk
    stamps: Stamps
    ref: Any = None
    offset: int = -1  # its offset in the source partition (-1: unknown, e.g. offline)


@dataclass
class ChannelBatch:
    """One channel's arrivals in a batch, with its state: the in-memory object, the
    changelog copy to rebuild it from (``bytes``), or ``None`` for a channel not seen yet."""

    key: ChannelKey
    state: ChannelState | EndedChannel | bytes | None
    arrivals: list[Arrival]


@dataclass
class ChannelResult:
    """What a batch did to one channel: messages to send (with the handle that caused
    each), chunks rejected, and its state after the batch (``None``: it has none — it
    ``ended`` here, or no arrival of a new channel was admitted). When ``failed`` is set the
    state object passed in may be half-changed: rebuild it from its changelog copy."""

    key: ChannelKey
    utterances: list[tuple[UtteranceMessage, Any]] = field(default_factory=list)
    events: list[tuple[SessionEvent, Any]] = field(default_factory=list)
    rejected: list[tuple[Any, StreamscribeError]] = field(default_factory=list)
    state: ChannelState | None = None
    ended: bool = False  # the channel finished here: delete its state, keep ``end_marker``
    end_marker: EndedChannel | None = None
    failed: StreamscribeError | None = None
    replayed: int = 0  # arrivals dropped because the channel had already handled them


@dataclass(frozen=True)
class EndedChannel:
    """What is kept of a channel after it ended: the offset of the message that ended it,
    its last seq and the newest capture time it admitted.

    An arrival at or before ``end_offset`` is a replay (the batch was not acked before a
    crash); one with an old seq and no newer capture time than the stream had is a
    producer's duplicate: both are dropped silently. Anything else -- a chunk past the end
    of stream, or a new stream under the old session id -- is refused.

    >>> m = EndedChannel(41, "session_end", 100.0, 3, last_seq=40, last_captured_us=9)
    >>> EndedChannel.from_doc(m.to_doc()) == m
    True
    """

    end_offset: int
    reason: str
    ended_at: float  # epoch seconds
    partition: int = -1
    last_seq: int = -1
    last_captured_us: int = -1

    def to_doc(self) -> dict[str, Any]:
        """The ``segmenter-ended`` table's document (small JSON)."""
        return {
            "o": self.end_offset,
            "r": self.reason,
            "at": self.ended_at,
            "p": self.partition,
            "s": self.last_seq,
            "c": self.last_captured_us,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EndedChannel:
        return cls(
            int(doc["o"]),
            str(doc["r"]),
            float(doc["at"]),
            int(doc.get("p", -1)),
            int(doc.get("s", -1)),
            int(doc.get("c", -1)),
        )

    def refuse(self, a: Arrival) -> ValidationError | None:
        """None for a replay or a duplicate of what the channel handled; else why ``a`` is
        refused."""
        c = a.chunk
        if 0 <= a.offset <= self.end_offset:
            return None
        if c.seq <= self.last_seq and c.captured_at_us <= self.last_captured_us:
            return None
        return ValidationError(
            f"chunk seq {c.seq} of session {c.session_id!r} channel {c.channel} arrived after"
            f" the channel ended ({self.reason} at offset {self.end_offset}); a session id"
            " cannot be reused",
            raw=c.payload,
        )


@dataclass
class ChannelState:
    """Everything one channel needs to continue exactly where it stopped."""

    jitter: JitterBuffer
    seg: ChannelSegmenter
    role: str
    parts: dict[int, int] = field(default_factory=dict)  # utterance -> next part index
    degraded: bool = False
    rate: int | None = None  # the channel's sample rate: that of its first admitted chunk
    end_offset: int = -1  # offset of the arrival that ended the stream (-1: not ended)
    last_captured_us: int = -1  # the newest capture time of an admitted chunk
    live: bool = True  # the session's metadata said it is watched live (SessionMeta.live)

    def to_bytes(self) -> bytes:
        """The changelog copy: one header (jitter, segmenter, contract bookkeeping) + buffers."""
        meta = {
            "role": self.role,
            "parts": {str(k): v for k, v in self.parts.items()},
            "degraded": self.degraded,
            "rate": self.rate,
            "end_offset": self.end_offset,
            "captured": self.last_captured_us,
            "live": self.live,
            "jitter": self.jitter.state_meta(),
            "seg": self.seg.state_meta(),
        }
        arrays = dict(self.seg.state_arrays())
        for name, arr in self.jitter.state_arrays().items():
            arrays[JITTER_ARRAY_PREFIX + name] = arr
        return pack_state(STATE_KIND, meta, arrays)

    @classmethod
    def from_bytes(
        cls, data: bytes, vad: SileroVad, seg_config: SegmenterConfig, jitter_config: JitterConfig
    ) -> ChannelState:
        """Inverse of :meth:`to_bytes`; :class:`SegmenterError` if it is not a channel state."""
        s = unpack_state(data, STATE_KIND)
        m, a = s.meta, s.arrays
        n = len(JITTER_ARRAY_PREFIX)
        jitter_arrays = {k[n:]: v for k, v in a.items() if k.startswith(JITTER_ARRAY_PREFIX)}
        jitter = JitterBuffer.from_state(m["jitter"], jitter_arrays, jitter_config)
        seg = ChannelSegmenter.from_state(m["seg"], a, vad, seg_config)
        parts = {int(k): int(v) for k, v in m["parts"].items()}
        rate = m.get("rate")
        return cls(
            jitter,
            seg,
            m["role"],
            parts,
            bool(m.get("degraded", False)),
            int(rate) if rate is not None else None,
            int(m.get("end_offset", -1)),
            int(m.get("captured", -1)),
            bool(m.get("live", True)),
        )

    def refuse(self, chunk: Chunk) -> ValidationError | None:
        """Why the admitted ``chunk`` cannot go into this channel, or None."""
        if self.rate is not None and chunk.sample_rate != self.rate:
            return ValidationError(
                f"sample rate changed from {self.rate} to {chunk.sample_rate} mid-stream",
                raw=chunk.payload,
            )
        return None

    def marker(self, reason: str, ended_at: float) -> EndedChannel:
        """What is kept of this channel once it ended."""
        return EndedChannel(
            self.end_offset,
            reason,
            ended_at,
            last_seq=self.jitter.next_seq - 1,
            last_captured_us=self.last_captured_us,
        )

    def after_end(self, a: Arrival) -> ValidationError | None:
        """Once the stream ended in this batch: None for a replay or a duplicate, else why
        ``a`` is refused."""
        return self.marker(EVENT_SESSION_END, 0.0).refuse(a)


class StreamSegmenter:
    """Runs batches of arrivals through per-channel states; one shared VAD model."""

    def __init__(
        self,
        vad: SileroVad,
        seg_config: SegmenterConfig | None = None,
        jitter_config: JitterConfig | None = None,
        clock: Callable[[], int] = now_us,
        origin: str | None = None,
    ) -> None:
        self.vad = vad
        self.segmenters = Segmenters(vad)
        self.origin = origin
        self.seg_config = seg_config or SegmenterConfig()
        self.jitter_config = jitter_config or JitterConfig()
        self.clock = clock

    # ------------------------------------------------------------------ state
    def new_state(self, role: str) -> ChannelState:
        return ChannelState(
            JitterBuffer(self.jitter_config), ChannelSegmenter(self.vad, self.seg_config), role
        )

    def load(self, data: bytes) -> ChannelState:
        return ChannelState.from_bytes(data, self.vad, self.seg_config, self.jitter_config)

    def _resolve(self, state: ChannelState | EndedChannel | bytes) -> ChannelState | EndedChannel:
        return state if not isinstance(state, bytes | bytearray) else self.load(state)

    # ---------------------------------------------------------------- batches
    def process(self, batches: list[ChannelBatch]) -> list[ChannelResult]:
        """Feed each channel's arrivals (in order); VAD batched across channels.

        Each arrival is admitted (checked, decoded once); a rejected one is reported in
        ``rejected`` and the channel goes on without it. States passed in are changed in place.
        """
        results: list[ChannelResult] = []
        live: list[tuple[ChannelState, ChannelResult, list[tuple[Item, Arrival]]]] = []
        validation = self.seg_config.validation
        for b in batches:
            res = ChannelResult(b.key)
            results.append(res)
            try:
                resolved = None if b.state is None else self._resolve(b.state)
                if isinstance(resolved, EndedChannel):
                    self._refuse_all(resolved, b.arrivals, res)
                    continue
                st = resolved
                queue: list[tuple[Item, Arrival]] = []
                for a in b.arrivals:
                    if st is not None and st.jitter.finished:
                        late = st.after_end(a)
                        if late is None:
                            res.replayed += 1
                        else:
                            res.rejected.append((a.ref, late))
                        continue
                    try:
                        chunk = admit(a.chunk, validation)
                        if st is None:
                            target = self.new_state(a.chunk.role)
                            target.rate = chunk.sample_rate
                        else:
                            target = st
                            refused = st.refuse(chunk)
                            if refused is not None:
                                raise refused
                            if st.rate is None:  # a state saved before the rate was kept
                                st.rate = chunk.sample_rate
                        items = target.jitter.push(chunk)  # raises: position contradicts seq
                    except StreamscribeError as exc:
                        res.rejected.append((a.ref, exc))
                        continue
                    if st is None:
                        st = target
                        res.events.append((self._session_start(b.key, st, a), a.ref))
                    st.last_captured_us = max(st.last_captured_us, a.chunk.captured_at_us)
                    if a.chunk.session_meta is not None:
                        st.live = a.chunk.session_meta.live
                    if st.jitter.finished:
                        st.end_offset = a.offset
                    for item in items:
                        queue.append((item, a))
            except StreamscribeError as exc:
                res.failed = exc
                continue
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                res.failed = SegmenterError(f"channel state unreadable: {exc}")
                continue
            if st is not None:
                live.append((st, res, queue))
        self._run_rounds(live)
        for st, res, _ in live:
            if res.failed is None:
                self._close_if_finished(st, res)
        return results

    def finish_idle(
        self,
        key: ChannelKey,
        state: ChannelState | EndedChannel | bytes,
        ref: Any,
        offset: int = -1,
    ) -> ChannelResult:
        """Idle timeout: declare what is missing, close the open utterance, end the channel.

        ``offset``: that of the message that decided it (the tick); later chunks are refused.
        """
        res = ChannelResult(key)
        try:
            st = self._resolve(state)
        except (StreamscribeError, ValueError, KeyError, TypeError, struct.error) as exc:
            res.failed = SegmenterError(f"channel state unreadable: {exc}")
            return res
        if isinstance(st, EndedChannel):
            return res  # already ended: nothing to finish
        st.end_offset = offset
        fake = Arrival(_EMPTY_CHUNK, Stamps(0, 0, 0), ref)
        queue = [(item, fake) for item in st.jitter.flush()]
        self._run_rounds([(st, res, queue)])
        stamps = Stamps(0, 0, self.clock())
        # the channel ends for good (later chunks are refused): flush the resampler too
        ended = st.seg.finish("idle", flush=True)
        self._emit(st, res, ended, Arrival(_EMPTY_CHUNK, stamps, ref), key)
        self._end_channel(st, res, EVENT_IDLE_TIMEOUT, ref)
        return res

    # --------------------------------------------------------------- internals
    def _run_rounds(
        self, live: list[tuple[ChannelState, ChannelResult, list[tuple[Item, Arrival]]]]
    ) -> None:
        depth = max((len(q) for _, _, q in live), default=0)
        for r in range(depth):
            group = [(st, res, q[r]) for st, res, q in live if r < len(q) and res.failed is None]
            if not group:
                continue
            outs = self.segmenters.step(
                [st.seg for st, _, _ in group], [it for _, _, (it, _) in group]
            )
            for (st, res, (item, arrival)), out in zip(group, outs, strict=True):
                if out.error is not None:
                    res.rejected.append((arrival.ref, out.error))
                    n = item.n_samples
                    filler = Gap(item.position, n, item.sample_rate, getattr(item, "seq", -1), 1)
                    try:
                        events = st.seg.push(filler)
                    except StreamscribeError as exc:
                        res.failed = exc
                        continue
                    self._emit(st, res, events, arrival, res.key)
                else:
                    self._emit(st, res, out.events, arrival, res.key)
        for st, res, _ in live:
            if res.failed is None:
                res.state = st

    @staticmethod
    def _refuse_all(marker: EndedChannel, arrivals: list[Arrival], res: ChannelResult) -> None:
        """The channel has ended: replays are dropped, every other arrival refused."""
        for a in arrivals:
            err = marker.refuse(a)
            if err is None:
                res.replayed += 1
            else:
                res.rejected.append((a.ref, err))

    def _close_if_finished(self, st: ChannelState, res: ChannelResult) -> None:
        if st.jitter.finished and st.seg.ended:
            self._end_channel(st, res, EVENT_SESSION_END, None)

    def _end_channel(self, st: ChannelState, res: ChannelResult, kind: str, ref: Any) -> None:
        """The channel is done (``kind``: end of stream or idle timeout): say so, drop it."""
        at_ms = st.seg.stream_samples / RATE * 1000
        event = self._event(res.key, kind, at_ms, None, st.jitter.counters.to_dict())
        res.events.append((event, ref))
        res.ended = True
        res.end_marker = st.marker(kind, self.clock() / 1e6)
        res.state = None

    def _session_start(self, key: ChannelKey, st: ChannelState, a: Arrival) -> SessionEvent:
        c = a.chunk
        meta = c.session_meta.to_dict() if c.session_meta else None
        details = {
            "role": st.role,
            "sample_rate": c.sample_rate,
            "encoding": c.encoding,
            "meta": meta,
        }
        return self._event(key, EVENT_SESSION_START, 0.0, None, details)

    def _event(
        self,
        key: ChannelKey,
        kind: str,
        at_ms: float,
        utt: int | None,
        details: dict[str, Any] | None = None,
    ) -> SessionEvent:
        return SessionEvent(
            session_id=key.session_id,
            channel=key.channel,
            kind=kind,
            at_ms=round(at_ms, 3),
            utterance=utt,
            wall_us=self.clock(),
            details=details or {},
        )

    def _emit(
        self,
        st: ChannelState,
        res: ChannelResult,
        events: list[Any],
        arrival: Arrival,
        key: ChannelKey,
    ) -> None:
        ref = arrival.ref
        for ev in events:
            if isinstance(ev, SpeechStarted):
                res.events.append(
                    (self._event(key, EVENT_SPEECH_START, ev.start_ms, ev.utterance), ref)
                )
            elif isinstance(ev, SpeechEnded):
                res.events.append(
                    (
                        self._event(
                            key,
                            EVENT_SPEECH_END,
                            ev.end_sample / RATE * 1000,
                            ev.utterance,
                            {"reason": ev.reason},
                        ),
                        ref,
                    )
                )
            elif isinstance(ev, GapInserted):
                st.degraded = True
                res.events.append(
                    (
                        self._event(
                            key,
                            EVENT_GAP,
                            ev.start_sample / RATE * 1000,
                            None,
                            _gap_details(ev),
                        ),
                        ref,
                    )
                )
            elif isinstance(ev, UtteranceUpdate | UtteranceFinal):
                res.utterances.append((self._message(st, key, ev, arrival), ref))

    def _message(
        self,
        st: ChannelState,
        key: ChannelKey,
        ev: UtteranceUpdate | UtteranceFinal,
        arrival: Arrival,
    ) -> UtteranceMessage:
        part = st.parts.get(ev.utterance, 0)
        s = arrival.stamps
        common = dict(
            session_id=key.session_id,
            channel=key.channel,
            role=st.role,
            utterance=ev.utterance,
            part=part,
            start_sample=ev.start_sample,
            offset_sample=ev.offset_sample,
            captured_at_us=s.captured_at_us,
            broker_at_us=s.broker_at_us,
            received_at_us=s.received_at_us,
            decided_at_us=self.clock(),
            origin=self.origin,
            live=st.live,
        )
        if isinstance(ev, UtteranceUpdate):
            st.parts[ev.utterance] = part + 1
            return UtteranceMessage(
                kind=KIND_UPDATE,
                end_sample=ev.end_sample,
                payload=ev.pcm16_delta,
                end_candidate=ev.end_candidate,
                **common,
            )
        st.parts.pop(ev.utterance, None)
        return UtteranceMessage(
            kind=KIND_FINAL,
            end_sample=ev.end_sample,
            payload=ev.pcm16_tail,
            reason=ev.reason,
            degraded=ev.degraded,
            summary_json=json.dumps(ev.summary.to_dict()),
            **common,
        )


def _gap_details(ev: GapInserted) -> dict[str, Any]:
    """A gap event's details; a jump over the gap bound also says how much was not filled."""
    details: dict[str, Any] = {"samples_16k": ev.n_samples, "source_samples": ev.source_samples}
    if ev.skipped_source_samples:
        details["skipped_source_samples"] = ev.skipped_source_samples
    return details


_EMPTY_CHUNK = AudioChunk(
    session_id="",
    channel=0,
    role="",
    seq=-1,
    position=0,
    n_samples=0,
    sample_rate=16000,
    encoding="pcm_s16le",
    captured_at_us=0,
    payload=b"",
)
