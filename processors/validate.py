"""Validation: a chunk is rejected with a reason, or decoded (once) to float32 samples.

A chunk is rejected (:class:`~streamscribe.core.errors.ValidationError`, carrying the raw
payload) when its encoding is unknown, its sample rate is not supported, its payload is over
the size limit, its payload length is not ``n_samples`` (the declared duration) times the
bytes per sample, a declared ``duration_ms`` disagrees with ``n_samples / sample_rate``, or
a float payload holds NaN or infinity, or its channel is not one of those its session
metadata declares. Checks run before any state changes, so a rejected
chunk leaves the channel exactly as it was.

:func:`admit` is the one place a contract :class:`~streamscribe.schemas.audio.AudioChunk`
becomes a stage item: it runs every check and decodes the payload once
(:func:`~streamscribe.schemas.pcm.decode_payload`), returning a
:class:`~streamscribe.processors.reassembly.Chunk` that carries its samples; the segmenter
never decodes an admitted chunk again. :func:`check_chunk` does the same for a bare
:class:`Chunk` (offline tools, tests).

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

from dataclasses import dataclass
from typing import Final

import numpy as np

from streamscribe.core.errors import ValidationError
from streamscribe.processors.reassembly import Chunk
from streamscribe.schemas.audio import AudioChunk
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


@dataclass(frozen=True)
class ValidationConfig:
    """What validation accepts (setting ``max_payload_bytes``)."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    sample_rates: tuple[int, ...] = SUPPORTED_SAMPLE_RATES


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


def check_chunk(chunk: Chunk, config: ValidationConfig | None = None) -> Float32Array:
    """The samples of ``chunk``: its admitted ones, else validated and decoded now."""
    if chunk.samples is not None:
        return chunk.samples
    return decode_checked(
        chunk.payload,
        encoding=chunk.encoding,
        sample_rate=chunk.sample_rate,
        n_samples=chunk.n_samples,
        duration_ms=chunk.duration_ms,
        config=config,
    )


def admit(audio: AudioChunk, config: ValidationConfig | None = None) -> Chunk:
    """Validate a contract chunk and decode its payload once; :class:`ValidationError` if bad.

    >>> from streamscribe.schemas.pcm import encode_payload
    >>> c = AudioChunk(session_id="s", channel=0, role="mic", seq=3, position=4800,
    ...                n_samples=2, sample_rate=16000, encoding="pcm_s16le",
    ...                captured_at_us=1, payload=encode_payload([0.5, -0.5], "pcm_s16le"))
    >>> item = admit(c)
    >>> item.seq, item.position, item.duration_ms, item.samples.tolist()
    (3, 4800, 0.125, [0.5, -0.5])
    """
    meta = audio.session_meta
    if audio.channel < 0 or (meta is not None and audio.channel >= meta.channels):
        declared = f"its session declares {meta.channels}" if meta is not None else "none"
        raise ValidationError(
            f"channel {audio.channel} does not exist: {declared} channel(s)", raw=audio.payload
        )
    samples = decode_checked(
        audio.payload,
        encoding=audio.encoding,
        sample_rate=audio.sample_rate,
        n_samples=audio.n_samples,
        duration_ms=audio.duration_ms,
        config=config,
    )
    return Chunk(
        seq=audio.seq,
        position=audio.position,
        n_samples=audio.n_samples,
        sample_rate=audio.sample_rate,
        payload=audio.payload,
        encoding=audio.encoding,
        end_of_stream=audio.end_of_stream,
        duration_ms=audio.duration_ms,
        samples=samples,
    )
