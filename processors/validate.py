"""Validation of decoded chunks: reject with a reason, or return float32 samples.

A chunk is rejected (:class:`~streamscribe.core.errors.ValidationError`, carrying the raw
payload) when its encoding is unknown, its sample rate is not supported, its payload is over
the size limit, its payload length is not ``n_samples`` times the bytes per sample, its
declared duration disagrees with ``n_samples / sample_rate``, or a float payload holds NaN
or infinity. Checks run before any state changes, so a rejected chunk leaves the channel
exactly as it was.

:class:`ChunkValidator` adds two optional, stateful conditioners, both chunking-invariant
(the same output whatever the chunk boundaries):

- DC removal: a one-pole high-pass ``y[n] = g(x[n] - x[n-1]) + a y[n-1]`` with unity gain
  at Nyquist and a configurable corner (default 20 Hz);
- peak normalisation: gain ``target / running_peak`` where the running peak is tracked per
  sample and floored so the gain never exceeds ``max_gain``.

Example::

    >>> import numpy as np
    >>> from streamscribe.schemas.pcm import encode_payload
    >>> x = np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32)
    >>> decode_checked(encode_payload(x, "pcm_s16le"), encoding="pcm_s16le",
    ...                sample_rate=16000, n_samples=4).tolist()
    [0.0, 0.5, -0.5, 0.25]
    >>> try:
    ...     decode_checked(b"\\x00" * 6, encoding="pcm_s16le", sample_rate=16000, n_samples=4)
    ... except ValidationError as err:
    ...     print(err.reason)
    payload is 6 bytes, expected 4 samples x 2 bytes = 8
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from scipy.signal import lfilter

from streamscribe.core.errors import ValidationError
from streamscribe.processors.reassembly import Chunk, pack_state, unpack_state
from streamscribe.schemas.pcm import (
    BYTES_PER_SAMPLE,
    ENCODINGS,
    PCM_F32LE,
    SUPPORTED_SAMPLE_RATES,
    Float32Array,
    decode_payload,
)

DEFAULT_MAX_PAYLOAD_BYTES: Final = 1 << 20
# A declared duration may be rounded to whole milliseconds by the producer.
DURATION_TOLERANCE_MS: Final = 1.0
DEFAULT_DC_CUTOFF_HZ: Final = 20.0
DEFAULT_PEAK_TARGET: Final = 0.9
DEFAULT_MAX_GAIN: Final = 10.0


@dataclass(frozen=True)
class ValidationConfig:
    """What validation accepts and how it conditions samples (settings ``max_payload_bytes``)."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    sample_rates: tuple[int, ...] = SUPPORTED_SAMPLE_RATES
    remove_dc: bool = False
    dc_cutoff_hz: float = DEFAULT_DC_CUTOFF_HZ
    normalize_peak: bool = False
    peak_target: float = DEFAULT_PEAK_TARGET
    max_gain: float = DEFAULT_MAX_GAIN


def decode_checked(
    payload: bytes,
    *,
    encoding: str,
    sample_rate: int,
    n_samples: int,
    duration_ms: float | None = None,
    config: ValidationConfig | None = None,
) -> Float32Array:
    """Check a payload against its metadata and decode it; :class:`ValidationError` if bad."""
    cfg = config or ValidationConfig()
    if encoding not in BYTES_PER_SAMPLE:
        raise ValidationError(
            f"unknown encoding {encoding!r}; expected one of {ENCODINGS}", raw=payload
        )
    if sample_rate not in cfg.sample_rates:
        raise ValidationError(
            f"unsupported sample rate {sample_rate}; expected one of {cfg.sample_rates}",
            raw=payload,
        )
    if len(payload) > cfg.max_payload_bytes:
        raise ValidationError(
            f"payload of {len(payload)} bytes is over the limit of {cfg.max_payload_bytes}",
            raw=payload,
        )
    width = BYTES_PER_SAMPLE[encoding]
    if n_samples < 0 or len(payload) != n_samples * width:
        raise ValidationError(
            f"payload is {len(payload)} bytes, expected {n_samples} samples x {width} bytes"
            f" = {n_samples * width}",
            raw=payload,
        )
    if duration_ms is not None:
        expected_ms = n_samples * 1000.0 / sample_rate
        if not abs(expected_ms - duration_ms) <= DURATION_TOLERANCE_MS:
            raise ValidationError(
                f"declared duration {duration_ms} ms but {n_samples} samples at {sample_rate} Hz"
                f" last {expected_ms:.3f} ms",
                raw=payload,
            )
    samples = decode_payload(payload, encoding)
    if encoding == PCM_F32LE and not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise ValidationError(f"float payload holds {bad} NaN/inf samples", raw=payload)
    return samples


