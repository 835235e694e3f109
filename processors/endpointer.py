"""The endpointer: per-frame speech probability and band power -> utterance decisions. Pure.

Rules (per 32 ms VAD frame, following silero's ``get_speech_timestamps``), in 16 kHz
sample indices from the channel's stream start:

- speech **starts** at the first frame with ``prob >= threshold``; the utterance begins
  ``pre_roll`` earlier (never before the previous utterance's end);
- a tentative end is set at the first frame with ``prob < neg_threshold`` and cleared by a
  frame with ``prob >= threshold``; once the frames since it span ``min_silence`` (silero
  counts one frame fewer), the utterance **ends** there plus ``post_roll`` (default 100 ms,
  at most ``min_silence``, so that audio is already in);
- an utterance whose detected speech is not longer than ``min_speech`` is a blip and is
  dropped silently. Nothing is said about an utterance until it is known to pass that test
  ("confirmed"): then :class:`SpeechStarted`, followed by :class:`Advance` decisions;
- :class:`Advance` asks for the new audio since the previous one, when at least
  ``update_interval`` of it is final (never past a tentative end + post-roll, and never past
  ``max_utterance - split_window``), so advances + the closing tail == the utterance;
- **end candidate** (``speculative_finals``): at the first frame where the audio up to the
  tentative end + ``post_roll`` is in (well before ``min_silence`` has passed), the pending
  audio up to exactly that end is due at once as an :class:`Advance` flagged
  ``end_candidate``. If the silence holds, the :class:`Close` has the same end and an empty
  tail; if speech resumes, it was just an advance. Boundaries never move: a candidate is
  only emitted when its end is within the advance horizon ``max_utterance - split_window``
  (a later split can never fall before it);
- at ``max_utterance`` the utterance is **split** at the centre of the quietest frame within
  the last ``split_window`` (a ring of frame powers); the next utterance starts exactly
  there (no pre-roll);
- :meth:`Endpointer.close_open` closes an open utterance (end of stream, idle).

A closed utterance is a :class:`Close` (with its frame statistics and the channel's noise
floor, an EMA of non-speech frames' power) followed by :class:`SpeechEnded`. The
endpointer knows no audio: the channel slices the samples each decision names.

Example::

    >>> from streamscribe.processors.segmenter_types import SegmenterConfig
    >>> ep = Endpointer(SegmenterConfig())
    >>> out = [d for p in [0.9] * 10 + [0.0] * 10 for d in ep.step(p, 1e-3)]
    >>> [type(d).__name__ for d in out]
    ['SpeechStarted', 'Advance', 'Close', 'SpeechEnded']
    >>> out[1].end_sample, out[1].end_candidate   # the audio up to the end, before the wait
    (6720, True)
    >>> out[2].start_sample, out[2].end_sample, out[2].offset_sample, out[2].reason
    (0, 6720, 6720, 'silence')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from streamscribe.processors.features import NOISE_FLOOR_MIN, FrameStats
from streamscribe.processors.segmenter_types import (
    EndReason,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
)
from streamscribe.processors.vad import FRAME_SAMPLES

NOISE_FLOOR_ALPHA: Final = 0.05  # EMA weight of a new non-speech frame in the noise floor


@dataclass(frozen=True)
class Advance:
    """Audio ``[offset_sample, end_sample)`` of the open utterance is due as an update."""

    utterance: int
    start_sample: int
    offset_sample: int
    end_sample: int
    end_candidate: bool = False  # ends where the utterance ends if the silence holds


@dataclass(frozen=True)
class Close:
    """Utterance ``[start_sample, end_sample)`` is complete; its tail is from ``offset_sample``."""

    utterance: int
    start_sample: int
    end_sample: int
    offset_sample: int
    reason: EndReason
    frames: FrameStats
    noise_floor: float | None


Decision: TypeAlias = SpeechStarted | Advance | Close | SpeechEnded


class Endpointer:
    """One channel's endpointing state machine; see the module docstring."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self.ring_len = config.split_window // FRAME_SAMPLES + 2
        self.frames = 0
        self.ring_power = np.zeros(self.ring_len, dtype=np.float64)
        self.ring_speech = np.zeros(self.ring_len, dtype=np.uint8)
        self.noise: float | None = None
        self.triggered = False
        self.confirmed = False
        self.speech_start = 0
        self.temp_end: int | None = None
        self.utt = 0
        self.utt_start = 0
        self.sent = 0
        self.prev_end = 0
        self.stats = FrameStats()

    @property
    def keep_audio_from(self) -> int:
        """The first 16 kHz sample a future decision may still name."""
        if self.triggered:
            return self.sent
        return max(0, self.frames * FRAME_SAMPLES - self.config.pre_roll)

    @property
    def keep_gaps_from(self) -> int:
        """Gaps ending before this sample can no longer overlap an utterance."""
        return self.utt_start if self.triggered else self.keep_audio_from

    def step(self, prob: float, power: float) -> list[Decision]:
        """Endpointing for the next frame, given its speech probability and band power."""
        cfg = self.config
        out: list[Decision] = []
        fs = self.frames * FRAME_SAMPLES
        fe = fs + FRAME_SAMPLES
        self.frames += 1
        speech = prob >= cfg.threshold
        slot = (fe // FRAME_SAMPLES - 1) % self.ring_len
        self.ring_power[slot], self.ring_speech[slot] = power, speech
        if self.triggered:
            if speech:
                self.temp_end = None
            elif prob < cfg.neg_threshold:
                if self.temp_end is None:
                    self.temp_end = fs
                if fe - self.temp_end >= cfg.min_silence:
                    end = min(self.temp_end + cfg.post_roll, self.utt_start + cfg.max_utterance)
                    self._close(end, self.temp_end, "silence", out)
        elif speech:
            self.triggered, self.confirmed, self.temp_end = True, False, None
            self.speech_start = fs
            self.utt_start = max(fs - cfg.pre_roll, self.prev_end, 0)
            self.sent = self.utt_start
            self.stats = FrameStats()
        if not self.triggered:
            if prob < cfg.neg_threshold:
                p = max(power, NOISE_FLOOR_MIN)
                self.noise = (
                    p if self.noise is None else self.noise + NOISE_FLOOR_ALPHA * (p - self.noise)
                )
            return out
        self.stats.add_frame(power, speech)
        if not self.confirmed:
            known_end = self.temp_end if self.temp_end is not None else fe
            if known_end - self.speech_start > cfg.min_speech:
                self._confirm(out)
        if fe - self.utt_start >= cfg.max_utterance:
            self._split(out)
        if self.confirmed:
            horizon = min(fe, self.utt_start + cfg.max_utterance - cfg.split_window)
            candidate = False
            if self.temp_end is not None:
                end = self.temp_end + cfg.post_roll
                candidate = cfg.speculative_finals and end <= horizon and end > self.sent
                horizon = min(horizon, end)
            if candidate or horizon - self.sent >= cfg.update_interval:
                out.append(Advance(self.utt, self.utt_start, self.sent, horizon, candidate))
                self.sent = horizon
        return out

    def close_open(self, reason: EndReason, stream_end: int) -> list[Decision]:
        """Close the open utterance (if any) for ``reason``; ``stream_end`` = samples so far."""
        out: list[Decision] = []
        if not self.triggered:
            return out
        if self.temp_end is not None:
            detected = self.temp_end
            end = min(self.temp_end + self.config.post_roll, stream_end)
        else:
            detected = end = stream_end
        end = min(end, self.utt_start + self.config.max_utterance)
        self._close(end, detected, reason, out)
        return out

    # ---------------------------------------------------------------- internals

    def _confirm(self, out: list[Decision]) -> None:
        self.confirmed = True
        out.append(SpeechStarted(self.utt, self.utt_start))

    def _close(self, end: int, detected_end: int, reason: EndReason, out: list[Decision]) -> None:
        """End the open utterance at ``end`` (drop it if it is a blip)."""
        if not self.confirmed and detected_end - self.speech_start > self.config.min_speech:
            self._confirm(out)
        if self.confirmed:
            out.append(
                Close(
                    self.utt,
                    self.utt_start,
                    end,
                    self.sent,
                    reason,
                    replace(self.stats),
                    self.noise,
                )
            )
            out.append(SpeechEnded(self.utt, end, reason))
            self.utt += 1
            self.prev_end = end
            self.sent = end
        self.triggered, self.confirmed, self.temp_end = False, False, None

    def _split(self, out: list[Decision]) -> None:
        """Length limit reached at the current frame: end at a tentative end or split."""
        cfg = self.config
        limit = self.utt_start + cfg.max_utterance
        if self.temp_end is not None:
            self._close(min(self.temp_end + cfg.post_roll, limit), self.temp_end, "max_length", out)
            return
        last = self.frames - 1
        first = -(-(limit - cfg.split_window) // FRAME_SAMPLES)
        frames = np.arange(first, last + 1)
        powers = self.ring_power[frames % self.ring_len]
        quiet = int(frames[int(np.argmin(powers))])
        split = quiet * FRAME_SAMPLES + FRAME_SAMPLES // 2
        after = [
            (float(self.ring_power[g % self.ring_len]), bool(self.ring_speech[g % self.ring_len]))
            for g in frames[frames > quiet]
        ]
        for power, speech in after:  # frames after the split belong to the next utterance
            self.stats.add_frame(power, speech, sign=-1)
        self._close(split, split, "max_length", out)
        self.triggered, self.temp_end = True, None
        self.speech_start = self.utt_start = self.sent = split
        self.stats = FrameStats()
        for power, speech in after:
            self.stats.add_frame(power, speech)
        self._confirm(out)

    # ---------------------------------------------------------------- state

    def state_meta(self) -> dict[str, Any]:
        """The state's scalars (the power ring in :meth:`state_arrays`)."""
        return {
            "frames": self.frames,
            "noise": self.noise,
            "trig": self.triggered,
            "conf": self.confirmed,
            "speech_start": self.speech_start,
            "temp_end": self.temp_end,
            "utt": self.utt,
            "utt_start": self.utt_start,
            "sent": self.sent,
            "prev_end": self.prev_end,
            "stats": self.stats.to_meta(),
        }

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The ring of recent frames' power and speech flags."""
        return {"ring_power": self.ring_power, "ring_speech": self.ring_speech}

    @classmethod
    def from_state(
        cls, config: SegmenterConfig, meta: dict[str, Any], arrays: Mapping[str, npt.NDArray[Any]]
    ) -> Endpointer:
        """Inverse of :meth:`state_meta` + :meth:`state_arrays`; ValueError on another config."""
        ep = cls(config)
        if len(arrays["ring_power"]) != ep.ring_len:
            raise ValueError("segmenter state was saved with another split_window_s")
        ep.frames, ep.noise = meta["frames"], meta["noise"]
        ep.triggered, ep.confirmed = meta["trig"], meta["conf"]
        ep.speech_start, ep.temp_end = meta["speech_start"], meta["temp_end"]
        ep.utt, ep.utt_start, ep.sent = meta["utt"], meta["utt_start"], meta["sent"]
        ep.prev_end = meta["prev_end"]
        ep.stats = FrameStats.from_meta(meta["stats"])
        ep.ring_power = arrays["ring_power"].astype(np.float64)
        ep.ring_speech = arrays["ring_speech"].astype(np.uint8)
        return ep
