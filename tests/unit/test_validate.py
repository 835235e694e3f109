"""Validation: every rejection reason, decoding, and the chunking-invariant conditioners."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamscribe.core.errors import ValidationError
from streamscribe.processors.reassembly import Chunk
from streamscribe.processors.validate import ChunkValidator, ValidationConfig, decode_checked
from streamscribe.schemas.pcm import encode_payload

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
        ChunkValidator().process(chunk)
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


def test_rejection_leaves_state_untouched() -> None:
    v = ChunkValidator(ValidationConfig(remove_dc=True, normalize_peak=True))
    v.process(f32_chunk(np.full(1000, 0.3, np.float32)))
    before = v.to_bytes()
    bad = np.full(1000, 0.3, np.float32)
    bad[5] = np.nan
    with pytest.raises(ValidationError):
        v.process(f32_chunk(bad))
    assert v.to_bytes() == before


def _run_in_chunks(v: ChunkValidator, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    edges = [0, *cuts, len(x)]
    return np.concatenate([v.process(f32_chunk(x[a:b])) for a, b in itertools.pairwise(edges)])


def test_dc_removal_removes_offset_and_is_chunking_invariant() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(2 * RATE) / RATE
    x = (0.25 + 0.1 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t))).astype(
        np.float32
    )
    cfg = ValidationConfig(remove_dc=True)
    whole = ChunkValidator(cfg).process(f32_chunk(x))
    assert abs(float(whole[RATE:].mean())) < 1e-3  # offset gone after the settling time
    # Everything but the offset survives (a 20 Hz corner barely touches 440 Hz).
    assert float(np.abs(whole[RATE:] - (x[RATE:] - 0.25)).max()) < 0.01
    v = ChunkValidator(cfg)
    parts = _run_in_chunks(v, x[: RATE // 2], [1, 333, 1600])
    v = ChunkValidator.from_bytes(v.to_bytes(), cfg)  # restart mid-stream
    parts = np.concatenate([parts, _run_in_chunks(v, x[RATE // 2 :], [7, 4000])])
    np.testing.assert_array_equal(parts, whole)


def test_peak_normalisation_is_bounded_and_chunking_invariant() -> None:
    cfg = ValidationConfig(normalize_peak=True, peak_target=0.9, max_gain=10.0)
    quiet = np.full(100, 0.01, np.float32)
    np.testing.assert_allclose(ChunkValidator(cfg).process(f32_chunk(quiet)), 0.1, rtol=1e-6)
    x = (np.sin(np.linspace(0, 60, 5000)) * np.linspace(0.05, 1.0, 5000)).astype(np.float32)
    whole = ChunkValidator(cfg).process(f32_chunk(x))
    assert float(np.abs(whole).max()) <= 0.9 + 1e-6
    np.testing.assert_array_equal(_run_in_chunks(ChunkValidator(cfg), x, [10, 2500, 2501]), whole)
