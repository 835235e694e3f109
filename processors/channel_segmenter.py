"""One channel's segmenter, and the batched call that runs many of them on one shared VAD.

:class:`ChannelSegmenter` chains the :mod:`~streamscribe.processors.frontend` (validate ->
resample -> gate -> frames), the channel's Silero state, the pure
:mod:`~streamscribe.processors.endpointer` and the 16 kHz PCM16 audio an utterance may
still need, and turns the endpointer's decisions into the events of
:mod:`~streamscribe.processors.segmenter_types` (audio sliced, summaries computed, gaps
marked). Its public per-frame protocol (:meth:`~ChannelSegmenter.begin`,
:meth:`~ChannelSegmenter.feed`, :meth:`~ChannelSegmenter.next_frame`,
:meth:`~ChannelSegmenter.apply`, :meth:`~ChannelSegmenter.settle`) is what
:class:`Segmenters` drives: like sherpa-onnx's ``decode_streams`` on its recognizer,
:meth:`Segmenters.step` pushes one item into each of many channels and runs all their VAD
frames in lockstep, one ORT call per round (rows are independent, so the events are exactly
each channel's alone).

Energy gate: silero's state keeps drifting on zero input (it has no exact fixed point), so
no skipping rule is exactly neutral: the gate leaves the three test recordings' events
bit-identical (gate on vs off), and after seconds of digital silence (gap fill, muted
microphone) moves a later boundary by at most one frame (32 ms) while saving most VAD calls.

State is bounded: besides a few KB of filter/VAD state it holds the audio not yet sent —
the pre-roll ring (6.4 KB of PCM16) between utterances, up to ``update_interval`` plus a
frame in speech, up to ``split_window`` near the length limit. :meth:`state_meta` /
:meth:`state_arrays` (one JSON header and named buffers, packed once by whoever owns the
channel) round-trip it exactly: a run split anywhere and restored emits the same bytes as an
uninterrupted one.

Example::

    >>> import numpy as np
    >>> from streamscribe.processors.offline import make_chunks
    >>> from streamscribe.processors.vad import SileroVad
    >>> seg = ChannelSegmenter(SileroVad())
    >>> silence = make_chunks(np.zeros(16000, np.float32), 16000)
    >>> [seg.push(c) for c in silence][-1], seg.stream_samples
    ([], 16000)
    >>> restored = ChannelSegmenter.from_bytes(seg.to_bytes(), SileroVad())
    >>> restored.stream_samples, restored.next_utterance
    (16000, 0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import SegmenterError, StreamscribeError
from streamscribe.processors.endpointer import Advance, Close, Decision, Endpointer
from streamscribe.processors.features import AudioLevels, summarize
from streamscribe.processors.frontend import AudioFrontend, Feed, Frame
from streamscribe.processors.reassembly import Chunk, Item, pack_state, unpack_state
from streamscribe.processors.segmenter_types import (
    RATE,
    ChannelOutput,
    EndReason,
    Event,
    GapInserted,
    SegmenterConfig,
    UtteranceFinal,
    UtteranceUpdate,
)
from streamscribe.processors.vad import SileroVad, VadState
from streamscribe.schemas.pcm import float_to_pcm16

STATE_VERSION: Final = 2
STATE_KIND: Final = "segmenter"


class ChannelSegmenter:
    """The per-(session, channel) segmenter; see the module docstring."""

    def __init__(self, vad: SileroVad, config: SegmenterConfig | None = None) -> None:
        self.vad = vad
        self.config = config or SegmenterConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next item starts a new stream."""
        self.frontend = AudioFrontend(self.config)
        self.endpointer = Endpointer(self.config)
        self.vad_state = VadState.initial()
        self._audio: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._audio_start = 0
        self._gaps: list[list[int]] = []  # [start, end) of recent gap silence, 16 kHz
        self._levels = AudioLevels()  # of the open utterance's audio sent so far
        self._ended = False

    @property
    def stream_samples(self) -> int:
        """16 kHz samples produced so far (the stream position of the next sample)."""
        return self._audio_start + len(self._audio)

    @property
    def next_utterance(self) -> int:
        """Index the next (or currently open) utterance gets."""
        return self.endpointer.utt

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open (possibly not yet confirmed)."""
        return self.endpointer.triggered

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (no more items accepted)."""
        return self._ended

    def push(self, item: Item) -> list[Event]:
        """Process one item; an end-of-stream chunk also finishes the channel.

        Raises :class:`ValidationError` for a bad chunk and leaves the state untouched; to keep
        the timeline, push a :class:`Gap` of ``chunk.n_samples`` in its place.
        """
        out = Segmenters(self.vad).step([self], [item])[0]
        if out.error is not None:
            raise out.error
        return out.events

    def finish(
        self, reason: EndReason = "end_of_stream", *, flush: bool | None = None
    ) -> list[Event]:
        """Close the open utterance; ``end_of_stream`` flushes the resampler and ends the stream.

        ``flush=True`` flushes the resampler for another reason too (an idle timeout that
        ends the channel for good: the last audio received belongs to its last utterance).
        """
        return Segmenters(self.vad).finish(self, reason, flush=flush)

    # ------------------------------------------------------- the per-frame protocol

    def begin(self, item: Item, events: list[Event]) -> Feed:
        """Accept ``item`` (raises before any state change if it is bad); its input to feed."""
        if self._ended:
            raise SegmenterError("channel already ended; reset() before reusing it")
        feed = self.frontend.begin(item)
        if feed.gap is not None:
            start, end = feed.gap
            self._gaps.append([start, end])
            declared = getattr(item, "declared_samples", None) or item.n_samples
            events.append(
                GapInserted(start, end - start, item.n_samples, declared - item.n_samples)
            )
        return feed

    def feed(self, feed: Feed) -> bool:
        """Resample the next block of ``feed``; False when there was nothing left."""
        y = self.frontend.feed(feed)
        if y is None:
            return False
        self._audio = np.concatenate([self._audio, float_to_pcm16(y)])
        return True

    def has_frame(self) -> bool:
        """Whether a frame is ready for :meth:`next_frame`."""
        return self.frontend.has_frame()

    def next_frame(self) -> Frame:
        """The next frame, with its band power and whether the energy gate skips the VAD."""
        return self.frontend.next_frame(self.endpointer.triggered)

    def apply(self, frame: Frame, prob: float, state: VadState | None, events: list[Event]) -> None:
        """Take the VAD's verdict on ``frame`` (``state`` None: the gate skipped the VAD)."""
        self.vad_state = state if state is not None else self.vad_state.skip(frame.samples)
        self._decide(self.endpointer.step(prob, frame.power), events)

    def settle(self) -> None:
        """Drop buffered audio no future message can need (after each round of frames)."""
        keep = self.endpointer.keep_audio_from
        if keep > self._audio_start:
            self._audio = self._audio[keep - self._audio_start :].copy()
            self._audio_start = keep
        gap_keep = self.endpointer.keep_gaps_from
        self._gaps = [g for g in self._gaps if g[1] > gap_keep]

    def end(self, reason: EndReason, events: list[Event]) -> None:
        """Close the open utterance for ``reason``; ``end_of_stream`` also ends the channel."""
        self._decide(self.endpointer.close_open(reason, self.stream_samples), events)
        if reason == "end_of_stream":
            self._ended = True
        self.settle()

    # ---------------------------------------------------------------- internals

    def _decide(self, decisions: Sequence[Decision], events: list[Event]) -> None:
        for d in decisions:
            if isinstance(d, Advance):
                delta = self._slice(d.offset_sample, d.end_sample)
                self._levels.add_audio(delta)
                events.append(
                    UtteranceUpdate(
                        d.utterance,
                        d.start_sample,
                        d.offset_sample,
                        delta.tobytes(),
                        end_candidate=d.end_candidate,
                    )
                )
            elif isinstance(d, Close):
                tail = self._slice(d.offset_sample, d.end_sample)
                self._levels.add_audio(tail)
                end, start = d.end_sample, d.start_sample
                degraded = any(g0 < end and g1 > start for g0, g1 in self._gaps)
                summary = summarize(self._levels, d.frames, d.noise_floor, RATE)
                self._levels = AudioLevels()
                final = UtteranceFinal(
                    utterance=d.utterance,
                    start_sample=start,
                    end_sample=end,
                    offset_sample=d.offset_sample,
                    pcm16_tail=tail.tobytes(),
                    summary=summary,
                    reason=d.reason,
                    degraded=degraded,
                )
                events.append(final)
            else:
                events.append(d)

    def _slice(self, start: int, end: int) -> npt.NDArray[np.int16]:
        a = start - self._audio_start
        if a < 0 or end > self.stream_samples:
            raise SegmenterError(f"audio [{start}, {end}) no longer buffered (internal error)")
        return self._audio[a : end - self._audio_start].astype("<i2")

    # ---------------------------------------------------------------- state

    def state_meta(self) -> dict[str, Any]:
        """The state's scalars, JSON-able (its buffers are in :meth:`state_arrays`)."""
        return {
            "v": STATE_VERSION,
            "audio_start": self._audio_start,
            "gaps": self._gaps,
            "ended": self._ended,
            "levels": self._levels.to_meta(),
            "frontend": self.frontend.state_meta(),
            "endpointer": self.endpointer.state_meta(),
        }

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The state's buffers (names unique across frontend, VAD and endpointer)."""
        return {
            "audio": self._audio,
            "vad_rnn": self.vad_state.rnn,
            "vad_ctx": self.vad_state.context,
            **self.frontend.state_arrays(),
            **self.endpointer.state_arrays(),
        }

    @classmethod
    def from_state(
        cls,
        meta: Mapping[str, Any],
        arrays: Mapping[str, npt.NDArray[Any]],
        vad: SileroVad,
        config: SegmenterConfig | None = None,
    ) -> ChannelSegmenter:
        """Inverse of :meth:`state_meta` + :meth:`state_arrays` (same config as when saved)."""
        if meta.get("v") != STATE_VERSION:
            raise SegmenterError(
                f"segmenter state version {meta.get('v')}, expected {STATE_VERSION}"
            )
        seg = cls(vad, config)
        try:
            seg.endpointer = Endpointer.from_state(seg.config, meta["endpointer"], arrays)
        except ValueError as exc:
            raise SegmenterError(str(exc)) from None
        seg.frontend = AudioFrontend.from_state(seg.config, meta["frontend"], arrays)
        seg.vad_state = VadState(
            arrays["vad_rnn"].astype(np.float32), arrays["vad_ctx"].astype(np.float32)
        )
        seg._audio = arrays["audio"].astype(np.int16)
        seg._audio_start = meta["audio_start"]
        seg._gaps = [list(g) for g in meta["gaps"]]
        seg._levels = AudioLevels.from_meta(meta["levels"])
        seg._ended = meta["ended"]
        return seg

    def to_bytes(self) -> bytes:
        """The channel's state on its own (typically ~10-30 KB)."""
        return pack_state(STATE_KIND, self.state_meta(), self.state_arrays())

    @classmethod
    def from_bytes(
        cls, data: bytes, vad: SileroVad, config: SegmenterConfig | None = None
    ) -> ChannelSegmenter:
        """Restore a segmenter saved by :meth:`to_bytes` (same config as when it was saved)."""
        s = unpack_state(data, STATE_KIND)
        return cls.from_state(s.meta, s.arrays, vad, config)


