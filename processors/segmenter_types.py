"""The segmenter's configuration and the events it emits (no logic beyond validation).

:class:`SegmenterConfig` holds the endpointing knobs (thresholds, pre/post roll, length
limit, update interval, energy gate) and the validation limits; :meth:`~SegmenterConfig.
from_settings` maps the worker's :class:`~streamscribe.core.settings.Settings` onto it.
The events are what one channel produces, in 16 kHz sample indices from the channel's
stream start: :class:`SpeechStarted`, :class:`UtteranceUpdate` (new audio only; the
one flagged ``end_candidate`` ends where the utterance will end if the silence holds),
:class:`UtteranceFinal` (the tail and a summary), :class:`SpeechEnded` and
:class:`GapInserted`.

Example::

    >>> cfg = SegmenterConfig(min_silence_ms=400)
    >>> cfg.min_silence, cfg.pre_roll, cfg.max_utterance
    (6400, 3200, 320000)
    >>> UtteranceUpdate(0, 1600, 1600, b"\\x00\\x00" * 160).end_ms
    110.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from streamscribe.core.errors import StreamscribeError
from streamscribe.processors.features import UtteranceSummary
from streamscribe.processors.resample import TARGET_RATE
from streamscribe.processors.validate import ValidationConfig

if TYPE_CHECKING:
    from streamscribe.core.settings import Settings

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

EndReason = Literal["silence", "max_length", "end_of_stream", "idle"]


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
    speculative_finals: bool = True  # flag the update that may end the utterance
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
    def from_settings(cls, settings: Settings) -> SegmenterConfig:
        """Build from the worker's settings.

        >>> from streamscribe.core.settings import Settings
        >>> SegmenterConfig.from_settings(Settings()) == SegmenterConfig()
        True
        """
        return cls(
            threshold=settings.vad_threshold,
            neg_threshold=settings.vad_neg_threshold,
            min_silence_ms=settings.min_silence_ms,
            min_speech_ms=settings.min_speech_ms,
            pre_roll_ms=settings.pre_roll_ms,
            max_utterance_s=settings.max_utterance_s,
            update_interval_s=settings.update_interval_s,
            energy_gate_dbfs=settings.energy_gate_dbfs,
            speculative_finals=settings.speculative_finals,
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


def sample_ms(sample: int) -> float:
    """A 16 kHz sample index in milliseconds."""
    return sample * 1000 / RATE


@dataclass(frozen=True)
class SpeechStarted:
    """Utterance ``utterance`` is confirmed; its audio starts at ``start_sample``."""

    utterance: int
    start_sample: int

    @property
    def start_ms(self) -> float:
        return sample_ms(self.start_sample)


@dataclass(frozen=True)
class UtteranceUpdate:
    """New 16 kHz PCM16 audio of an open utterance, from ``offset_sample`` on.

    ``end_candidate``: the audio ends exactly where the utterance ends if the silence that
    began holds (its final then has an empty tail and the same end).
    """

    utterance: int
    start_sample: int
    offset_sample: int
    pcm16_delta: bytes
    end_candidate: bool = False

    @property
    def end_sample(self) -> int:
        return self.offset_sample + len(self.pcm16_delta) // 2

    @property
    def start_ms(self) -> float:
        return sample_ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return sample_ms(self.end_sample)


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
        return sample_ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return sample_ms(self.end_sample)


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
    skipped_source_samples: int = 0  # of a jump over the gap bound: not filled, reported


Event = SpeechStarted | UtteranceUpdate | UtteranceFinal | SpeechEnded | GapInserted


@dataclass
class ChannelOutput:
    """What one channel gave in a batched step: its events, or the error of its item."""

    events: list[Event] = field(default_factory=list)
    error: StreamscribeError | None = None
