"""Hostile inputs of issue 13 on the real broker, each beside a good session, through one
segmenter worker that must survive them all (each test fails on the code before its fix):
a 60-second chunk (its dead letter used to be unsendable: a crash loop), a position forged
six hours ahead (used to stall the worker), a session id reused after its end (used to
overwrite the first run's utterances), and a sample-rate change mid-stream (used to drop
the audio before it, with one dead letter for many chunks)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamscribe.core.admin import create_topics
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.events import DeadLetter, now_us
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import dead_letters, start_worker, utterances, wait_session_end
from tests.procs import Proc

pytestmark = pytest.mark.integration

HOUR_16K = 3600 * 16000
BECKETT_CHUNKS = 100
BECKETT_UTTERANCES = 6


@pytest.fixture(scope="module")
def rel_topics(kafka_bootstrap: str) -> Topics:
    t = Topics(f"rel{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, t.specs(4))
    return t


@pytest.fixture(scope="module")
def rel_worker(
    kafka_bootstrap: str, rel_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("relworker")
    proc = start_worker(
        kafka_bootstrap,
        rel_topics,
        tmp,
        group=f"rel-{uuid.uuid4().hex[:6]}",
        stages="segmenter",
        idle_timeout_s="4",
    )
    try:
        yield proc
    finally:
        proc.stop()


def _chunks(assets: Path, session: str) -> list[AudioChunk]:
    src = read_audio(assets / "beckett.wav")
    return [
        dataclasses.replace(c, captured_at_us=now_us())
        for c in chunk_channel(src, 0, session_id=session, role="speaker")
    ]


def _send(bootstrap: str, topics: Topics, chunks: list[AudioChunk]) -> None:
    producer = DeliveryProducer(bootstrap)
    for c in chunks:
        producer.send(topics.audio, c.key, c.encode())
    assert producer.close().failed == 0


def _dls(bootstrap: str, topics: Topics, session: str) -> list[DeadLetter]:
    return [d for d in dead_letters(bootstrap, topics) if d.key == session]


def _wait_dls(bootstrap: str, topics: Topics, session: str, n: int) -> list[DeadLetter]:
    deadline = time.monotonic() + 120
    dls = _dls(bootstrap, topics, session)
    while len(dls) < n and time.monotonic() < deadline:
        time.sleep(1.0)
        dls = _dls(bootstrap, topics, session)
    return dls


@pytest.fixture(scope="module")
def good(kafka_bootstrap: str, rel_topics: Topics, rel_worker: Proc, assets: Path) -> dict:
    """A clean beckett session: the reference every attacked session is compared to."""
    _send(kafka_bootstrap, rel_topics, _chunks(assets, "good"))
    wait_session_end(kafka_bootstrap, rel_topics, {("good", 0)})
    utts = utterances(kafka_bootstrap, rel_topics)
    clean = {k[2]: u for k, u in utts.items() if k[0] == "good"}
    assert len(clean) == BECKETT_UTTERANCES
    return clean


def _session(kafka_bootstrap: str, topics: Topics, sid: str) -> dict:
    return {k[2]: u for k, u in utterances(kafka_bootstrap, topics).items() if k[0] == sid}


def test_a_60_second_chunk_is_dead_lettered_and_the_worker_goes_on(
    kafka_bootstrap: str, rel_topics: Topics, rel_worker: Proc, good: dict, assets: Path
) -> None:
    chunks = _chunks(assets, "big")
    c = chunks[30]
    samples = 60 * 16000
    big = dataclasses.replace(c, n_samples=samples, payload=bytes(2 * samples))  # 1.92 MB
    _send(kafka_bootstrap, rel_topics, [*chunks[:30], big, *chunks[30:]])
    after = _chunks(assets, "after-big")  # a session that starts after it
    _send(kafka_bootstrap, rel_topics, after)
    wait_session_end(kafka_bootstrap, rel_topics, {("big", 0), ("after-big", 0)})
    (dl,) = _dls(kafka_bootstrap, rel_topics, "big")
    assert dl.reason == "payload of 1920000 bytes is over the limit of 1048576"
    assert dl.raw_truncated and dl.raw_size == len(big.encode())
    assert dl.source_offset >= 0 and len(dl.raw) == 262_144
    assert rel_worker.alive() and "exiting before ack" not in rel_worker.log_text()
    for sid in ("big", "after-big"):
        got = _session(kafka_bootstrap, rel_topics, sid)
        assert {i: u.audio for i, u in got.items()} == {i: u.audio for i, u in good.items()}


def test_a_position_forged_six_hours_ahead_is_dead_lettered_and_costs_nothing(
    kafka_bootstrap: str, rel_topics: Topics, rel_worker: Proc, good: dict, assets: Path
) -> None:
    chunks = _chunks(assets, "forged")
    c = chunks[30]
    forged = dataclasses.replace(c, seq=31, position=c.position + 6 * HOUR_16K)
    _send(kafka_bootstrap, rel_topics, [*chunks[:30], forged, *chunks[30:]])
    events = wait_session_end(kafka_bootstrap, rel_topics, {("forged", 0)})
    (dl,) = _dls(kafka_bootstrap, rel_topics, "forged")
    assert dl.reason == (
        "position 345648000 of seq 31 contradicts the seq order: it is 345600000 samples past"
        " the stream position 48000, more than its 1 missing chunk(s) can hold (1048576)"
    )
    end = next(e for e in events if e.session_id == "forged" and e.kind == "session_end")
    assert end.details["gaps"] == 0 and end.details["contradicting"] == 1
    got = _session(kafka_bootstrap, rel_topics, "forged")
    assert {i: u.audio for i, u in got.items()} == {i: u.audio for i, u in good.items()}


def test_a_reused_session_id_is_refused_and_never_overwrites_the_first_run(
    kafka_bootstrap: str, rel_topics: Topics, rel_worker: Proc, good: dict, assets: Path
) -> None:
    _send(kafka_bootstrap, rel_topics, _chunks(assets, "reused"))
    wait_session_end(kafka_bootstrap, rel_topics, {("reused", 0)})
    first = _session(kafka_bootstrap, rel_topics, "reused")
    assert {i: u.audio for i, u in first.items()} == {i: u.audio for i, u in good.items()}
    _send(kafka_bootstrap, rel_topics, _chunks(assets, "reused"))  # the same id, again
    dls = _wait_dls(kafka_bootstrap, rel_topics, "reused", BECKETT_CHUNKS)
    assert len(dls) == BECKETT_CHUNKS
    assert len({d.source_offset for d in dls}) == BECKETT_CHUNKS
    assert all(d.reason.endswith("a session id cannot be reused") for d in dls)
    then = _session(kafka_bootstrap, rel_topics, "reused")
    assert sorted(then) == sorted(first)
    for i, u in first.items():
        assert sorted(then[i].parts) == sorted(u.parts) and then[i].audio == u.audio


def test_a_sample_rate_change_keeps_the_audio_before_and_dead_letters_each_chunk_once(
    kafka_bootstrap: str, rel_topics: Topics, rel_worker: Proc, good: dict, assets: Path
) -> None:
    chunks = _chunks(assets, "rate")
    changed = []
    for c in chunks:
        if c.seq >= 50:  # from 5 s on, the same audio at 8 kHz
            pcm = np.frombuffer(c.payload, "<i2")[::2].tobytes()
            c = dataclasses.replace(c, sample_rate=8000, n_samples=c.n_samples // 2, payload=pcm)
        changed.append(c)
    _send(kafka_bootstrap, rel_topics, changed)
    events = wait_session_end(kafka_bootstrap, rel_topics, {("rate", 0)})
    ends = [
        e.kind for e in events if e.session_id == "rate" and e.kind.endswith(("end", "timeout"))
    ]
    assert "idle_timeout" in ends  # its end-of-stream chunk was at 8 kHz too: refused
    dls = _dls(kafka_bootstrap, rel_topics, "rate")
    assert len(dls) == 50 and len({d.source_offset for d in dls}) == 50
    assert {d.reason for d in dls} == {"sample rate changed from 16000 to 8000 mid-stream"}
    got = _session(kafka_bootstrap, rel_topics, "rate")
    before = [i for i, u in good.items() if u.span[1] <= 50 * 1600]
    assert len(before) >= 3
    for i in before:
        assert got[i].span == good[i].span and got[i].audio == good[i].audio
