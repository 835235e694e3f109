"""Edge producer cores: chunking, pacing, fault injection, input errors, the CLI's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamscribe.core.errors import ProducerError
from streamscribe.producers.inject import Injector, parse_inject_spec
from streamscribe.producers.pacing import Pace, parse_pace
from streamscribe.producers.source import (
    AudioSource,
    check_chunk_ms,
    chunk_channel,
    default_roles,
    read_audio,
)
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.pcm import decode_payload, mulaw_decode
from tests.audio_files import write_mulaw_wav


def _src(n: int, rate: int = 16000, channels: int = 1) -> AudioSource:
    x = (np.arange(n * channels) % 2000 - 1000).astype(np.int16).reshape(n, channels)
    return AudioSource(x, rate, "pcm_s16le", "t.wav")


def test_chunks_cover_the_stream_exactly() -> None:
    src = _src(16000 + 123, rate=16000)
    chunks = list(chunk_channel(src, 0, session_id="s", role="agent", chunk_ms=100))
    assert [c.seq for c in chunks] == list(range(11))
    assert [c.position for c in chunks] == [i * 1600 for i in range(11)]
    assert sum(c.n_samples for c in chunks) == 16123 and chunks[-1].n_samples == 123
    assert [c.end_of_stream for c in chunks].count(True) == 1 and chunks[-1].end_of_stream
    pcm = np.concatenate([np.frombuffer(c.payload, "<i2") for c in chunks])
    assert np.array_equal(pcm, src.samples[:, 0])


def test_roles_and_bounds() -> None:
    assert default_roles(1) == ("speaker",)
    assert default_roles(2) == ("agent", "customer")
    assert check_chunk_ms(10) == 10 and check_chunk_ms(1000) == 1000
    for bad in (9, 1001):
        with pytest.raises(ProducerError, match="chunk-ms"):
            check_chunk_ms(bad)


def test_pace() -> None:
    assert parse_pace("asap") == Pace(None)
    assert parse_pace("x2.5").speed == 2.5
    assert Pace(1.0).due(100.0, 3600.0) == 3700.0  # absolute schedule: no drift
    assert Pace(4.0).due(0.0, 10.0) == 2.5
    for bad in ("x0", "fast", "x-1"):
        with pytest.raises(ProducerError):
            parse_pace(bad)


def test_injection_is_seeded_and_counted() -> None:
    src = _src(16000 * 20)
    spec = parse_inject_spec("duplicate=0.1,reorder=0.1,drop=0.05,garbage=0.05,nan=0.05")

    def run(seed: int) -> tuple[list[bytes], dict[str, int]]:
        inj = Injector(spec, seed)
        chunks = chunk_channel(src, 0, session_id="s", role="agent")
        return [o.value() for o in inj.apply(chunks)], dict(inj.counts)

    a, counts = run(3)
    b, _ = run(3)
    c, _ = run(4)
    assert a == b and a != c
    assert all(counts[k] > 0 for k in ("duplicate", "reorder", "drop", "garbage", "nan"))
    decoded = []
    garbage = 0
    for v in a:
        try:
            decoded.append(AudioChunk.decode(v))
        except Exception:
            garbage += 1
    assert garbage == counts["garbage"]
    nans = [d for d in decoded if d.encoding == "pcm_f32le"]
    assert len(nans) == counts["nan"]
    assert all(np.isnan(decode_payload(d.payload, d.encoding)).any() for d in nans)
    real = [d for d in decoded if d.encoding == "pcm_s16le"]
    assert len(real) == 200 - counts["drop"] + counts["duplicate"]
    assert len({d.seq for d in real}) == 200 - counts["drop"]
    assert real[-1].end_of_stream or any(d.end_of_stream for d in real)


@pytest.mark.parametrize("spec", ["drop", "drop=2", "boom=0.1", "drop=x"])
def test_bad_inject_spec(spec: str) -> None:
    with pytest.raises(ProducerError):
        parse_inject_spec(spec)


def test_read_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(ProducerError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    txt = tmp_path / "notes.wav"
    txt.write_text("not audio")
    with pytest.raises(ProducerError, match="not a readable audio file"):
        read_audio(txt)
    ok = tmp_path / "ok.wav"
    sf.write(str(ok), np.zeros(800, np.int16), 8000, subtype="ULAW")
    assert read_audio(ok).encoding == "pcm_mulaw"
    with pytest.raises(ProducerError, match="unknown encoding"):
        read_audio(ok, "opus")
    odd = tmp_path / "odd.wav"
    sf.write(str(odd), np.zeros(700, np.int16), 7000)
    with pytest.raises(ProducerError, match="sample rate 7000"):
        read_audio(odd)


@pytest.mark.parametrize(
    "args",
    [
        ["produce", "/nonexistent.wav"],
        ["produce", "{wav}", "--chunk-ms", "5"],
        ["produce", "{wav}", "--encoding", "opus"],
        ["produce", "{txt}"],
        ["produce", "{wav}", "--pace", "fast"],
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(args: list[str], tmp_path: Path) -> None:
    wav, txt = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(str(wav), np.zeros(1600, np.int16), 16000)
    txt.write_text("hello")
    argv = [a.format(wav=wav, txt=txt) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "streamscribe.cli", "--bootstrap-servers", "127.0.0.1:1", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamscribe produce: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_mic_without_portaudio_is_one_clear_line() -> None:
    from streamscribe.producers.mic import load_sounddevice

    try:
        load_sounddevice()
    except ProducerError:
        pass
    else:
        pytest.skip("PortAudio is installed here: the missing-library path cannot be shown")
    proc = subprocess.run(
        [sys.executable, "-m", "streamscribe.cli", "mic", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "PortAudio" in proc.stderr or "input device" in proc.stderr


@pytest.mark.parametrize("channels", [1, 2])
def test_mulaw_wav_payloads_are_the_files_data_bytes(tmp_path: Path, channels: int) -> None:
    """µ-law passes the edge untouched: every code, both zeros (0x7F, 0xFF) included."""
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(8000 + 37, channels), dtype=np.uint8)
    codes[:4, 0] = [0x7F, 0xFF, 0x7F, 0xFF]  # -0 and +0: a decode and re-encode merges them
    path = tmp_path / "phone.wav"
    data = write_mulaw_wav(path, codes, 8000)
    src = read_audio(path)
    assert (src.encoding, src.sample_rate, src.frames, src.channels) == (
        "pcm_mulaw",
        8000,
        len(codes),
        channels,
    )
    per_channel = [
        b"".join(c.payload for c in chunk_channel(src, ch, session_id="s", role="r", chunk_ms=20))
        for ch in range(channels)
    ]
    interleaved = np.stack([np.frombuffer(p, np.uint8) for p in per_channel], axis=1).tobytes()
    assert interleaved == data
    assert per_channel[0][:4] == bytes([0x7F, 0xFF, 0x7F, 0xFF])
    pcm, _ = sf.read(str(path), dtype="int16", always_2d=True)  # libsndfile agrees on the codes
    assert np.array_equal(mulaw_decode(per_channel[0]), pcm[:, 0])


def test_mulaw_file_with_another_encoding_is_converted(tmp_path: Path) -> None:
    codes = np.arange(256, dtype=np.uint8).reshape(-1, 1)
    path = tmp_path / "phone.wav"
    write_mulaw_wav(path, codes, 8000)
    src = read_audio(path, "pcm_s16le")
    assert src.encoding == "pcm_s16le" and src.samples.dtype == np.int16
    (chunk,) = chunk_channel(src, 0, session_id="s", role="r")
    assert np.array_equal(np.frombuffer(chunk.payload, "<i2"), mulaw_decode(codes.tobytes()))


def test_sessions_are_live_unless_read_as_fast_as_possible() -> None:
    from streamscribe.producers.file_producer import ProduceJob

    assert ProduceJob(["a.wav"], pace="realtime").is_live
    assert ProduceJob(["a.wav"], pace="x4").is_live  # someone may watch a fast replay
    assert not ProduceJob(["a.wav"], pace="asap").is_live
    assert ProduceJob(["a.wav"], pace="asap", live=True).is_live
    assert not ProduceJob(["a.wav"], pace="realtime", live=False).is_live
