"""The segmenter stage on the real broker with real worker processes."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from streamscribe.core.admin import create_topics
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.processors.segmenter import segment_file
from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import (
    dead_letters,
    produce,
    start_worker,
    utterances,
    wait_session_end,
)
from tests.procs import Proc

pytestmark = pytest.mark.integration

FRAME = 512  # one VAD frame at 16 kHz


@pytest.fixture(scope="module")
def seg_topics(kafka_bootstrap: str) -> Topics:
    t = Topics(f"seg{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, t.specs(4))
    return t


@pytest.fixture(scope="module")
def seg_worker(
    kafka_bootstrap: str, seg_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("segworker")
    proc = start_worker(
        kafka_bootstrap, seg_topics, tmp, group=f"seg-{uuid.uuid4().hex[:6]}", stages="segmenter"
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def clean_run(
    kafka_bootstrap: str,
    seg_topics: Topics,
    seg_worker: Proc,
    assets: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("clean")
    y16 = librosa.resample(
        sf.read(str(assets / "two_cities.wav"), dtype="float32")[0], orig_sr=48000, target_sr=16000
    )
    tc16 = tmp / "two_cities_16k.wav"
    sf.write(str(tc16), y16, 16000, subtype="PCM_16")
    y24 = tmp / "endgame.wav"
    files = {
        "beckett": assets / "beckett.wav",
        "tc": assets / "two_cities.wav",
        "tc16": tc16,
        "endgame": assets / "endgame_nagg_nell.wav",
    }
    del y24
    for sid, path in files.items():
        produce(kafka_bootstrap, seg_topics, [str(path)], session_id=sid)
    wait_session_end(kafka_bootstrap, seg_topics, {(s, 0) for s in files})
    return {"files": files}


def _spans(utts: dict, session: str) -> list[tuple[int, int]]:
    return [utts[k].span for k in sorted(k for k in utts if k[0] == session)]


def test_streaming_boundaries_equal_offline_core(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict
) -> None:
    utts = utterances(kafka_bootstrap, seg_topics)
    for sid, path in clean_run["files"].items():  # type: ignore[attr-defined]
        offline = [(round(s.start_ms * 16), round(s.end_ms * 16)) for s in segment_file(path)]
        streamed = _spans(utts, sid)
        assert streamed == offline, sid
        assert len(streamed) >= 6
    for (sid, _, _), u in utts.items():
        start, end = u.span
        assert len(u.audio) == 2 * (end - start), (sid, u.utterance)  # deltas + tail == utterance
        assert sorted(u.parts) == list(range(len(u.parts)))


def test_48k_source_segments_like_its_16k_version(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict
) -> None:
    utts = utterances(kafka_bootstrap, seg_topics)
    a, b = _spans(utts, "tc"), _spans(utts, "tc16")
    assert len(a) == len(b)
    for (s1, e1), (s2, e2) in zip(a, b, strict=True):
        assert abs(s1 - s2) <= FRAME and abs(e1 - e2) <= FRAME


def test_duplicates_and_reorders_give_identical_audio(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict, assets: Path
) -> None:
    rep = produce(
        kafka_bootstrap,
        seg_topics,
        [str(assets / "two_cities.wav")],
        session_id="tc-chaos",
        inject="duplicate=0.1,reorder=0.1",
        seed=7,
    )
    assert rep.injected["duplicate"] > 20 and rep.injected["reorder"] > 20
    wait_session_end(kafka_bootstrap, seg_topics, {("tc-chaos", 0)})
    utts = utterances(kafka_bootstrap, seg_topics)
    clean = {k[2]: u for k, u in utts.items() if k[0] == "tc"}
    chaos = {k[2]: u for k, u in utts.items() if k[0] == "tc-chaos"}
    assert sorted(chaos) == sorted(clean)
    for i in clean:
        assert chaos[i].span == clean[i].span
        assert chaos[i].audio == clean[i].audio


def test_poison_and_nan_go_to_dead_letters_and_session_goes_on(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict, assets: Path
) -> None:
    rep = produce(
        kafka_bootstrap,
        seg_topics,
        [str(assets / "beckett.wav")],
        session_id="b-poison",
        inject="garbage=0.05,nan=0.05",
        seed=11,
    )
    n_bad = rep.injected["garbage"] + rep.injected["nan"]
    assert rep.injected["garbage"] >= 1 and rep.injected["nan"] >= 1
    wait_session_end(kafka_bootstrap, seg_topics, {("b-poison", 0)})
    dls = [d for d in dead_letters(kafka_bootstrap, seg_topics) if d.key == "b-poison"]
    assert len(dls) == n_bad
    reasons = sorted(d.reason for d in dls)
    assert sum("NaN" in r for r in reasons) == rep.injected["nan"]
    assert sum("not a streamscribe Avro message" in r for r in reasons) == rep.injected["garbage"]
    assert all(d.source_topic == seg_topics.audio and d.source_offset >= 0 and d.raw for d in dls)
    utts = utterances(kafka_bootstrap, seg_topics)
    clean = {k[2]: u for k, u in utts.items() if k[0] == "beckett"}
    poisoned = {k[2]: u for k, u in utts.items() if k[0] == "b-poison"}
    assert {i: u.audio for i, u in poisoned.items()} == {i: u.audio for i, u in clean.items()}


def test_dropped_chunk_gives_one_gap_and_exact_timing(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict, assets: Path
) -> None:
    src = read_audio(assets / "beckett.wav")
    producer = DeliveryProducer(kafka_bootstrap)
    dropped = 44  # 4.4-4.5 s: between the third and fourth utterances
    for c in chunk_channel(src, 0, session_id="b-gap", role="speaker"):
        if c.seq != dropped:
            producer.send(
                seg_topics.audio, c.key, dataclasses.replace(c, captured_at_us=now_us()).encode()
            )
    assert producer.close().failed == 0
    events = wait_session_end(kafka_bootstrap, seg_topics, {("b-gap", 0)})
    gaps = [e for e in events if e.session_id == "b-gap" and e.kind == "gap"]
    assert len(gaps) == 1
    assert gaps[0].at_ms == pytest.approx(4400.0, abs=1.0)
    assert gaps[0].details["samples_16k"] == 1600
    end = next(e for e in events if e.session_id == "b-gap" and e.kind == "session_end")
    assert end.details["gaps"] == 1 and end.details["gap_samples"] == 1600
    utts = utterances(kafka_bootstrap, seg_topics)
    clean, gap = _spans(utts, "beckett"), _spans(utts, "b-gap")
    assert len(gap) == len(clean)
    for (s1, e1), (s2, e2) in zip(clean, gap, strict=True):
        if s1 > 5000 * 16:  # after the gap: the stream clock is exact
            assert abs(s1 - s2) <= FRAME and abs(e1 - e2) <= FRAME


def test_chunk_whose_duration_contradicts_its_samples_is_a_dead_letter(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict, assets: Path
) -> None:
    """The declared duration (``n_samples``) is checked where the payload is decoded, once."""
    src = read_audio(assets / "beckett.wav")
    producer = DeliveryProducer(kafka_bootstrap)
    for c in chunk_channel(src, 0, session_id="b-dur", role="speaker"):
        c = dataclasses.replace(c, captured_at_us=now_us())
        if c.seq == 30:  # a copy claiming twice its samples, before the real chunk
            bad = dataclasses.replace(c, n_samples=2 * c.n_samples)
            producer.send(seg_topics.audio, c.key, bad.encode())
        producer.send(seg_topics.audio, c.key, c.encode())
    assert producer.close().failed == 0
    wait_session_end(kafka_bootstrap, seg_topics, {("b-dur", 0)})
    dls = [d for d in dead_letters(kafka_bootstrap, seg_topics) if d.key == "b-dur"]
    assert [d.reason for d in dls] == [
        "payload is 3200 bytes, expected 3200 samples x 2 bytes = 6400"
    ]
    assert dls[0].error_type == "ValidationError" and dls[0].source_offset >= 0
    utts = utterances(kafka_bootstrap, seg_topics)
    clean = {k[2]: u.audio for k, u in utts.items() if k[0] == "beckett"}
    assert {k[2]: u.audio for k, u in utts.items() if k[0] == "b-dur"} == clean
    assert len(clean) == 6


@pytest.mark.parametrize("static", [False, True], ids=["dynamic-member", "static-member"])
def test_sigkill_mid_utterance_loses_nothing(
    kafka_bootstrap: str, assets: Path, tmp_path: Path, static: bool
) -> None:
    """A SIGKILLed segmenter restarted on the same group loses and repeats nothing.

    ``static``: the worker has a static membership id (``--instance-id``), so the restarted
    one takes its partitions back at once instead of after the old session times out.
    """
    member = {"instance_id": f"seg-{uuid.uuid4().hex[:6]}"} if static else {}
    topics = Topics(f"crash{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(4))
    group = f"crash-{uuid.uuid4().hex[:6]}"
    path = str(assets / "two_cities.wav")
    # reference: the offline core gives the no-fault utterances
    expected = [(round(s.start_ms * 16), round(s.end_ms * 16)) for s in segment_file(path)]
    first = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=group,
        stages="segmenter",
        log_name="w1.log",
        **member,
    )
    try:
        import threading

        t = threading.Thread(
            target=produce,
            args=(kafka_bootstrap, topics, [path]),
            kwargs={"session_id": "crash", "pace": "x4"},
        )
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once a few utterances are out
            if len(utterances(kafka_bootstrap, topics)) >= 4:
                break
            time.sleep(0.3)
        first.kill9()
        t.join(timeout=60)
    finally:
        first.stop()
    before = utterances(kafka_bootstrap, topics)
    assert 4 <= len(before) < len(expected)
    second = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=group,
        stages="segmenter",
        log_name="w2.log",
        **member,
    )
    try:
        wait_session_end(kafka_bootstrap, topics, {("crash", 0)})
    finally:
        second.stop()
    utts = utterances(kafka_bootstrap, topics)  # strict: a repeated part must be identical
    assert _spans(utts, "crash") == expected
    offline_audio = _offline_audio(path)
    for (_, _, i), u in utts.items():
        assert u.audio == offline_audio[i]


def _offline_audio(path: str) -> dict[int, bytes]:
    """Each utterance's audio from the core, checked against the whole stream resampled once."""
    from streamscribe.processors.resample import StreamingResampler
    from streamscribe.processors.segmenter import ChannelSegmenter, UtteranceFinal, UtteranceUpdate
    from streamscribe.processors.vad import SileroVad
    from streamscribe.processors.validate import admit
    from streamscribe.schemas.pcm import decode_payload, float_to_pcm16

    src = read_audio(path)
    seg = ChannelSegmenter(SileroVad())
    audio: dict[int, bytearray] = {}
    spans: dict[int, tuple[int, int]] = {}
    chunks = list(chunk_channel(src, 0, session_id="x", role="speaker"))
    for c in chunks:
        for ev in seg.push(admit(c)):
            if isinstance(ev, UtteranceUpdate):
                audio.setdefault(ev.utterance, bytearray()).extend(ev.pcm16_delta)
            elif isinstance(ev, UtteranceFinal):
                audio.setdefault(ev.utterance, bytearray()).extend(ev.pcm16_tail)
                spans[ev.utterance] = (ev.start_sample, ev.end_sample)
    samples = np.concatenate([decode_payload(c.payload, c.encoding) for c in chunks])
    rs = StreamingResampler(chunks[0].sample_rate)
    stream = float_to_pcm16(np.concatenate([rs.process(samples), rs.flush()])).astype("<i2")
    assert len(spans) >= 6 and sorted(audio) == sorted(spans)
    for i, (start, end) in spans.items():
        assert bytes(audio[i]) == stream[start:end].tobytes(), i
    return {k: bytes(v) for k, v in audio.items()}


