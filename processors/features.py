"""Cheap acoustic features at 16 kHz: streaming mel band power and per-utterance summaries.

:class:`StreamingLogMel` computes the 40-band mel energy every 10 ms (160-sample hop,
25 ms Hann window, 512-point FFT, librosa's mel filterbank without area normalisation, so
the bands sum to ~1 across 20 Hz - 8 kHz) and gives, per frame, the band power relative to
full scale (a full-scale sine reads -3.01 dBFS). Framing is causal and on the absolute
sample grid: frame ``j`` is the window ``[160 (j+1) - 400, 160 (j+1))`` of the stream (zeros
before its start), so the frames do not depend on how the audio was chunked. The band power
is the segmenter's energy gate (frames far below speech level, default -70 dBFS, need no
VAD call) and its summaries' level.

:func:`summarize` turns, with bounded state, the two halves an utterance is measured by —
:class:`AudioLevels` of the audio sent (duration, RMS loudness, peak) and
:class:`FrameStats` of its VAD frames (speech ratio, speech band power) — into an
:class:`UtteranceSummary` with an SNR estimate (mean band power of the speech frames over
the channel's noise floor).

Example::

    >>> import numpy as np
    >>> mel = StreamingLogMel()
    >>> tone = np.sin(2 * np.pi * 1000 * np.arange(1600) / 16000).astype(np.float32)
    >>> frames = mel.push(tone)
    >>> frames.power.shape, round(float(frames.energy_dbfs[-1]), 2)
    ((10,), -3.01)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Final

import librosa
import numpy as np
import numpy.typing as npt

from streamscribe.schemas.pcm import Float32Array

MEL_RATE: Final = 16000
HOP_SAMPLES: Final = 160  # 10 ms
WIN_SAMPLES: Final = 400  # 25 ms
N_FFT: Final = 512
N_MELS: Final = 40
FMIN_HZ: Final = 20.0
FMAX_HZ: Final = 8000.0
POWER_FLOOR: Final = 1e-12  # -120 dBFS: log of digital silence
NOISE_FLOOR_MIN: Final = 1e-10  # -100 dBFS: SNR is capped against this floor
PCM16_FULL_SCALE: Final = 32768.0

Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _MelBank:
    window: Float64Array
    # The 40 mel filters summed over the bands, times the power scale (band power ->
    # power relative to full scale): the band power of a frame is its power spectrum
    # weighted by these and summed (the same sum as filtering into the 40 bands and adding
    # them up, in another order: equal to ~1e-15 relative, 40× fewer products)
    band_weights: Float64Array  # [n_fft // 2 + 1]


@lru_cache(maxsize=4)
def _mel_bank(n_mels: int = N_MELS) -> _MelBank:
    window = librosa.filters.get_window("hann", WIN_SAMPLES, fftbins=True).astype(np.float64)
    filters = librosa.filters.mel(
        sr=MEL_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=FMIN_HZ, fmax=FMAX_HZ, norm=None
    ).astype(np.float64)
    # Parseval for a one-sided spectrum: mean-square of the windowed frame re the window.
    scale = 2.0 / (N_FFT * float(np.sum(window**2)))
    return _MelBank(window=window, band_weights=filters.sum(axis=0) * scale)


def warm_up() -> None:
    """Build the mel bank now: librosa's first filter takes about a second (lazy imports,
    numba), which a worker would otherwise pay on its first channel, in the middle of a
    replay or of a live call."""
    _mel_bank()


def to_db(power: npt.ArrayLike) -> Float64Array:
    """``10 log10(power)`` floored at :data:`POWER_FLOOR` (-120 dB)."""
    return 10.0 * np.log10(np.maximum(np.asarray(power, dtype=np.float64), POWER_FLOOR))


@dataclass(frozen=True)
class MelFrames:
    """Frames completed by one :meth:`StreamingLogMel.push`."""

    power: Float64Array  # [n], band power relative to full scale (linear)
    first_frame: int  # index of the first frame in the stream

    @property
    def energy_dbfs(self) -> Float64Array:
        """Band power of each frame in dBFS."""
        return to_db(self.power)


class StreamingLogMel:
    """Causal 10 ms log-mel frontend for one channel; state is 399 samples and a counter."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        self.n_mels = n_mels
        self._bank = _mel_bank(n_mels)
        self.tail: Float32Array = np.zeros(WIN_SAMPLES - 1, dtype=np.float32)
        self.n_seen = 0

    def push(self, samples: Float32Array) -> MelFrames:
        """Feed 16 kHz samples; return every frame whose window ends inside them."""
        x = np.asarray(samples, dtype=np.float32)
        buf = np.concatenate([self.tail, x])
        base = self.n_seen - len(self.tail)  # stream index of buf[0]
        n_new = self.n_seen + len(x)
        first = self.n_seen // HOP_SAMPLES  # frame j ends at HOP * (j + 1)
        last = n_new // HOP_SAMPLES  # exclusive
        self.tail = buf[len(buf) - (WIN_SAMPLES - 1) :].copy()
        self.n_seen = n_new
        if last <= first:
            return MelFrames(np.zeros(0), first_frame=first)
        ends = HOP_SAMPLES * (np.arange(first, last) + 1) - base
        idx = ends[:, None] - WIN_SAMPLES + np.arange(WIN_SAMPLES)[None, :]
        frames = buf[idx].astype(np.float64) * self._bank.window
        spec = np.fft.rfft(frames, n=N_FFT, axis=1)
        # a row-wise sum, not a matrix product: each frame's value does not depend on how
        # many frames this push completes (BLAS would block them differently)
        power = ((spec.real**2 + spec.imag**2) * self._bank.band_weights).sum(axis=1)
        return MelFrames(power=power, first_frame=first)

    def state_meta(self) -> dict[str, Any]:
        """Scalars of the state (the tail travels as an array)."""
        return {"n_seen": self.n_seen, "n_mels": self.n_mels}

    @classmethod
    def from_state(cls, meta: dict[str, Any], tail: npt.ArrayLike) -> StreamingLogMel:
        """Inverse of :meth:`state_meta` + :attr:`tail`."""
        m = cls(meta["n_mels"])
        m.n_seen = meta["n_seen"]
        m.tail = np.asarray(tail, dtype=np.float32).copy()
        return m


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class UtteranceSummary:
    """Acoustic summary of one utterance (levels in dBFS: a full-scale sine is -3.01)."""

    duration_s: float
    speech_ratio: float  # share of the duration the VAD called speech
    loudness_dbfs: float  # RMS level
    peak_dbfs: float
    snr_db: float  # speech-frame band power over the channel's noise floor
    noise_floor_dbfs: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict, rounded to 0.01 (for JSON messages)."""
        return {k: round(v, 2) + 0.0 for k, v in asdict(self).items()}


@dataclass
class AudioLevels:
    """Running level sums of the 16 kHz PCM16 audio an utterance has sent (bounded state)."""

    n_samples: int = 0
    sum_sq: float = 0.0  # in full-scale units
    peak: int = 0  # largest |pcm16|

    def add_audio(self, pcm16: npt.NDArray[np.int16]) -> None:
        """Account for emitted utterance audio."""
        if len(pcm16) == 0:
            return
        x = pcm16.astype(np.float64) / PCM16_FULL_SCALE
        self.n_samples += len(pcm16)
        self.sum_sq += float(np.dot(x, x))
        self.peak = max(self.peak, int(np.max(np.abs(pcm16.astype(np.int32)))))

    def to_meta(self) -> dict[str, Any]:
        """JSON-able state (the fields in order; flat, so no deep copy)."""
        return dict(vars(self))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> AudioLevels:
        """Inverse of :meth:`to_meta`."""
        return cls(**meta)


@dataclass
class FrameStats:
    """Running sums over an utterance's VAD frames (bounded state)."""

    frames: int = 0
    speech_frames: int = 0
    speech_power: float = 0.0  # sum of speech frames' band power
    min_power: float | None = None
    frame_samples: int = field(default=512)

    def add_frame(self, power: float, speech: bool, sign: int = 1) -> None:
        """Account for one VAD frame inside the utterance (``sign=-1`` takes it back)."""
        self.frames += sign
        if speech:
            self.speech_frames += sign
            self.speech_power += sign * power
        if sign > 0:
            self.min_power = power if self.min_power is None else min(self.min_power, power)

    def to_meta(self) -> dict[str, Any]:
        """JSON-able state (the fields in order; flat, so no deep copy)."""
        return dict(vars(self))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> FrameStats:
        """Inverse of :meth:`to_meta`."""
        return cls(**meta)


