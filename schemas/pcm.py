"""Audio payload encodings of the contract: how samples become bytes and back.

Three encodings travel on ``streamscribe.audio``:

- ``pcm_s16le``: signed 16-bit little-endian integers, 2 bytes a sample;
- ``pcm_mulaw``: G.711 µ-law, 1 byte a sample (telephony, usually 8 kHz);
- ``pcm_f32le``: 32-bit little-endian floats in [-1, 1], 4 bytes a sample.

Example::

    >>> import numpy as np
    >>> x = np.array([0.0, 0.5, -0.25], dtype=np.float32)
    >>> decode_payload(encode_payload(x, "pcm_s16le"), "pcm_s16le").round(3).tolist()
    [0.0, 0.5, -0.25]
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import ContractError

PCM_S16LE: Final = "pcm_s16le"
PCM_MULAW: Final = "pcm_mulaw"
PCM_F32LE: Final = "pcm_f32le"
ENCODINGS: Final = (PCM_S16LE, PCM_MULAW, PCM_F32LE)
BYTES_PER_SAMPLE: Final = {PCM_S16LE: 2, PCM_MULAW: 1, PCM_F32LE: 4}
SUPPORTED_SAMPLE_RATES: Final = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)

PCM16_SCALE: Final = np.float32(32768.0)  # full scale of 16-bit PCM
_MULAW_BIAS: Final = 0x84
_MULAW_CLIP: Final = 32635

Float32Array = npt.NDArray[np.float32]


def bytes_per_sample(encoding: str) -> int:
    """Bytes one sample takes in ``encoding``; :class:`ContractError` if unknown."""
    try:
        return BYTES_PER_SAMPLE[encoding]
    except KeyError:
        raise ContractError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}") from None


def _mulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_MULAW_TABLE: Final = _mulaw_decode_table()


def mulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """G.711 µ-law encode 16-bit PCM (the classic segment/mantissa algorithm)."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _MULAW_CLIP) + _MULAW_BIAS
    exponent = np.floor(np.log2(mag >> 7 | 1)).astype(np.int32)
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return code.astype(np.uint8).tobytes()


def mulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """G.711 µ-law decode to 16-bit PCM."""
    return _MULAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def pcm16_to_float(pcm: npt.NDArray[np.integer[Any]]) -> Float32Array:
    """16-bit PCM to float32 in [-1, 1): ``x / 32768`` (the one place this is done).

    >>> pcm16_to_float(np.array([16384, -32768], np.int16)).tolist()
    [0.5, -1.0]
    """
    return pcm.astype(np.float32) / PCM16_SCALE


def float_to_pcm16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] to int16 with rounding and clipping."""
    x = np.asarray(samples, dtype=np.float64)
    return np.clip(np.round(x * PCM16_SCALE), -32768, 32767).astype(np.int16)


def encode_payload(samples: npt.ArrayLike, encoding: str) -> bytes:
    """Encode mono samples. Integer input is taken as 16-bit PCM, float as [-1, 1]."""
    arr = np.asarray(samples)
    if encoding == PCM_F32LE:
        if arr.dtype.kind in "iu":
            return pcm16_to_float(arr).astype("<f4").tobytes()
        return arr.astype("<f4").tobytes()
    pcm = arr.astype(np.int16) if arr.dtype.kind in "iu" else float_to_pcm16(arr)
    if encoding == PCM_S16LE:
        return pcm.astype("<i2").tobytes()
    if encoding == PCM_MULAW:
        return mulaw_encode(pcm)
    raise ContractError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def decode_payload(data: bytes, encoding: str) -> Float32Array:
    """Decode a payload to float32 samples in [-1, 1].

    Raises :class:`ContractError` for an unknown encoding or a byte count that is not a
    whole number of samples. NaN/inf in float payloads are returned as they are: finding
    them is the validator's job, which rejects the chunk with a reason.
    """
    width = bytes_per_sample(encoding)
    if len(data) % width:
        raise ContractError(
            f"payload of {len(data)} bytes is not a whole number of {width}-byte samples",
            raw=data,
        )
    if encoding == PCM_S16LE:
        return pcm16_to_float(np.frombuffer(data, dtype="<i2"))
    if encoding == PCM_MULAW:
        return pcm16_to_float(mulaw_decode(data))
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def decode_to_pcm16(data: bytes, encoding: str) -> npt.NDArray[np.int16]:
    """Decode a payload to int16 PCM (lossless for ``pcm_s16le``)."""
    if encoding == PCM_S16LE:
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    if encoding == PCM_MULAW:
        return mulaw_decode(data)
    return float_to_pcm16(decode_payload(data, encoding))
