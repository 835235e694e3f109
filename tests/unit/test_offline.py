"""Unit tests of the offline transcription core (segmenter core + Moonshine tiny-en, CPU)."""

from __future__ import annotations

import doctest
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamscribe.core.errors import ContractError
from streamscribe.processors import offline as offline_module
from streamscribe.processors.asr import (
    SAMPLE_RATE,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)
from streamscribe.processors.offline import (
    UtteranceText,
    file_chunks,
    format_json_lines,
    format_text,
    transcribe_file,
    utterance_audio,
)
from streamscribe.processors.segmenter import make_chunks, segment_file
from streamscribe.processors.vad import SileroVad
from tests.wer import wer, word_errors

REFERENCES = Path(__file__).parents[1] / "data" / "references.json"


@pytest.fixture(scope="module")
def references() -> dict[str, str]:
    refs: dict[str, str] = json.loads(REFERENCES.read_text(encoding="utf-8"))
    return refs


@pytest.fixture(scope="module")
def model() -> MoonshineAsr:
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    return asr


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """beckett on channel 0, then two_cities (resampled to 16 kHz) on channel 1 after it.

    Returns the file and the time (ms) at which channel 1's audio begins.
    """
    beckett = read_audio_16k(bundled_recording("beckett.wav"))
    two_cities = read_audio_16k(bundled_recording("two_cities.wav"))
    n = len(beckett) + len(two_cities)
    data = np.zeros((n, 2), dtype=np.float32)
    data[: len(beckett), 0] = beckett
    data[len(beckett) :, 1] = two_cities
    path = tmp_path_factory.mktemp("offline") / "stereo.wav"
    sf.write(str(path), data, SAMPLE_RATE, subtype="PCM_16")
    return path, len(beckett) * 1000 / SAMPLE_RATE


def _joined(results: list[UtteranceText]) -> str:
    return " ".join(r.text for r in results)


def _spans(results: list[UtteranceText]) -> list[tuple[int, float, float]]:
    return [(r.channel, r.start_ms, r.end_ms) for r in results]


def test_two_cities_wer(model: MoonshineAsr, vad: SileroVad, references: dict[str, str]) -> None:
    path = bundled_recording("two_cities.wav")  # 48 kHz mono: resampled by the segmenter
    results = transcribe_file(path, asr=model, vad=vad)
    # Measured: 12 utterances, WER 0.059 (7 errors / 119 words: "a season" x2, "That was",
    # "We all going", "going to act", "noisyest"; punctuation ignored).
    assert wer(references["two_cities.wav"], _joined(results)) <= 0.10
    assert len(results) == 12
    assert {r.channel for r in results} == {0}
    assert all(r.file == str(path) for r in results)
    assert results[0].text.startswith("It was the best of times")
    assert results[0].start_ms == pytest.approx(1016.0)
    assert all(0.0 < r.confidence <= 1.0 for r in results)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(results))
    # Exactly the segmenter's utterances (same core, same chunking and encoding).
    assert _spans(results) == [(s.channel, s.start_ms, s.end_ms) for s in segment_file(path)]


def test_beckett_word_errors(
    model: MoonshineAsr, vad: SileroVad, references: dict[str, str]
) -> None:
    results = transcribe_file(bundled_recording("beckett.wav"), asr=model, vad=vad)
    # Measured: 6 utterances, 1 word error ("Fell better."), WER 0.083.
    assert word_errors(references["beckett.wav"], _joined(results)) <= 1
    assert [r.text for r in results[:2]] == ["Ever tried.", "Ever failed."]
    assert len(results) == 6


def test_stereo_channels_and_order(
    model: MoonshineAsr,
    vad: SileroVad,
    references: dict[str, str],
    stereo: tuple[Path, float],
) -> None:
    path, ch1_from_ms = stereo
    results = transcribe_file(path, asr=model, vad=vad)
    left = [r for r in results if r.channel == 0]
    right = [r for r in results if r.channel == 1]
    assert {r.channel for r in results} == {0, 1}
    # Stream order: every channel-0 utterance (beckett) precedes every channel-1 one.
    assert results == left + right
    assert [r.start_ms for r in results] == sorted(r.start_ms for r in results)
    assert left[-1].end_ms <= ch1_from_ms + 100  # post-roll may reach into silence
    assert right[0].start_ms >= ch1_from_ms
    # Measured: channel 0 has 1 word error ("Fell better."), channel 1 WER 0.059 (7 / 119).
    assert word_errors(references["beckett.wav"], _joined(left)) <= 1
    assert wer(references["two_cities.wav"], _joined(right)) <= 0.10
    assert _spans(results) == sorted(
        ((s.channel, s.start_ms, s.end_ms) for s in segment_file(path)), key=lambda t: t[1]
    )


def test_file_chunks_match_make_chunks(stereo: tuple[Path, float]) -> None:
    path, _ = stereo
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    read = list(file_chunks(path, chunk_ms=100))
    assert {r for r, _ in read} == {rate}
    for channel in range(2):
        expected = make_chunks(data[:, channel], rate, 100)
        assert [chunks[channel] for _, chunks in read] == expected
    assert sum(1 for _, chunks in read if chunks[0].end_of_stream) == 1


def test_file_chunks_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 3), dtype=np.float32), 8000, subtype="PCM_16")
    read = list(file_chunks(path))
    assert len(read) == 1
    rate, chunks = read[0]
    assert rate == 8000 and len(chunks) == 3
    assert all(c.n_samples == 0 and c.end_of_stream and c.payload == b"" for c in chunks)


def test_silent_file_has_no_utterances(model: MoonshineAsr, vad: SileroVad, tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(SAMPLE_RATE * 2, dtype=np.float32), SAMPLE_RATE)
    assert transcribe_file(path, asr=model, vad=vad) == []


def test_unreadable_file_is_a_contract_error(model: MoonshineAsr, tmp_path: Path) -> None:
    path = tmp_path / "not_audio.wav"
    path.write_bytes(b"this is not a wav file")
    with pytest.raises(ContractError, match="not a readable audio file"):
        transcribe_file(path, asr=model)


def test_utterance_audio_scaling() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    audio = utterance_audio([pcm[:4], pcm[4:]])
    assert audio.dtype == np.float32
    assert audio.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]


def test_formats() -> None:
    results = [
        UtteranceText("a.wav", 0, 400.0, 1500.0, "Ever tried.", 0.9),
        UtteranceText("a.wav", 1, 754_999.0, 756_000.0, 'He said "no".', 0.25),
    ]
    assert format_text(results) == '[00:00.4] ch0: Ever tried.\n[12:34.9] ch1: He said "no".'
    lines = format_json_lines(results).splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in results]
    assert json.loads(lines[1]) == {
        "file": "a.wav",
        "channel": 1,
        "start_ms": 754_999.0,
        "end_ms": 756_000.0,
        "text": 'He said "no".',
        "confidence": 0.25,
    }
    assert format_text([]) == "" and format_json_lines([]) == ""


def test_doctests() -> None:
    failed, attempted = doctest.testmod(offline_module, optionflags=doctest.ELLIPSIS)
    assert attempted >= 5
    assert failed == 0
