"""Per-channel segmenter core: validate -> resample -> energy gate -> VAD -> endpointing.

:class:`ChannelSegmenter` takes one reassembled item at a time (a :class:`Chunk` at its
source rate or a :class:`Gap` of silence) and returns typed events. All times are 16 kHz
sample indices from the channel's stream start (gap silence included).

Endpointing (per 32 ms VAD frame, following silero's ``get_speech_timestamps``):

- speech **starts** at the first frame with ``prob >= threshold``; the utterance begins
  ``pre_roll`` earlier (never before the previous utterance's end);
- a tentative end is set at the first frame with ``prob < neg_threshold`` and cleared by a
  frame with ``prob >= threshold``; once the frames since it span ``min_silence`` (silero
  counts one frame fewer), the utterance **ends** there plus ``post_roll`` (default 100 ms,
  at most ``min_silence``, so that audio is already in);
- an utterance whose detected speech is not longer than ``min_speech`` is a blip and is
  dropped silently. Nothing is sent for an utterance until it is known to pass that test
  ("confirmed"): then :class:`SpeechStarted` goes out, followed by updates;
- :class:`UtteranceUpdate` carries only the new audio since the previous message, sent when
  at least ``update_interval`` of it is final (never past a tentative end + post-roll, and
  never past ``max_utterance - split_window``), so deltas + final tail == the utterance;
- at ``max_utterance`` the utterance is split at the centre of the quietest frame within
  the last ``split_window``; the next utterance starts exactly there (no pre-roll);
- :meth:`ChannelSegmenter.finish` closes an open utterance (``end_of_stream`` also flushes
  the resampler; ``idle`` keeps the stream open for later chunks).

Energy gate: outside speech, once ``gate_warmup_frames`` (16, ~0.5 s) consecutive frames
have had all their 10 ms log-mel band powers below ``energy_gate_dbfs`` (-70 dBFS), further
such frames skip the VAD call and count as non-speech (probability 0); the recurrent state
is kept and only the 64-sample context moves on. Inside an utterance the VAD always runs.
Silero's state keeps drifting on zero input (it has no exact fixed point), so no skipping
rule is exactly neutral: this one leaves the three test recordings' events bit-identical
(gate on vs off), and after seconds of digital silence (gap fill, muted microphone) moves
a later boundary by at most one frame (32 ms) while saving most VAD calls there.

State is bounded: besides a few KB of filter/VAD state it holds the audio not yet sent —
the pre-roll ring (6.4 KB of PCM16) between utterances, up to ``update_interval`` plus a
frame in speech, up to ``split_window`` near the length limit. :meth:`to_bytes` /
:meth:`from_bytes` round-trip it exactly: a run split anywhere and restored emits the same
bytes as an uninterrupted one.

Example::

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

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf

from streamscribe.core.errors import SegmenterError, StreamscribeError, ValidationError
from streamscribe.processors.features import (
    NOISE_FLOOR_MIN,
    StreamingLogMel,
    SummaryAccumulator,
    UtteranceSummary,
    to_db,
)
from streamscribe.processors.reassembly import Chunk, Gap, Item, pack_state, unpack_state
from streamscribe.processors.resample import TARGET_RATE, StreamingResampler, total_outputs
from streamscribe.processors.vad import FRAME_SAMPLES, SileroVad, VadState
from streamscribe.processors.validate import ChunkValidator, ValidationConfig
from streamscribe.schemas.pcm import PCM_S16LE, Float32Array, encode_payload, float_to_pcm16

RATE: Final = TARGET_RATE
SAMPLES_PER_MS: Final = RATE // 1000
DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_NEG_THRESHOLD: Final = 0.35
DEFAULT_MIN_SILENCE_MS: Final = 300
DEFAULT_MIN_SPEECH_MS: Final = 250
DEFAULT_PRE_ROLL_MS: Final = 200
DEFAULT_POST_ROLL_MS: Final = 100
DEFAULT_MAX_UTTERANCE_S: Final = 20.0
DEFAULT_SPLIT_WINDOW_S: Final = 2.0
DEFAULT_UPDATE_INTERVAL_S: Final = 0.5
DEFAULT_ENERGY_GATE_DBFS: Final = -70.0
DEFAULT_GATE_WARMUP_FRAMES: Final = 16
NOISE_FLOOR_ALPHA: Final = 0.05  # EMA weight of a new non-speech frame in the noise floor
# Longest stretch of source samples resampled at once (bounds memory for long gaps).
MAX_BLOCK_SOURCE_S: Final = 1
STATE_VERSION: Final = 1

EndReason = Literal["silence", "max_length", "end_of_stream", "idle"]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SegmenterConfig:
    """Knobs of the segmenter; :meth:`from_settings` maps the worker settings onto them."""

    threshold: float = DEFAULT_THRESHOLD
    neg_threshold: float = DEFAULT_NEG_THRESHOLD
    min_silence_ms: int = DEFAULT_MIN_SILENCE_MS
    min_speech_ms: int = DEFAULT_MIN_SPEECH_MS
    pre_roll_ms: int = DEFAULT_PRE_ROLL_MS
    post_roll_ms: int = DEFAULT_POST_ROLL_MS
    max_utterance_s: float = DEFAULT_MAX_UTTERANCE_S
    split_window_s: float = DEFAULT_SPLIT_WINDOW_S
    update_interval_s: float = DEFAULT_UPDATE_INTERVAL_S
    energy_gate_dbfs: float | None = DEFAULT_ENERGY_GATE_DBFS  # None: always run the VAD
    gate_warmup_frames: int = DEFAULT_GATE_WARMUP_FRAMES
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.neg_threshold <= self.threshold <= 1.0:
            raise ValueError("need 0 <= neg_threshold <= threshold <= 1")
        if not 0 <= self.post_roll_ms <= self.min_silence_ms:
            raise ValueError("post_roll_ms must lie in [0, min_silence_ms]")
        if not 0 < self.split_window_s < self.max_utterance_s - self.update_interval_s:
            raise ValueError("need 0 < split_window_s < max_utterance_s - update_interval_s")
        if self.update_interval_s <= 0 or self.min_speech_ms < 0 or self.pre_roll_ms < 0:
            raise ValueError("update_interval_s must be > 0, min_speech_ms and pre_roll_ms >= 0")
        if self.max_utterance_s * 1000 <= self.pre_roll_ms + self.min_speech_ms:
            raise ValueError("max_utterance_s must exceed pre_roll_ms + min_speech_ms")

    @classmethod
    def from_settings(cls, settings: Any) -> SegmenterConfig:
        """Build from a :class:`streamscribe.core.settings.Settings`."""
        return cls(
            threshold=settings.vad_threshold,
            neg_threshold=settings.vad_neg_threshold,
            min_silence_ms=settings.min_silence_ms,
            min_speech_ms=settings.min_speech_ms,
            pre_roll_ms=settings.pre_roll_ms,
            max_utterance_s=settings.max_utterance_s,
            update_interval_s=settings.update_interval_s,
            energy_gate_dbfs=settings.energy_gate_dbfs,
            validation=ValidationConfig(max_payload_bytes=settings.max_payload_bytes),
        )

    @property
    def min_silence(self) -> int:
        return self.min_silence_ms * SAMPLES_PER_MS

    @property
    def min_speech(self) -> int:
        return self.min_speech_ms * SAMPLES_PER_MS

    @property
    def pre_roll(self) -> int:
        return self.pre_roll_ms * SAMPLES_PER_MS

    @property
    def post_roll(self) -> int:
        return self.post_roll_ms * SAMPLES_PER_MS

    @property
    def max_utterance(self) -> int:
        return round(self.max_utterance_s * RATE)

    @property
    def split_window(self) -> int:
        return round(self.split_window_s * RATE)

    @property
    def update_interval(self) -> int:
        return round(self.update_interval_s * RATE)


# --------------------------------------------------------------------------- events


def _ms(sample: int) -> float:
    return sample * 1000 / RATE


@dataclass(frozen=True)
class SpeechStarted:
    """Utterance ``utterance`` is confirmed; its audio starts at ``start_sample``."""

    utterance: int
    start_sample: int

    @property
    def start_ms(self) -> float:
        return _ms(self.start_sample)


@dataclass(frozen=True)
class UtteranceUpdate:
    """New 16 kHz PCM16 audio of an open utterance, from ``offset_sample`` on."""

    utterance: int
    start_sample: int
    offset_sample: int
    pcm16_delta: bytes

    @property
    def end_sample(self) -> int:
        return self.offset_sample + len(self.pcm16_delta) // 2

    @property
    def start_ms(self) -> float:
        return _ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return _ms(self.end_sample)


@dataclass(frozen=True)
class UtteranceFinal:
    """A complete utterance ``[start_sample, end_sample)``; its tail starts at ``offset_sample``."""

    utterance: int
    start_sample: int
    end_sample: int
    offset_sample: int
    pcm16_tail: bytes
    summary: UtteranceSummary
    reason: EndReason
    degraded: bool = False  # a gap (inserted silence) overlaps the utterance

    @property
    def start_ms(self) -> float:
        return _ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return _ms(self.end_sample)


@dataclass(frozen=True)
class SpeechEnded:
    """Speech of ``utterance`` ended at ``end_sample`` (after its :class:`UtteranceFinal`)."""

    utterance: int
    end_sample: int
    reason: EndReason


@dataclass(frozen=True)
class GapInserted:
    """Missing chunks were replaced by silence over ``[start_sample, start_sample + n_samples)``."""

    start_sample: int
    n_samples: int
    source_samples: int


Event = SpeechStarted | UtteranceUpdate | UtteranceFinal | SpeechEnded | GapInserted


@dataclass
class ChannelOutput:
    """What :func:`segment_many` returns per channel: events, or the error of its item."""

    events: list[Event] = field(default_factory=list)
    error: StreamscribeError | None = None


# --------------------------------------------------------------------------- core


@dataclass
class _Work:
    """One item being consumed by a segmenter (transient, never part of the state)."""

    seg: ChannelSegmenter
    samples: Float32Array | None  # conditioned chunk samples still to resample
    silence: int  # gap samples still to generate
    flush: bool  # end of stream: flush the resampler after the input
    events: list[Event]


@dataclass(frozen=True)
class _Frame:
    """One 512-sample VAD frame ready to run (transient)."""

    samples: Float32Array
    power: float  # mean 10 ms band power (linear, re full scale)
    gated: bool  # the energy gate skips the VAD call


class ChannelSegmenter:
    """The per-(session, channel) segmenter; see the module docstring."""

    def __init__(self, vad: SileroVad, config: SegmenterConfig | None = None) -> None:
        self.vad = vad
        self.config = config or SegmenterConfig()
        self._ring_len = self.config.split_window // FRAME_SAMPLES + 2
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next item starts a new stream."""
        self._validator = ChunkValidator(self.config.validation)
        self._resampler: StreamingResampler | None = None
        self._mel = StreamingLogMel()
        self._vad_state = VadState.initial()
        self._pending: Float32Array = np.zeros(0, dtype=np.float32)
        self._frames = 0
        self._audio: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._audio_start = 0
        self._ring_power = np.zeros(self._ring_len, dtype=np.float64)
        self._ring_speech = np.zeros(self._ring_len, dtype=np.uint8)
        self._noise: float | None = None
        self._quiet_run = 0  # consecutive frames under the energy gate, outside speech
        self._gaps: list[list[int]] = []  # [start, end) of recent gap silence, 16 kHz
        self._triggered = False
        self._confirmed = False
        self._speech_start = 0
        self._temp_end: int | None = None
        self._utt = 0
        self._utt_start = 0
        self._sent = 0
        self._prev_end = 0
        self._acc = SummaryAccumulator()
        self._ended = False

    # ---------------------------------------------------------------- public

    @property
    def stream_samples(self) -> int:
        """16 kHz samples produced so far (the stream position of the next sample)."""
        return self._audio_start + len(self._audio)

    @property
    def next_utterance(self) -> int:
        """Index the next (or currently open) utterance gets."""
        return self._utt

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open (possibly not yet confirmed)."""
        return self._triggered

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (no more items accepted)."""
        return self._ended

    def push(self, item: Item) -> list[Event]:
        """Process one reassembled item; an end-of-stream chunk also finishes the channel.

        Raises :class:`ValidationError` for a bad chunk and leaves the state untouched; to keep
        the timeline, push a :class:`Gap` of ``chunk.n_samples`` in its place.
        """
        out = segment_many([self], [item])[0]
        if out.error is not None:
            raise out.error
        return out.events

    def finish(self, reason: EndReason = "end_of_stream") -> list[Event]:
        """Close the open utterance; ``end_of_stream`` flushes the resampler and ends the stream."""
        if self._ended:
            return []
        work = _Work(self, None, 0, reason == "end_of_stream", [])
        _run([work])
        self._end(reason, work.events)
        return work.events

    # ---------------------------------------------------------------- ingest

    def _start(self, item: Item) -> _Work:
        if self._ended:
            raise SegmenterError("channel already ended; reset() before reusing it")
        rate = item.sample_rate
        if self._resampler is not None and rate != self._resampler.source_rate:
            raise ValidationError(
                f"sample rate changed from {self._resampler.source_rate} to {rate} mid-stream",
                raw=item.payload if isinstance(item, Chunk) else None,
            )
        if isinstance(item, Gap):
            if rate not in self.config.validation.sample_rates:
                raise ValidationError(f"gap at unsupported sample rate {rate}")
            work = _Work(self, None, item.n_samples, False, [])
        else:
            samples = self._validator.process(item)  # raises before any state change
            work = _Work(self, samples, 0, item.end_of_stream, [])
        if self._resampler is None:
            self._resampler = StreamingResampler(rate)
        if isinstance(item, Gap) and item.n_samples:
            n_in = self._resampler.n_in
            start = total_outputs(n_in, rate)
            end = total_outputs(n_in + item.n_samples, rate)
            self._gaps.append([start, end])
            work.events.append(GapInserted(start, end - start, item.n_samples))
        return work

    def _feed(self, work: _Work) -> bool:
        """Resample the next block of ``work``'s input; False when there was nothing left."""
        rs = self._resampler
        if rs is None:
            return False
        block = MAX_BLOCK_SOURCE_S * rs.source_rate
        if work.samples is not None and len(work.samples):
            x, work.samples = work.samples[:block], work.samples[block:]
            y = rs.process(x)
        elif work.silence:
            n = min(block, work.silence)
            work.silence -= n
            zeros = np.zeros(n, dtype=np.float32)
            y = rs.process(self._validator.condition(zeros, rs.source_rate))
        elif work.flush:
            work.flush = False
            y = rs.flush()
        else:
            return False
        self._pending = np.concatenate([self._pending, y])
        self._audio = np.concatenate([self._audio, float_to_pcm16(y)])
        return True

    # ---------------------------------------------------------------- frames

    def _has_frame(self) -> bool:
        return len(self._pending) >= FRAME_SAMPLES

    def _next_frame(self) -> _Frame:
        """Pop the next frame with its band power and the energy gate's verdict."""
        frame, self._pending = self._pending[:FRAME_SAMPLES], self._pending[FRAME_SAMPLES:]
        mel = self._mel.push(frame)
        power = float(mel.power.mean())
        gate = self.config.energy_gate_dbfs
        quiet = gate is not None and not self._triggered and float(to_db(mel.power.max())) < gate
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        return _Frame(frame, power, self._quiet_run > self.config.gate_warmup_frames)

    def _apply_frame(
        self, frame: _Frame, prob: float, state: VadState | None, events: list[Event]
    ) -> None:
        """Endpointing for one frame (``state`` is None when the gate skipped the VAD)."""
        cfg = self.config
        power = frame.power
        self._vad_state = state if state is not None else self._vad_state.skip(frame.samples)
        fs = self._frames * FRAME_SAMPLES
        fe = fs + FRAME_SAMPLES
        self._frames += 1
        speech = prob >= cfg.threshold
        slot = (fe // FRAME_SAMPLES - 1) % self._ring_len
        self._ring_power[slot], self._ring_speech[slot] = power, speech
        if self._triggered:
            if speech:
                self._temp_end = None
            elif prob < cfg.neg_threshold:
                if self._temp_end is None:
                    self._temp_end = fs
                if fe - self._temp_end >= cfg.min_silence:
                    end = min(self._temp_end + cfg.post_roll, self._utt_start + cfg.max_utterance)
                    self._close(end, self._temp_end, "silence", events)
        elif speech:
            self._triggered, self._confirmed, self._temp_end = True, False, None
            self._speech_start = fs
            self._utt_start = max(fs - cfg.pre_roll, self._prev_end, 0)
            self._sent = self._utt_start
            self._acc = SummaryAccumulator()
        if not self._triggered:
            if prob < cfg.neg_threshold:
                p = max(power, NOISE_FLOOR_MIN)
                self._noise = (
                    p
                    if self._noise is None
                    else self._noise + NOISE_FLOOR_ALPHA * (p - self._noise)
                )
            return
        self._acc.add_frame(power, speech)
        if not self._confirmed:
            known_end = self._temp_end if self._temp_end is not None else fe
            if known_end - self._speech_start > cfg.min_speech:
                self._confirm(events)
        if fe - self._utt_start >= cfg.max_utterance:
            self._split(events)
        if self._confirmed:
            horizon = min(fe, self._utt_start + cfg.max_utterance - cfg.split_window)
            if self._temp_end is not None:
                horizon = min(horizon, self._temp_end + cfg.post_roll)
            if horizon - self._sent >= cfg.update_interval:
                delta = self._slice(self._sent, horizon)
                self._acc.add_audio(delta)
                events.append(
                    UtteranceUpdate(self._utt, self._utt_start, self._sent, delta.tobytes())
                )
                self._sent = horizon

    # ---------------------------------------------------------------- utterances

    def _slice(self, start: int, end: int) -> npt.NDArray[np.int16]:
        a = start - self._audio_start
        if a < 0 or end > self.stream_samples:
            raise SegmenterError(f"audio [{start}, {end}) no longer buffered (internal error)")
        return self._audio[a : end - self._audio_start].astype("<i2")

    def _confirm(self, events: list[Event]) -> None:
        self._confirmed = True
        events.append(SpeechStarted(self._utt, self._utt_start))

    def _close(self, end: int, detected_end: int, reason: EndReason, events: list[Event]) -> None:
        """End the open utterance at ``end`` (drop it if it is a blip)."""
        if not self._confirmed and detected_end - self._speech_start > self.config.min_speech:
            self._confirm(events)
        if self._confirmed:
            tail = self._slice(self._sent, end)
            self._acc.add_audio(tail)
            degraded = any(g0 < end and g1 > self._utt_start for g0, g1 in self._gaps)
            summary = self._acc.summary(self._noise, RATE)
            events.append(
                UtteranceFinal(
                    self._utt,
                    self._utt_start,
                    end,
                    self._sent,
                    tail.tobytes(),
                    summary,
                    reason,
                    degraded,
                )
            )
            events.append(SpeechEnded(self._utt, end, reason))
            self._utt += 1
            self._prev_end = end
            self._sent = end
        self._triggered, self._confirmed, self._temp_end = False, False, None

    def _split(self, events: list[Event]) -> None:
        """Length limit reached at the current frame: end at a tentative end or split."""
        cfg = self.config
        limit = self._utt_start + cfg.max_utterance
        if self._temp_end is not None:
            self._close(
                min(self._temp_end + cfg.post_roll, limit), self._temp_end, "max_length", events
            )
            return
        last = self._frames - 1
        first = -(-(limit - cfg.split_window) // FRAME_SAMPLES)
        frames = np.arange(first, last + 1)
        powers = self._ring_power[frames % self._ring_len]
        quiet = int(frames[int(np.argmin(powers))])
        split = quiet * FRAME_SAMPLES + FRAME_SAMPLES // 2
        after = frames[frames > quiet]
        for g in after:  # frames after the split belong to the next utterance
            self._acc.add_frame(
                float(self._ring_power[g % self._ring_len]),
                bool(self._ring_speech[g % self._ring_len]),
                sign=-1,
            )
        self._close(split, split, "max_length", events)
        self._triggered, self._temp_end = True, None
        self._speech_start = self._utt_start = self._sent = split
        self._acc = SummaryAccumulator()
        for g in after:
            self._acc.add_frame(
                float(self._ring_power[g % self._ring_len]),
                bool(self._ring_speech[g % self._ring_len]),
            )
        self._confirm(events)

    def _end(self, reason: EndReason, events: list[Event]) -> None:
        """Close the open utterance for ``reason``; ``end_of_stream`` also ends the channel."""
        self._close_open(reason, events)
        if reason == "end_of_stream":
            self._ended = True
        self._trim()

    def _close_open(self, reason: EndReason, events: list[Event]) -> None:
        if not self._triggered:
            return
        stream_end = self.stream_samples
        if self._temp_end is not None:
            detected = self._temp_end
            end = min(self._temp_end + self.config.post_roll, stream_end)
        else:
            detected = end = stream_end
        end = min(end, self._utt_start + self.config.max_utterance)
        self._close(end, detected, reason, events)

    def _trim(self) -> None:
        """Drop buffered audio no future message can need."""
        if self._triggered:
            keep = self._sent
        else:
            keep = max(0, self._frames * FRAME_SAMPLES - self.config.pre_roll)
        if keep > self._audio_start:
            self._audio = self._audio[keep - self._audio_start :].copy()
            self._audio_start = keep
        gap_keep = self._utt_start if self._triggered else keep
        self._gaps = [g for g in self._gaps if g[1] > gap_keep]

    # ---------------------------------------------------------------- state

    def to_bytes(self) -> bytes:
        """The whole channel state: a JSON header plus raw buffers (typically ~10-30 KB)."""
        rs = self._resampler
        meta = {
            "v": STATE_VERSION,
            "frames": self._frames,
            "audio_start": self._audio_start,
            "noise": self._noise,
            "quiet_run": self._quiet_run,
            "gaps": self._gaps,
            "trig": self._triggered,
            "conf": self._confirmed,
            "speech_start": self._speech_start,
            "temp_end": self._temp_end,
            "utt": self._utt,
            "utt_start": self._utt_start,
            "sent": self._sent,
            "prev_end": self._prev_end,
            "ended": self._ended,
            "acc": self._acc.to_meta(),
            "validator": self._validator.state_meta(),
            "resampler": rs.state_meta() if rs is not None else None,
            "mel": self._mel.state_meta(),
        }
        arrays = {
            "pending": self._pending,
            "audio": self._audio,
            "ring_power": self._ring_power,
            "ring_speech": self._ring_speech,
            "vad_rnn": self._vad_state.rnn,
            "vad_ctx": self._vad_state.context,
            "mel_tail": self._mel.tail,
            "rs_hist": rs.history if rs is not None else np.zeros(0, np.float32),
        }
        return pack_state("segmenter", meta, arrays)

    @classmethod
    def from_bytes(
        cls, data: bytes, vad: SileroVad, config: SegmenterConfig | None = None
    ) -> ChannelSegmenter:
        """Restore a segmenter saved by :meth:`to_bytes` (same config as when it was saved)."""
        s = unpack_state(data, "segmenter")
        m, a = s.meta, s.arrays
        if m.get("v") != STATE_VERSION:
            raise SegmenterError(f"segmenter state version {m.get('v')}, expected {STATE_VERSION}")
        seg = cls(vad, config)
        if len(a["ring_power"]) != seg._ring_len:
            raise SegmenterError("segmenter state was saved with another split_window_s")
        seg._frames, seg._audio_start, seg._noise = m["frames"], m["audio_start"], m["noise"]
        seg._quiet_run = m["quiet_run"]
        seg._gaps = [list(g) for g in m["gaps"]]
        seg._triggered, seg._confirmed = m["trig"], m["conf"]
        seg._speech_start, seg._temp_end = m["speech_start"], m["temp_end"]
        seg._utt, seg._utt_start, seg._sent = m["utt"], m["utt_start"], m["sent"]
        seg._prev_end, seg._ended = m["prev_end"], m["ended"]
        seg._acc = SummaryAccumulator.from_meta(m["acc"])
        seg._validator = ChunkValidator.from_meta(m["validator"], seg.config.validation)
        if m["resampler"] is not None:
            seg._resampler = StreamingResampler.from_state(m["resampler"], a["rs_hist"])
        seg._mel = StreamingLogMel.from_state(m["mel"], a["mel_tail"])
        seg._pending = a["pending"].astype(np.float32)
        seg._audio = a["audio"].astype(np.int16)
        seg._ring_power = a["ring_power"].astype(np.float64)
        seg._ring_speech = a["ring_speech"].astype(np.uint8)
        seg._vad_state = VadState(a["vad_rnn"].astype(np.float32), a["vad_ctx"].astype(np.float32))
        return seg


# --------------------------------------------------------------------------- batching


def _run(works: Sequence[_Work]) -> None:
    """Feed every work's input block by block, running all channels' VAD frames in lockstep."""
    if not works:
        return
    vad = works[0].seg.vad
    segs = [w.seg for w in works]
    active = list(works)
    while True:
        active = [w for w in active if w.seg._feed(w)]
        stepping = [w for w in works if w.seg._has_frame()]
        while stepping:
            batch: list[tuple[_Work, _Frame]] = []
            for w in stepping:
                frame = w.seg._next_frame()
                if frame.gated:
                    w.seg._apply_frame(frame, 0.0, None, w.events)
                else:
                    batch.append((w, frame))
            if batch:
                res = vad.probs_batch(
                    np.stack([f.samples for _, f in batch]), [w.seg._vad_state for w, _ in batch]
                )
                for (w, frame), p, st in zip(batch, res.probs, res.states, strict=True):
                    w.seg._apply_frame(frame, float(p), st, w.events)
            stepping = [w for w in stepping if w.seg._has_frame()]
        for seg in segs:
            seg._trim()
        if not active:
            return


def segment_many(
    segmenters: Sequence[ChannelSegmenter], items: Sequence[Item]
) -> list[ChannelOutput]:
    """Push ``items[i]`` into ``segmenters[i]`` for all ``i``, batching their VAD calls.

    The events are exactly those each channel would produce alone (VAD rows are independent).
    A rejected item is reported in its :class:`ChannelOutput` (state untouched) and does not
    affect the other channels. The segmenters must share one :class:`SileroVad` and be distinct.

    >>> vad = SileroVad()
    >>> segs = [ChannelSegmenter(vad), ChannelSegmenter(vad)]
    >>> bad = Chunk(seq=0, position=0, n_samples=1, sample_rate=16000, payload=b"\\x00")
    >>> outs = segment_many(segs, [make_chunks(np.zeros(1600, np.float32), 16000)[0], bad])
    >>> outs[0].events, type(outs[1].error).__name__
    ([], 'ValidationError')
    """
    if len(segmenters) != len(items):
        raise SegmenterError("segment_many needs one item per segmenter")
    if len({id(s) for s in segmenters}) != len(segmenters):
        raise SegmenterError("a segmenter appears twice in one segment_many call")
    if segmenters and any(s.vad is not segmenters[0].vad for s in segmenters):
        raise SegmenterError("segment_many needs segmenters sharing one SileroVad")
    outputs = [ChannelOutput() for _ in segmenters]
    works: list[_Work] = []
    eos: list[_Work] = []
    for seg, item, out in zip(segmenters, items, outputs, strict=True):
        try:
            work = seg._start(item)
        except StreamscribeError as exc:
            out.error = exc
            continue
        out.events = work.events
        works.append(work)
        if isinstance(item, Chunk) and item.end_of_stream:
            eos.append(work)
    _run(works)
    for work in eos:
        work.seg._end("end_of_stream", work.events)
    return outputs


# --------------------------------------------------------------------------- offline


def make_chunks(
    samples: npt.ArrayLike,
    sample_rate: int,
    chunk_ms: int = 100,
    encoding: str = PCM_S16LE,
    end_of_stream: bool = True,
) -> list[Chunk]:
    """Cut one channel's float samples into contiguous chunks as an edge producer would.

    >>> [c.n_samples for c in make_chunks(np.zeros(250, np.float32), 1000)]
    [100, 100, 50]
    """
    x = np.asarray(samples, dtype=np.float32)
    step = max(1, sample_rate * chunk_ms // 1000)
    starts = list(range(0, len(x), step)) or [0]
    return [
        Chunk(
            seq=i,
            position=p,
            n_samples=len(x[p : p + step]),
            sample_rate=sample_rate,
            payload=encode_payload(x[p : p + step], encoding),
            encoding=encoding,
            end_of_stream=end_of_stream and i == len(starts) - 1,
        )
        for i, p in enumerate(starts)
    ]


@dataclass(frozen=True)
class UtteranceSpan:
    """One utterance found offline by :func:`segment_file`."""

    file: str
    channel: int
    utterance: int
    start_sample: int  # 16 kHz
    end_sample: int
    reason: EndReason
    degraded: bool
    summary: UtteranceSummary

    @property
    def start_ms(self) -> float:
        return _ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return _ms(self.end_sample)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``file``, ``channel``, ``start_ms``, ``end_ms`` and the rest."""
        return {
            "file": self.file,
            "channel": self.channel,
            "utterance": self.utterance,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "reason": self.reason,
            "degraded": self.degraded,
            "summary": self.summary.to_dict(),
        }


def spans_from_events(file: str, channel: int, events: Sequence[Event]) -> list[UtteranceSpan]:
    """The :class:`UtteranceSpan` of every :class:`UtteranceFinal` in ``events``."""
    return [
        UtteranceSpan(
            file,
            channel,
            e.utterance,
            e.start_sample,
            e.end_sample,
            e.reason,
            e.degraded,
            e.summary,
        )
        for e in events
        if isinstance(e, UtteranceFinal)
    ]


def segment_file(
    path: str | Path,
    *,
    vad: SileroVad | None = None,
    config: SegmenterConfig | None = None,
    chunk_ms: int = 100,
    encoding: str = PCM_S16LE,
) -> list[UtteranceSpan]:
    """Segment an audio file offline through the streaming core (the reference for streaming).

    The file (any rate soundfile reads, mono or multichannel) is cut into ``chunk_ms`` chunks
    encoded as ``encoding`` — what a producer would publish — and each channel runs through
    its own :class:`ChannelSegmenter`, VAD batched across channels. Spans are ordered by
    channel, then time.
    """
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    cfg = config or SegmenterConfig()
    if rate not in cfg.validation.sample_rates:
        cfg = replace(cfg, validation=replace(cfg.validation, sample_rates=(int(rate),)))
    model = vad or SileroVad()
    segs = [ChannelSegmenter(model, cfg) for _ in range(data.shape[1])]
    per_channel = [
        make_chunks(data[:, ch], int(rate), chunk_ms, encoding) for ch in range(len(segs))
    ]
    events: list[list[Event]] = [[] for _ in segs]
    for step in range(len(per_channel[0])):
        for ch, out in enumerate(segment_many(segs, [chunks[step] for chunks in per_channel])):
            if out.error is not None:
                raise out.error
            events[ch].extend(out.events)
    return [s for ch, ev in enumerate(events) for s in spans_from_events(str(path), ch, ev)]