def summarize(
    levels: AudioLevels, frames: FrameStats, noise_floor: float | None, sample_rate: int
) -> UtteranceSummary:
    """The summary of one utterance; ``noise_floor`` is the channel's estimate, if any.

    >>> levels, frames = AudioLevels(), FrameStats()
    >>> levels.add_audio(np.full(16000, 16384, np.int16))
    >>> frames.add_frame(0.25, speech=True)
    >>> s = summarize(levels, frames, noise_floor=0.25e-4, sample_rate=16000).to_dict()
    >>> s["duration_s"], s["loudness_dbfs"], s["snr_db"]
    (1.0, -6.02, 40.0)
    """
    floor = noise_floor if noise_floor is not None else (frames.min_power or NOISE_FLOOR_MIN)
    floor = max(floor, NOISE_FLOOR_MIN)
    n = levels.n_samples
    rms = math.sqrt(levels.sum_sq / n) if n else 0.0
    speech = frames.speech_power / frames.speech_frames if frames.speech_frames else floor
    ratio = min(1.0, frames.speech_frames * frames.frame_samples / n) if n else 0.0
    return UtteranceSummary(
        duration_s=n / sample_rate,
        speech_ratio=ratio,
        loudness_dbfs=float(to_db(rms * rms)),
        peak_dbfs=float(to_db((levels.peak / PCM16_FULL_SCALE) ** 2)) + 0.0,
        snr_db=float(to_db(speech) - to_db(floor)),
        noise_floor_dbfs=float(to_db(floor)),
    )
