"""Streaming resampler: chunked == whole == resample_poly, exact lengths, clean sines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from streamscribe.processors.resample import (
    StreamingResampler,
    available_outputs,
    design_filter,
    total_outputs,
)
from streamscribe.schemas.pcm import SUPPORTED_SAMPLE_RATES


def run_chunked(sr: int, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    r = StreamingResampler(sr)
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(r.process(x[i : i + n]))
        assert r.n_out == available_outputs(r.n_in, sr)
        i, k = i + n, k + 1
    out.append(r.flush())
    assert r.n_out == total_outputs(len(x), sr)
    return np.concatenate(out)


@pytest.mark.parametrize("sr", SUPPORTED_SAMPLE_RATES)
def test_chunked_equals_whole_and_resample_poly(sr: int) -> None:
    rng = np.random.default_rng(sr)
    x = (0.3 * rng.standard_normal(sr + 123)).astype(np.float32)
    whole = run_chunked(sr, x, [len(x)])
    assert len(whole) == math.ceil(len(x) * 16000 / sr)
    np.testing.assert_array_equal(run_chunked(sr, x, [1, 7, 441, 1000, 4096]), whole)
    np.testing.assert_array_equal(run_chunked(sr, x, [sr // 10]), whole)
    g = math.gcd(sr, 16000)
    ref = resample_poly(x.astype(np.float64), 16000 // g, sr // g)
    assert np.abs(whole - ref).max() < 1e-6


def test_16k_is_identity() -> None:
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    r = StreamingResampler(16000)
    np.testing.assert_array_equal(np.concatenate([r.process(x[:10]), r.process(x[10:])]), x)
    assert len(r.flush()) == 0 and r.n_out == 1000


@pytest.mark.parametrize(("sr", "lookahead"), [(48000, 30), (44100, 28), (8000, 10)])
def test_output_bookkeeping_is_a_fixed_function(sr: int, lookahead: int) -> None:
    f = design_filter(sr)
    assert math.ceil(f.half_len / f.up) == lookahead  # source samples held back before flush
    for n in [0, 1, 50, 4410, 48000, 123457]:
        assert available_outputs(n, sr) == max(0, math.ceil((n * f.up - f.half_len) / f.down))
        assert total_outputs(n, sr) == math.ceil(n * 16000 / sr)
        assert total_outputs(n, sr) - available_outputs(n, sr) <= math.ceil(lookahead * 16000 / sr)


def test_1khz_sine_at_48k_has_right_frequency_and_no_clicks() -> None:
    sr, f0, amp = 48000, 1000.0, 0.5
    x = (amp * np.sin(2 * np.pi * f0 * np.arange(2 * sr) / sr)).astype(np.float32)
    y = run_chunked(sr, x, [sr // 10])  # 100 ms chunks
    inner = y[200:-200]  # away from the zero-padded stream edges
    t = (np.arange(len(y)) / 16000.0)[200:-200]
    ideal = amp * np.sin(2 * np.pi * f0 * t)
    assert np.abs(inner - ideal).max() < 2e-3  # right frequency, phase (no delay) and level
    spectrum = np.abs(np.fft.rfft(inner * np.hanning(len(inner)), n=1 << 18))
    peak_hz = np.argmax(spectrum) * 16000 / (1 << 18)
    assert abs(peak_hz - f0) < 0.5
    # No discontinuity at chunk edges: the second difference never exceeds a sine's.
    bound = amp * (2 * np.pi * f0 / 16000) ** 2
    assert np.abs(np.diff(inner, 2)).max() < 1.02 * bound


@pytest.mark.parametrize("sr", [48000, 44100, 32000, 24000])
def test_anti_aliasing_rejects_tones_above_8k(sr: int) -> None:
    x = (0.5 * np.sin(2 * np.pi * 10000 * np.arange(sr) / sr)).astype(np.float32)
    y = run_chunked(sr, x, [sr // 10])[1000:-1000]
    level_db = 20 * np.log10(np.sqrt(np.mean(y**2)) / (0.5 / np.sqrt(2)))
    assert level_db < -55


def test_state_round_trip_mid_stream() -> None:
    sr = 44100
    x = np.random.default_rng(3).standard_normal(sr).astype(np.float32)
    whole = run_chunked(sr, x, [len(x)])
    r = StreamingResampler(sr)
    a = r.process(x[:12345])
    blob = r.to_bytes()
    assert len(blob) < 400
    r = StreamingResampler.from_bytes(blob)
    b = np.concatenate([r.process(x[12345:]), r.flush()])
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)
