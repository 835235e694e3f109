"""A small chaos run of the segmenter on the real broker (issue 13): eight sessions with
duplicates, reordering, garbage, NaN, an oversized and a forged chunk, sent while the worker
is SIGKILLed three times (each time while it is busy with a burst, so inside a batch) and
restarted on the same group. It checks that every session's utterances are exactly those of
a fault-free run of the same audio, that every poisoned message is in the dead-letter topic
(each one, and nothing else), and that the last worker is alive and not crash-looping. It
prints what it injected and what it verified."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from streamscribe.core.admin import create_topics
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import dead_letters, start_worker, utterances, wait_session_end
from tests.procs import Proc

pytestmark = pytest.mark.integration

SESSIONS = 8
KILLS_AT_ROUND = (25, 50, 75)  # of 100 rounds (one chunk of every session per round)
HOUR_16K = 3600 * 16000


def _plan(assets: Path, rng: random.Random) -> tuple[list[list[tuple[bytes, bytes]]], set[str]]:
    """Per round, the (key, value) messages to send; and the sha256 of every poisoned one.

    Each session: its chunks with 10 % duplicated and 10 % swapped with their neighbour
    (never the last three: an end of stream held early declares the chunks before it lost),
    then poison inserted just before the first copy of the chunk it imitates.
    """
    src = read_audio(assets / "beckett.wav")
    poison: set[str] = set()
    per_session: list[list[tuple[bytes, bytes]]] = []
    for s in range(SESSIONS):
        sid = f"chaos-{s}"
        chunks = [
            dataclasses.replace(c, captured_at_us=now_us())
            for c in chunk_channel(src, 0, session_id=sid, role="speaker")
        ]
        order: list[AudioChunk] = []
        for c in chunks:
            order.append(c)
            if rng.random() < 0.1:
                order.append(c)
        for i in range(len(order) - 4):
            if rng.random() < 0.1:
                order[i], order[i + 1] = order[i + 1], order[i]
        bad: dict[int, list[bytes]] = {}
        garbage_at, nan_at = rng.sample(range(5, 90), 2)
        bad.setdefault(garbage_at, []).append(rng.randbytes(200))
        c = chunks[nan_at]
        nan = np.full(c.n_samples, np.nan, dtype="<f4").tobytes()
        bad.setdefault(nan_at, []).append(
            dataclasses.replace(c, encoding="pcm_f32le", payload=nan).encode()
        )
        c = chunks[40]
        if s == 0:  # 60 s in one chunk: over the payload limit
            big = dataclasses.replace(c, n_samples=960_000, payload=bytes(1_920_000))
            bad.setdefault(40, []).append(big.encode())
        if s == 1:  # one seq skipped, six hours ahead
            forged = dataclasses.replace(c, seq=41, position=c.position + 6 * HOUR_16K)
            bad.setdefault(40, []).append(forged.encode())
        out: list[tuple[bytes, bytes]] = []
        for c in order:
            for value in bad.pop(c.seq, []):
                out.append((c.key, value))
                poison.add(hashlib.sha256(value).hexdigest())
            out.append((c.key, c.encode()))
        per_session.append(out)
    rounds = max(len(x) for x in per_session)
    by_round = [[x[r] for x in per_session if r < len(x)] for r in range(rounds)]
    return by_round, poison


def _reference(kafka_bootstrap: str, topics: Topics, assets: Path) -> dict[int, bytes]:
    src = read_audio(assets / "beckett.wav")
    producer = DeliveryProducer(kafka_bootstrap)
    for c in chunk_channel(src, 0, session_id="reference", role="speaker"):
        producer.send(topics.audio, c.key, dataclasses.replace(c, captured_at_us=now_us()).encode())
    assert producer.close().failed == 0
    wait_session_end(kafka_bootstrap, topics, {("reference", 0)})
    utts = utterances(kafka_bootstrap, topics)
    return {k[2]: u.audio for k, u in utts.items() if k[0] == "reference"}


def test_chaos_eight_sessions_through_three_sigkills(
    kafka_bootstrap: str, assets: Path, tmp_path: Path
) -> None:
    rng = random.Random(13)
    topics = Topics(f"chaos{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(4))
    group = f"chaos-{uuid.uuid4().hex[:6]}"
    member = {"instance_id": f"chaos-{uuid.uuid4().hex[:6]}"}
    by_round, poison = _plan(assets, rng)
    workers: list[Proc] = []

    def start(n: int) -> Proc:
        w = start_worker(
            kafka_bootstrap,
            topics,
            tmp_path,
            group=group,
            stages="segmenter",
            log_name=f"w{n}.log",
            **member,
        )
        workers.append(w)
        return w

    try:
        worker = start(0)
        reference = _reference(kafka_bootstrap, topics, assets)
        producer = DeliveryProducer(kafka_bootstrap)
        for r, msgs in enumerate(by_round):
            for key, value in msgs:
                producer.send(topics.audio, key, value)
            producer.flush()
            if r in KILLS_AT_ROUND:  # the burst just sent is being handled: kill inside it
                time.sleep(0.05)
                worker.kill9()
                worker = start(len(workers))
            time.sleep(0.01)
        assert producer.close().failed == 0
        wait_session_end(kafka_bootstrap, topics, {(f"chaos-{s}", 0) for s in range(SESSIONS)})
        utts = utterances(kafka_bootstrap, topics)  # strict: a repeated part is identical
        dls = dead_letters(kafka_bootstrap, topics)
        assert worker.alive() and "exiting before ack" not in worker.log_text()
    finally:
        for w in workers:
            w.stop()
    sent = sum(len(m) for m in by_round)
    print(
        f"injected: {SESSIONS} sessions, {sent} messages, {len(poison)} poisoned (garbage, NaN,"
        f" one 60 s chunk, one forged position), duplicates and swaps, {len(KILLS_AT_ROUND)}"
        " SIGKILLs"
    )
    assert len(reference) == 6
    for s in range(SESSIONS):
        got = {k[2]: u.audio for k, u in utts.items() if k[0] == f"chaos-{s}"}
        assert got == reference, f"chaos-{s}"
    seen = {d.raw_sha256 for d in dls}
    assert seen == poison
    repeats = len(dls) - len(seen)
    print(
        f"verified: {SESSIONS} x {len(reference)} utterances identical to the fault-free run;"
        f" {len(poison)} poisoned messages all dead-lettered ({repeats} dead letters repeated"
        " by crash replays, same source offset); last worker alive"
    )
    offsets = {}
    for d in dls:
        assert offsets.setdefault(d.raw_sha256, (d.source_partition, d.source_offset)) == (
            d.source_partition,
            d.source_offset,
        )
