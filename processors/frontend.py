"""The segmenter's audio frontend: validate -> resample to 16 kHz -> energy gate -> frames.

One :class:`AudioFrontend` per channel turns stage items into 512-sample VAD frames:

1. **validate**: an admitted chunk brings its decoded samples (it was checked and decoded
   once, by :func:`~streamscribe.processors.validate.admit`); a bare chunk is checked and
   decoded here; a change of sample rate mid-stream, or a gap at an unsupported rate, is a
   :class:`~streamscribe.core.errors.ValidationError` raised before any state changes;
2. **resample**: :class:`~streamscribe.processors.resample.StreamingResampler`, fed at most
   :data:`MAX_BLOCK_SOURCE_S` of source audio at a time (bounds memory for long gaps); gap
   silence is generated here, and its 16 kHz span is known before it is fed;
3. **gate and frame**: each 512-sample frame gets its mean 10 ms band power
   (:class:`~streamscribe.processors.features.StreamingLogMel`); outside speech, once
   ``gate_warmup_frames`` consecutive frames had every band power under
   ``energy_gate_dbfs``, further such frames are marked ``gated`` (the caller skips the VAD).

State: the resampler's history, the mel window's tail, the samples not yet framed and the
quiet-run counter (about 4 KB).

Example::

    >>> import numpy as np
    >>> from streamscribe.processors.reassembly import Chunk
    >>> from streamscribe.processors.segmenter_types import SegmenterConfig
    >>> fe = AudioFrontend(SegmenterConfig())
    >>> silence = Chunk(0, 0, 1600, 16000, np.zeros(1600, "<i2").tobytes())
    >>> feed = fe.begin(silence)
    >>> len(fe.feed(feed)), fe.has_frame()
    (1600, True)
    >>> frame = fe.next_frame(in_speech=False)
    >>> len(frame.samples), frame.gated
    (512, False)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import ValidationError
from streamscribe.processors.features import StreamingLogMel, to_db
from streamscribe.processors.reassembly import Chunk, Gap, Item
from streamscribe.processors.resample import StreamingResampler, total_outputs
from streamscribe.processors.segmenter_types import SegmenterConfig
from streamscribe.processors.vad import FRAME_SAMPLES
from streamscribe.processors.validate import check_chunk
from streamscribe.schemas.pcm import Float32Array

# Longest stretch of source samples resampled at once (bounds memory for long gaps).
MAX_BLOCK_SOURCE_S: Final = 1


@dataclass
class Feed:
    """One item's input still to resample (transient, never part of the state)."""

    samples: Float32Array | None  # chunk samples at the source rate
    silence: int = 0  # gap samples still to generate
    flush: bool = False  # end of stream: flush the resampler after the input
    gap: tuple[int, int] | None = None  # the gap's [start, end) at 16 kHz, if a gap


@dataclass(frozen=True)
class Frame:
    """One 512-sample VAD frame ready to run (transient)."""

    samples: Float32Array
    power: float  # mean 10 ms band power (linear, re full scale)
    gated: bool  # the energy gate skips the VAD call


class AudioFrontend:
    """Per-channel validate -> resample -> gate -> frames; see the module docstring."""

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        self.resampler: StreamingResampler | None = None
        self.mel = StreamingLogMel()
        self.pending: Float32Array = np.zeros(0, dtype=np.float32)
        self.quiet_run = 0  # consecutive frames under the energy gate, outside speech

    def begin(self, item: Item) -> Feed:
        """Check ``item`` and return its input; raises before any state change if it is bad."""
        rate = item.sample_rate
        if self.resampler is not None and rate != self.resampler.source_rate:
            raise ValidationError(
                f"sample rate changed from {self.resampler.source_rate} to {rate} mid-stream",
                raw=item.payload if isinstance(item, Chunk) else None,
            )
        if isinstance(item, Gap):
            if rate not in self.config.validation.sample_rates:
                raise ValidationError(f"gap at unsupported sample rate {rate}")
            feed = Feed(None, item.n_samples)
        else:
            feed = Feed(check_chunk(item, self.config.validation), flush=item.end_of_stream)
        if self.resampler is None:
            self.resampler = StreamingResampler(rate)
        if isinstance(item, Gap) and item.n_samples:
            n_in = self.resampler.n_in
            feed.gap = (total_outputs(n_in, rate), total_outputs(n_in + item.n_samples, rate))
        return feed

    def feed(self, feed: Feed) -> Float32Array | None:
        """Resample the next block of ``feed``; the new 16 kHz samples, None when done."""
        rs = self.resampler
        if rs is None:
            return None
        block = MAX_BLOCK_SOURCE_S * rs.source_rate
        if feed.samples is not None and len(feed.samples):
            x, feed.samples = feed.samples[:block], feed.samples[block:]
            y = rs.process(x)
        elif feed.silence:
            n = min(block, feed.silence)
            feed.silence -= n
            y = rs.process(np.zeros(n, dtype=np.float32))
        elif feed.flush:
            feed.flush = False
            y = rs.flush()
        else:
            return None
        self.pending = np.concatenate([self.pending, y])
        return y

    def has_frame(self) -> bool:
        """Whether a whole frame is waiting."""
        return len(self.pending) >= FRAME_SAMPLES

    def next_frame(self, in_speech: bool) -> Frame:
        """Pop the next frame with its band power and the energy gate's verdict."""
        frame, self.pending = self.pending[:FRAME_SAMPLES], self.pending[FRAME_SAMPLES:]
        mel = self.mel.push(frame)
        power = float(mel.power.mean())
        gate = self.config.energy_gate_dbfs
        quiet = gate is not None and not in_speech and float(to_db(mel.power.max())) < gate
        self.quiet_run = self.quiet_run + 1 if quiet else 0
        return Frame(frame, power, self.quiet_run > self.config.gate_warmup_frames)

    # ---------------------------------------------------------------- state

    def state_meta(self) -> dict[str, Any]:
        """The state's scalars (arrays in :meth:`state_arrays`)."""
        rs = self.resampler
        return {
            "quiet_run": self.quiet_run,
            "resampler": rs.state_meta() if rs is not None else None,
            "mel": self.mel.state_meta(),
        }

    def state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The state's buffers."""
        rs = self.resampler
        return {
            "pending": self.pending,
            "mel_tail": self.mel.tail,
            "rs_hist": rs.history if rs is not None else np.zeros(0, np.float32),
        }

    @classmethod
    def from_state(
        cls, config: SegmenterConfig, meta: dict[str, Any], arrays: Mapping[str, npt.NDArray[Any]]
    ) -> AudioFrontend:
        """Inverse of :meth:`state_meta` + :meth:`state_arrays`."""
        fe = cls(config)
        fe.quiet_run = meta["quiet_run"]
        if meta["resampler"] is not None:
            fe.resampler = StreamingResampler.from_state(meta["resampler"], arrays["rs_hist"])
        fe.mel = StreamingLogMel.from_state(meta["mel"], arrays["mel_tail"])
        fe.pending = arrays["pending"].astype(np.float32)
        return fe