def test_end_of_stream_flushes_open_utterance(
    kafka_bootstrap: str, seg_topics: Topics, clean_run: dict, tmp_path: Path, assets: Path
) -> None:
    y, sr = sf.read(str(assets / "beckett.wav"), dtype="int16")
    cut = tmp_path / "cut.wav"
    sf.write(str(cut), y[: int(5.2 * sr)], sr, subtype="PCM_16")  # ends inside an utterance
    produce(kafka_bootstrap, seg_topics, [str(cut)], session_id="b-cut")
    wait_session_end(kafka_bootstrap, seg_topics, {("b-cut", 0)})
    utts = utterances(kafka_bootstrap, seg_topics)
    last = max((k for k in utts if k[0] == "b-cut"), key=lambda k: k[2])
    final = utts[last].final
    assert final is not None and final.reason == "end_of_stream"
    assert final.end_sample == pytest.approx(5.2 * 16000, abs=FRAME)
    assert np.frombuffer(utts[last].audio, "<i2").size == final.end_sample - final.start_sample


def test_idle_timeout_finalises_a_session_that_never_ended(
    kafka_bootstrap: str, assets: Path, tmp_path: Path
) -> None:
    topics = Topics(f"idle{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(4))
    src = read_audio(assets / "beckett.wav")
    proc = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=f"idle-{uuid.uuid4().hex[:6]}",
        stages="segmenter",
        idle_timeout_s="3",
    )
    try:
        producer = DeliveryProducer(kafka_bootstrap)
        for c in chunk_channel(src, 0, session_id="b-idle", role="speaker"):
            if c.seq < 52:  # 5.2 s, inside the fourth utterance; no end-of-stream chunk
                producer.send(
                    topics.audio, c.key, dataclasses.replace(c, captured_at_us=now_us()).encode()
                )
        assert producer.close().failed == 0
        events = wait_session_end(kafka_bootstrap, topics, {("b-idle", 0)}, timeout_s=60)
    finally:
        proc.stop()
    kinds = [e.kind for e in events if e.session_id == "b-idle"]
    assert kinds.count("idle_timeout") == 1 and "session_end" not in kinds
    utts = utterances(kafka_bootstrap, topics)
    last = utts[("b-idle", 0, 3)].final
    assert last is not None and last.reason == "idle"
    assert last.end_sample == pytest.approx(52 * 1600, abs=FRAME)
    assert len(utts) == 4