@dataclass
class _Work:
    """One item being consumed by a channel (transient, never part of the state)."""

    channel: ChannelSegmenter
    feed: Feed
    events: list[Event]


class Segmenters:
    """The batched call on the shared VAD: one item into each of many channels at once.

    >>> from streamscribe.processors.offline import make_chunks
    >>> vad = SileroVad()
    >>> segs = Segmenters(vad)
    >>> a, b = ChannelSegmenter(vad), ChannelSegmenter(vad)
    >>> bad = Chunk(seq=0, position=0, n_samples=1, sample_rate=16000, payload=b"\\x00")
    >>> outs = segs.step([a, b], [make_chunks(np.zeros(1600, np.float32), 16000)[0], bad])
    >>> outs[0].events, type(outs[1].error).__name__
    ([], 'ValidationError')
    """

    def __init__(self, vad: SileroVad) -> None:
        self.vad = vad

    def step(
        self, channels: Sequence[ChannelSegmenter], items: Sequence[Item]
    ) -> list[ChannelOutput]:
        """Push ``items[i]`` into ``channels[i]`` for all ``i``, batching their VAD calls.

        The events are exactly those each channel would produce alone. A rejected item is
        reported in its :class:`ChannelOutput` (state untouched) and does not affect the
        other channels. The channels must be distinct and use this VAD.
        """
        if len(channels) != len(items):
            raise SegmenterError("a batched step needs one item per channel")
        if len({id(c) for c in channels}) != len(channels):
            raise SegmenterError("a channel appears twice in one batched step")
        if any(c.vad is not self.vad for c in channels):
            raise SegmenterError("a batched step needs channels sharing its SileroVad")
        outputs = [ChannelOutput() for _ in channels]
        works: list[_Work] = []
        eos: list[_Work] = []
        for channel, item, out in zip(channels, items, outputs, strict=True):
            try:
                feed = channel.begin(item, out.events)
            except StreamscribeError as exc:
                out.error = exc
                continue
            work = _Work(channel, feed, out.events)
            works.append(work)
            if isinstance(item, Chunk) and item.end_of_stream:
                eos.append(work)
        self._run(works)
        for work in eos:
            work.channel.end("end_of_stream", work.events)
        return outputs

    def finish(
        self, channel: ChannelSegmenter, reason: EndReason, *, flush: bool | None = None
    ) -> list[Event]:
        """Close ``channel``'s open utterance; ``end_of_stream`` flushes and ends the stream
        (``flush``: whether the resampler is flushed; default for ``end_of_stream`` only)."""
        if channel.ended:
            return []
        flushing = reason == "end_of_stream" if flush is None else flush
        work = _Work(channel, Feed(None, flush=flushing), [])
        self._run([work])
        channel.end(reason, work.events)
        return work.events

    def _run(self, works: Sequence[_Work]) -> None:
        """Feed every work's input block by block, running all channels' frames in lockstep."""
        active = list(works)
        while works:
            active = [w for w in active if w.channel.feed(w.feed)]
            stepping = [w for w in works if w.channel.has_frame()]
            while stepping:
                batch: list[tuple[_Work, Frame]] = []
                for w in stepping:
                    frame = w.channel.next_frame()
                    if frame.gated:
                        w.channel.apply(frame, 0.0, None, w.events)
                    else:
                        batch.append((w, frame))
                if batch:
                    res = self.vad.probs_batch(
                        np.stack([f.samples for _, f in batch]),
                        [w.channel.vad_state for w, _ in batch],
                    )
                    for (w, frame), p, st in zip(batch, res.probs, res.states, strict=True):
                        w.channel.apply(frame, float(p), st, w.events)
                stepping = [w for w in stepping if w.channel.has_frame()]
            for w in works:
                w.channel.settle()
            if not active:
                return


def segment_many(
    segmenters: Sequence[ChannelSegmenter], items: Sequence[Item]
) -> list[ChannelOutput]:
    """:meth:`Segmenters.step` on the segmenters' shared VAD (one item per segmenter)."""
    if not segmenters:
        return []
    vad = segmenters[0].vad
    if any(s.vad is not vad for s in segmenters):
        raise SegmenterError("segment_many needs segmenters sharing one SileroVad")
    return Segmenters(vad).step(segmenters, items)
