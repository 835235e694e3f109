"""Streaming band power: full-scale references, chunking invariance, the 40 mel bands."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from streamscribe.processors.features import (
    FMAX_HZ,
    FMIN_HZ,
    HOP_SAMPLES,
    MEL_RATE,
    N_FFT,
    N_MELS,
    WIN_SAMPLES,
    StreamingLogMel,
    to_db,
)


def _frames(x: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    mel = StreamingLogMel()
    powers, firsts, i, k = [], [], 0, 0
    while i < len(x):
        out = mel.push(x[i : i + sizes[k % len(sizes)]])
        powers.append(out.power)
        firsts.append(out.first_frame)
        i, k = i + sizes[k % len(sizes)], k + 1
    return np.concatenate(powers), firsts


def test_a_full_scale_sine_reads_minus_3_dbfs_and_digital_silence_the_floor() -> None:
    t = np.arange(MEL_RATE) / MEL_RATE
    for hz in (300.0, 1000.0, 4000.0):
        tone = np.sin(2 * np.pi * hz * t).astype(np.float32)
        power, _ = _frames(tone, [MEL_RATE])
        # frames past the first window (the zeros before the stream start are in it)
        assert to_db(power[3:]) == pytest.approx(-3.01, abs=0.05)
    power, _ = _frames(np.zeros(1600, np.float32), [1600])
    assert len(power) == 10 and np.all(to_db(power) == -120.0)


def test_frames_do_not_depend_on_how_the_audio_was_chunked() -> None:
    rng = np.random.default_rng(7)
    x = (0.1 * rng.standard_normal(3 * MEL_RATE)).astype(np.float32)
    whole, _ = _frames(x, [len(x)])
    for sizes in ([512], [160], [1, 999, 37], [4000, 80]):
        chunked, _ = _frames(x, sizes)
        assert np.array_equal(chunked, whole)
    assert len(whole) == len(x) // HOP_SAMPLES


def test_band_power_is_the_sum_of_the_40_mel_bands() -> None:
    """One dot product with the summed filterbank gives the same band power as filtering
    the power spectrum into the 40 librosa mel bands and adding them up (to rounding)."""
    rng = np.random.default_rng(3)
    x = (0.2 * rng.standard_normal(MEL_RATE)).astype(np.float32)
    power, _ = _frames(x, [512])
    window = librosa.filters.get_window("hann", WIN_SAMPLES, fftbins=True)
    filters = librosa.filters.mel(
        sr=MEL_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN_HZ, fmax=FMAX_HZ, norm=None
    ).astype(np.float64)
    padded = np.concatenate([np.zeros(WIN_SAMPLES - 1, np.float32), x])
    expected = []
    for j in range(len(x) // HOP_SAMPLES):
        end = HOP_SAMPLES * (j + 1) + WIN_SAMPLES - 1
        frame = padded[end - WIN_SAMPLES : end].astype(np.float64) * window
        spec = np.abs(np.fft.rfft(frame, n=N_FFT)) ** 2
        bands = filters @ spec  # the 40 band energies
        expected.append(bands.sum() * 2.0 / (N_FFT * np.sum(window**2)))
    np.testing.assert_allclose(power, expected, rtol=1e-12)