@dataclass
class ChunkValidator:
    """Per-channel validator with the optional DC-removal and peak-normalisation state.

    >>> v = ChunkValidator(ValidationConfig(remove_dc=True))
    >>> c = Chunk(seq=0, position=0, n_samples=16000, sample_rate=16000,
    ...           payload=np.full(16000, 0.5, "<f4").tobytes(), encoding="pcm_f32le")
    >>> abs(float(v.process(c)[-1])) < 1e-3   # a constant offset decays away
    True
    """

    config: ValidationConfig = field(default_factory=ValidationConfig)
    dc_x: float = 0.0  # last input sample of the high-pass
    dc_y: float = 0.0  # last output sample of the high-pass
    peak: float = 0.0  # running peak seen by the normaliser

    def process(self, chunk: Chunk) -> Float32Array:
        """Validate and decode ``chunk``, then condition it; state changes only on success."""
        samples = decode_checked(
            chunk.payload,
            encoding=chunk.encoding,
            sample_rate=chunk.sample_rate,
            n_samples=chunk.n_samples,
            duration_ms=chunk.duration_ms,
            config=self.config,
        )
        return self.condition(samples, chunk.sample_rate)

    def condition(self, samples: Float32Array, sample_rate: int) -> Float32Array:
        """Apply the enabled conditioners to already valid samples (also used for gap silence)."""
        out = samples
        if self.config.remove_dc and len(out):
            a = math.exp(-2.0 * math.pi * self.config.dc_cutoff_hz / sample_rate)
            g = (1.0 + a) / 2.0
            x = out.astype(np.float64)
            # zi for lfilter([g, -g], [1, -a]) continuing from (x[-1], y[-1]).
            zi = np.array([a * self.dc_y - g * self.dc_x])
            y, _ = lfilter([g, -g], [1.0, -a], x, zi=zi)
            self.dc_x, self.dc_y = float(x[-1]), float(y[-1])
            out = y.astype(np.float32)
        if self.config.normalize_peak and len(out):
            floor = self.config.peak_target / self.config.max_gain
            running = np.maximum.accumulate(np.maximum(np.abs(out), max(self.peak, floor)))
            self.peak = float(running[-1])
            out = (out * (self.config.peak_target / running)).astype(np.float32)
        return out

    def to_bytes(self) -> bytes:
        """Compact state (three floats)."""
        return pack_state("validator", self.state_meta())

    def state_meta(self) -> dict[str, Any]:
        """The state as a JSON-able dict (embedded in the segmenter's state)."""
        return {"dc_x": self.dc_x, "dc_y": self.dc_y, "peak": self.peak}

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], config: ValidationConfig | None = None
    ) -> ChunkValidator:
        """Inverse of :meth:`state_meta`."""
        return cls(config or ValidationConfig(), meta["dc_x"], meta["dc_y"], meta["peak"])

    @classmethod
    def from_bytes(cls, data: bytes, config: ValidationConfig | None = None) -> ChunkValidator:
        """Restore a validator saved by :meth:`to_bytes`."""
        return cls.from_meta(unpack_state(data, "validator").meta, config)
