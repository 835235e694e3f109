"""Validation: every rejection reason, decoding, and admission of contract chunks (decoded once)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamscribe.core.errors import ValidationError
from streamscribe.processors.reassembly import Chunk
from streamscribe.processors.validate import (
    ValidationConfig,
    admit,
    check_chunk,
    decode_checked,
)
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.pcm import decode_payload, encode_payload

RATE = 16000


def f32_chunk(x: np.ndarray, rate: int = RATE, **kw: object) -> Chunk:
    return Chunk(0, 0, len(x), rate, np.asarray(x, "<f4").tobytes(), "pcm_f32le", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("encoding", "tolerance"), [("pcm_s16le", 1 / 32768), ("pcm_mulaw", 0.02), ("pcm_f32le", 0.0)]
)
def test_decodes_every_encoding(encoding: str, tolerance: float) -> None:
    x = np.linspace(-0.9, 0.9, 101, dtype=np.float32)
    y = decode_checked(
        encode_payload(x, encoding), encoding=encoding, sample_rate=8000, n_samples=101
    )
    assert y.dtype == np.float32 and len(y) == 101
    assert np.abs(y - x).max() <= tolerance


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_is_rejected_with_raw_bytes(bad: float) -> None:
    x = np.zeros(160, np.float32)
    x[17] = bad
    chunk = f32_chunk(x)
    with pytest.raises(ValidationError, match="1 NaN/inf") as err:
        check_chunk(chunk)
    assert err.value.raw == chunk.payload


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoding": "opus"}, "unknown encoding 'opus'"),
        ({"sample_rate": 12000}, "unsupported sample rate 12000"),
        ({"n_samples": 159}, "payload is 320 bytes, expected 159 samples x 2 bytes = 318"),
        ({"n_samples": -1}, "expected -1 samples"),
        ({"duration_ms": 20.0}, "declared duration 20.0 ms but 160 samples at 16000 Hz"),
    ],
)
def test_bad_metadata_is_rejected_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"encoding": "pcm_s16le", "sample_rate": RATE, "n_samples": 160}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        decode_checked(b"\x00" * 320, **args)  # type: ignore[arg-type]


def test_duration_within_rounding_is_accepted() -> None:
    # 1102 samples at 11.025 kHz last 99.95 ms; a producer may declare 100 ms.
    y = decode_checked(
        b"\x00" * 2204, encoding="pcm_s16le", sample_rate=11025, n_samples=1102, duration_ms=100
    )
    assert len(y) == 1102


def test_payload_size_limit() -> None:
    n = (1 << 20) // 2 + 1  # one sample over 1 MiB
    with pytest.raises(ValidationError, match="over the limit of 1048576"):
        decode_checked(b"\x00" * (2 * n), encoding="pcm_s16le", sample_rate=RATE, n_samples=n)
    small = ValidationConfig(max_payload_bytes=100)
    with pytest.raises(ValidationError, match="320 bytes is over the limit of 100"):
        decode_checked(
            b"\x00" * 320, encoding="pcm_s16le", sample_rate=RATE, n_samples=160, config=small
        )


def _audio_chunk(x: np.ndarray, encoding: str = "pcm_s16le") -> AudioChunk:
    return AudioChunk(
        session_id="s",
        channel=1,
        role="agent",
        seq=7,
        position=11200,
        n_samples=len(x),
        sample_rate=8000,
        encoding=encoding,
        captured_at_us=5,
        payload=encode_payload(x, encoding),
        end_of_stream=True,
    )


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_mulaw", "pcm_f32le"])
def test_admit_decodes_once_and_keeps_the_metadata(encoding: str) -> None:
    x = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    audio = _audio_chunk(x, encoding)
    item = admit(audio)
    assert (item.seq, item.position, item.n_samples, item.sample_rate) == (7, 11200, 800, 8000)
    assert (item.encoding, item.end_of_stream, item.payload) == (encoding, True, audio.payload)
    assert item.duration_ms == 100.0
    assert item.samples is not None
    np.testing.assert_array_equal(item.samples, decode_payload(audio.payload, encoding))
    assert check_chunk(item) is item.samples  # an admitted chunk is never decoded again


def test_admit_rejects_a_chunk_whose_declared_duration_contradicts_its_samples() -> None:
    audio = dataclasses.replace(_audio_chunk(np.zeros(800, np.float32)), n_samples=1600)
    with pytest.raises(ValidationError, match="expected 1600 samples x 2 bytes") as err:
        admit(audio)
    assert err.value.raw == audio.payload
    nan = np.zeros(800, np.float32)
    nan[3] = np.nan
    with pytest.raises(ValidationError, match="NaN/inf"):
        admit(_audio_chunk(nan, "pcm_f32le"))
