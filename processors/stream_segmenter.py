"""The segmenter stage core: arrivals of many channels in, contract messages out. No Kafka.

Per (session, channel) it chains :class:`~streamscribe.processors.reassembly.JitterBuffer`
and :class:`~streamscribe.processors.segmenter.ChannelSegmenter`, batches the VAD across
all channels of a batch (:func:`~streamscribe.processors.segmenter.segment_many`), and maps
the core events onto the contract: :class:`UtteranceMessage` (update deltas and finals with
a ``part`` index per utterance, for dedupe downstream) and :class:`SessionEvent`.

The whole per-channel state is one ``bytes`` value (:class:`ChannelState`), which the faust
agent keeps in a changelog table. Feeding the same arrivals to a state restored from those
bytes gives the same messages, byte for byte: that is what makes a crash recoverable.

Example::

    from streamscribe.processors.stream_segmenter import StreamSegmenter, Arrival
    core = StreamSegmenter(SileroVad())
    outs = core.process([ChannelBatch(key, None, [Arrival(chunk, stamps, ref=None)])])
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from streamscribe.core.errors import SegmenterError, StreamscribeError
from streamscribe.processors.reassembly import Chunk, Gap, Item, JitterBuffer, JitterConfig
from streamscribe.processors.segmenter import (
    ChannelSegmenter,
    GapInserted,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
    UtteranceFinal,
    UtteranceUpdate,
    segment_many,
)
from streamscribe.processors.vad import SileroVad
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

STATE_MAGIC: Final = b"SSCH"
_LENS: Final = struct.Struct("<III")
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
    """One validated chunk as it arrived, with an opaque handle (the faust event)."""

    chunk: AudioChunk
    stamps: Stamps
    ref: Any = None


@dataclass
class ChannelBatch:
    key: ChannelKey
    state: bytes | None
    arrivals: list[Arrival]


@dataclass
class ChannelResult:
    """What a batch did to one channel: messages to send (with the handle that caused
    each), chunks rejected, and the new state (``None`` = channel finished, delete it)."""

    key: ChannelKey
    utterances: list[tuple[UtteranceMessage, Any]] = field(default_factory=list)
    events: list[tuple[SessionEvent, Any]] = field(default_factory=list)
    rejected: list[tuple[Any, StreamscribeError]] = field(default_factory=list)
    state: bytes | None = None
    finished: bool = False
    failed: StreamscribeError | None = None


@dataclass
class ChannelState:
    """Everything one channel needs to continue exactly where it stopped."""

    jitter: JitterBuffer
    seg: ChannelSegmenter
    role: str
    parts: dict[int, int] = field(default_factory=dict)  # utterance -> next part index
    degraded: bool = False

    def to_bytes(self) -> bytes:
        j = self.jitter.to_bytes()
        s = self.seg.to_bytes()
        head = json.dumps(
            {
                "role": self.role,
                "parts": {str(k): v for k, v in self.parts.items()},
                "degraded": self.degraded,
            }
        ).encode()
        return STATE_MAGIC + _LENS.pack(len(j), len(s), len(head)) + j + s + head

    @classmethod
    def from_bytes(
        cls, data: bytes, vad: SileroVad, seg_config: SegmenterConfig, jitter_config: JitterConfig
    ) -> ChannelState:
        if data[:4] != STATE_MAGIC:
            raise SegmenterError("not a channel state")
        lj, ls, lh = _LENS.unpack_from(data, 4)
        o = 4 + _LENS.size
        jitter = JitterBuffer.from_bytes(data[o : o + lj], jitter_config)
        seg = ChannelSegmenter.from_bytes(data[o + lj : o + lj + ls], vad, seg_config)
        head = json.loads(data[o + lj + ls : o + lj + ls + lh])
        parts = {int(k): int(v) for k, v in head["parts"].items()}
        return cls(jitter, seg, head["role"], parts, bool(head.get("degraded", False)))


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

    # ---------------------------------------------------------------- batches
    def process(self, batches: list[ChannelBatch]) -> list[ChannelResult]:
        """Feed each channel's arrivals (in order); VAD batched across channels."""
        results: list[ChannelResult] = []
        live: list[tuple[ChannelState, ChannelResult, list[tuple[Item, Arrival]]]] = []
        for b in batches:
            res = ChannelResult(b.key)
            results.append(res)
            try:
                first = b.state is None
                st = (
                    self.new_state(b.arrivals[0].chunk.role)
                    if b.state is None
                    else self.load(b.state)
                )
                queue: list[tuple[Item, Arrival]] = []
                for a in b.arrivals:
                    if first and a is b.arrivals[0]:
                        res.events.append(
                            (
                                self._event(
                                    b.key,
                                    EVENT_SESSION_START,
                                    0.0,
                                    None,
                                    {
                                        "role": st.role,
                                        "sample_rate": a.chunk.sample_rate,
                                        "encoding": a.chunk.encoding,
                                        "meta": a.chunk.session_meta.to_dict()
                                        if a.chunk.session_meta
                                        else None,
                                    },
                                ),
                                a.ref,
                            )
                        )
                    for item in st.jitter.push(_to_item(a.chunk)):
                        queue.append((item, a))
                live.append((st, res, queue))
            except StreamscribeError as exc:
                res.failed = exc
            except (ValueError, KeyError, struct.error) as exc:
                res.failed = SegmenterError(f"channel state unreadable: {exc}")
        self._run_rounds(live)
        for st, res, _ in live:
            if res.failed is None:
                self._close_if_finished(st, res)
        return results

    def finish_idle(self, key: ChannelKey, data: bytes, ref: Any) -> ChannelResult:
        """Idle timeout: declare what is missing, close the open utterance, end the channel."""
        res = ChannelResult(key)
        try:
            st = self.load(data)
        except (StreamscribeError, ValueError, KeyError, struct.error) as exc:
            res.failed = SegmenterError(f"channel state unreadable: {exc}")
            return res
        fake = Arrival(_EMPTY_CHUNK, Stamps(0, 0, 0), ref)
        queue = [(item, fake) for item in st.jitter.flush()]
        self._run_rounds([(st, res, queue)])
        stamps = Stamps(0, 0, self.clock())
        self._emit(st, res, st.seg.finish("idle"), Arrival(_EMPTY_CHUNK, stamps, ref), key)
        res.events.append(
            (
                self._event(
                    key,
                    EVENT_IDLE_TIMEOUT,
                    st.seg.stream_samples / RATE * 1000,
                    None,
                    st.jitter.counters.to_dict(),
                ),
                ref,
            )
        )
        res.finished = True
        res.state = None
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
            outs = segment_many([st.seg for st, _, _ in group], [it for _, _, (it, _) in group])
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
                res.state = st.to_bytes()

    def _close_if_finished(self, st: ChannelState, res: ChannelResult) -> None:
        if st.jitter.finished and st.seg.ended:
            ref = None
            res.events.append(
                (
                    self._event(
                        res.key,
                        EVENT_SESSION_END,
                        st.seg.stream_samples / RATE * 1000,
                        None,
                        st.jitter.counters.to_dict(),
                    ),
                    ref,
                )
            )
            res.finished = True
            res.state = None

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
                            {"samples_16k": ev.n_samples, "source_samples": ev.source_samples},
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
        )
        if isinstance(ev, UtteranceUpdate):
            st.parts[ev.utterance] = part + 1
            return UtteranceMessage(
                kind=KIND_UPDATE, end_sample=ev.end_sample, payload=ev.pcm16_delta, **common
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


def _to_item(c: AudioChunk) -> Chunk:
    return Chunk(
        seq=c.seq,
        position=c.position,
        n_samples=c.n_samples,
        sample_rate=c.sample_rate,
        payload=c.payload,
        encoding=c.encoding,
        end_of_stream=c.end_of_stream,
    )


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
