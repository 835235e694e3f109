"""Edge producers on the real broker: bit-exact chunks, ordering, end of stream,
a broker restart in the middle of a real-time publish, µ-law as it is."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamscribe.broker import LocalBroker, free_port
from streamscribe.core.admin import create_topics
from streamscribe.core.settings import Settings
from streamscribe.producers.file_producer import ProduceJob, run_produce
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.pcm import decode_to_pcm16, float_to_pcm16, mulaw_encode
from streamscribe.schemas.topics import Topics
from tests.audio_files import write_mulaw_wav
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration

NEGATIVE_AND_POSITIVE_ZERO = np.tile(np.array([0x7F, 0xFF], dtype=np.uint8), 100)


def _by_channel(records, session: str) -> dict[int, list[AudioChunk]]:
    out: dict[int, list[AudioChunk]] = defaultdict(list)
    for r in records:
        if r.key == session.encode():
            c = AudioChunk.decode(r.value)
            out[c.channel].append(c)
    return out


def _check_channel(chunks: list[AudioChunk], expected_pcm: np.ndarray) -> None:
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert sum(c.end_of_stream for c in chunks) == 1 and chunks[-1].end_of_stream
    caps = [c.captured_at_us for c in chunks]
    assert caps == sorted(caps)
    pos = 0
    for c in chunks:
        assert c.position == pos
        pos += c.n_samples
    pcm = np.concatenate([decode_to_pcm16(c.payload, c.encoding) for c in chunks])
    assert pcm.dtype == np.int16
    assert np.array_equal(pcm, expected_pcm)


def test_two_cities_and_stereo_call_are_bit_exact(
    kafka_bootstrap: str, topics: Topics, broker_settings: Settings, assets: Path, tmp_path: Path
) -> None:
    two_cities = assets / "two_cities.wav"
    src, rate = sf.read(str(two_cities), dtype="int16", always_2d=True)
    assert rate == 48000
    rep = run_produce(
        ProduceJob([str(two_cities)], session_id="tc", pace="asap"),
        broker_settings,
        progress=None,
    )
    assert rep.delivery.failed == 0 and rep.delivery.delivered == rep.delivery.sent

    beck, brate = sf.read(str(assets / "beckett.wav"), dtype="int16")
    stereo = np.zeros((len(beck) * 2, 2), dtype=np.int16)
    stereo[: len(beck), 0] = beck
    stereo[len(beck) :, 1] = beck[::-1]
    path = tmp_path / "call.wav"
    sf.write(str(path), stereo, brate, subtype="PCM_16")
    rep2 = run_produce(
        ProduceJob([str(path)], session_id="call", chunk_ms=40, pace="x50"),
        broker_settings,
        progress=None,
    )
    assert rep2.delivery.failed == 0

    records = read_topic(kafka_bootstrap, topics.audio)
    assert len(records) == rep.delivery.sent + rep2.delivery.sent
    tc = _by_channel(records, "tc")
    assert list(tc) == [0]
    assert len(tc[0]) == rep.delivery.sent == -(-len(src) // 4800)
    _check_channel(tc[0], src[:, 0])
    call = _by_channel(records, "call")
    assert sorted(call) == [0, 1]
    assert {c.role for c in call[0]} == {"agent"} and {c.role for c in call[1]} == {"customer"}
    assert {r.partition for r in records if r.key == b"call"} == {
        next(r.partition for r in records if r.key == b"call")
    }
    for ch in (0, 1):
        _check_channel(call[ch], stereo[:, ch])
    assert call[0][0].session_meta is not None and call[0][0].session_meta.roles == (
        "agent",
        "customer",
    )


def test_mulaw_8k_is_sent_as_it_is(
    kafka_bootstrap: str, topics: Topics, broker_settings: Settings, assets: Path, tmp_path: Path
) -> None:
    import librosa

    y, _ = librosa.load(str(assets / "beckett.wav"), sr=8000)
    codes = np.frombuffer(mulaw_encode(float_to_pcm16(y)), dtype=np.uint8).copy()
    codes[: NEGATIVE_AND_POSITIVE_ZERO.size] = NEGATIVE_AND_POSITIVE_ZERO  # 0 after a decode
    path = tmp_path / "phone.wav"
    data = write_mulaw_wav(path, codes.reshape(-1, 1), 8000)
    expected, _ = sf.read(str(path), dtype="int16")
    rep = run_produce(ProduceJob([str(path)], session_id="phone"), broker_settings, progress=None)
    assert rep.delivery.failed == 0
    chunks = _by_channel(read_topic(kafka_bootstrap, topics.audio), "phone")[0]
    assert {c.encoding for c in chunks} == {"pcm_mulaw"} and {c.sample_rate for c in chunks} == {
        8000
    }
    assert sum(len(c.payload) for c in chunks) == len(expected)  # 1 byte a sample
    _check_channel(chunks, expected)
    assert b"".join(c.payload for c in chunks) == data  # the file's own bytes, untouched


def test_broker_restart_during_realtime_publish(assets: Path, tmp_path: Path) -> None:
    settings = Settings.from_env().with_overrides(
        broker_port=free_port(),
        broker_controller_port=free_port(),
        broker_data_dir=tmp_path / "kafka",
    )
    broker = LocalBroker(settings)
    try:
        bootstrap = broker.start()
        topics = Topics("restart.")
        create_topics(bootstrap, topics.specs(2))
        beck = assets / "beckett.wav"
        job = ProduceJob([str(beck), str(beck)], session_id="rt", pace="realtime", chunk_ms=100)
        result: dict[str, object] = {}

        edge = settings.with_overrides(
            bootstrap_servers=bootstrap, topic_prefix=topics.prefix, flush_timeout_s=120
        )

        def publish() -> None:
            result["report"] = run_produce(job, edge, progress=None)

        t = threading.Thread(target=publish)
        t.start()
        time.sleep(2.0)
        assert broker.stop() is True
        time.sleep(1.0)
        broker.start()
        t.join(timeout=180)
        assert not t.is_alive()
        report = result["report"]
        assert report.delivery.failed == 0  # type: ignore[attr-defined]
        records = read_topic(bootstrap, topics.audio)
        sent = report.delivery.sent  # type: ignore[attr-defined]
        assert len(records) == sent
        for sid in report.sessions:  # type: ignore[attr-defined]
            chunks = _by_channel(records, sid)[0]
            assert [c.seq for c in chunks] == list(range(len(chunks)))
    finally:
        broker.stop()
