"""The recognizer stage on the real broker: producer -> segmenter -> ASR -> transcripts."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscribe.core.admin import create_topics
from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript
from tests.integration.pipeline import (
    dead_letters,
    finals_by_line,
    produce,
    start_worker,
    wait_finals,
)
from tests.procs import Proc
from tests.wer import wer, word_errors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def asr_topics(kafka_bootstrap: str) -> Topics:
    t = Topics(f"asr{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, t.specs(4))
    return t


@pytest.fixture(scope="module")
def asr_worker(
    kafka_bootstrap: str, asr_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("asrworker")
    proc = start_worker(
        kafka_bootstrap,
        asr_topics,
        tmp,
        group=f"asr-{uuid.uuid4().hex[:6]}",
        asr_fail_lines="fail-*/0/1",
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def offline(assets: Path) -> dict[str, list[str]]:
    asr = MoonshineAsr.load()
    return {
        name: [u.text for u in transcribe_file(assets / name, asr=asr)]
        for name in ("two_cities.wav", "beckett.wav")
    }


def _texts(finals: dict, session: str) -> list[str]:
    return [finals[k].text for k in sorted(k for k in finals if k[0] == session)]


def test_two_cities_and_beckett_wer(
    kafka_bootstrap: str,
    asr_topics: Topics,
    asr_worker: Proc,
    assets: Path,
    references: dict[str, str],
    offline: dict[str, list[str]],
) -> None:
    produce(kafka_bootstrap, asr_topics, [str(assets / "two_cities.wav")], session_id="tc")
    produce(kafka_bootstrap, asr_topics, [str(assets / "beckett.wav")], session_id="beck")
    n_tc, n_b = len(offline["two_cities.wav"]), len(offline["beckett.wav"])
    _, finals = wait_finals(kafka_bootstrap, asr_topics, {"tc": n_tc, "beck": n_b})
    by = finals_by_line(finals)
    tc = _texts(by, "tc")
    assert len(tc) == n_tc
    streamed = wer(references["two_cities.wav"], " ".join(tc))
    reference_run = wer(references["two_cities.wav"], " ".join(offline["two_cities.wav"]))
    assert streamed <= 0.10
    assert streamed <= 1.05 * reference_run + 1e-9
    beck = " ".join(_texts(by, "beck"))
    assert word_errors(references["beckett.wav"], beck) <= 1, beck
    for f in by.values():
        assert f.error is None and 0 < (f.confidence or 0) <= 1
        ts = f.timestamps
        order = [
            "captured_at_us",
            "broker_at_us",
            "received_at_us",
            "decided_at_us",
            "decode_start_us",
            "decode_end_us",
            "published_at_us",
        ]
        assert [k for k in order if k in ts] == order
        assert (
            ts["decided_at_us"]
            <= ts["decode_start_us"]
            <= ts["decode_end_us"]
            <= ts["published_at_us"]
        )


def test_partials_are_stable_and_come_before_finals(
    kafka_bootstrap: str,
    asr_topics: Topics,
    asr_worker: Proc,
    assets: Path,
    offline: dict[str, list[str]],
) -> None:
    produce(
        kafka_bootstrap, asr_topics, [str(assets / "two_cities.wav")], session_id="tcp", pace="x2"
    )
    partials, finals = wait_finals(
        kafka_bootstrap, asr_topics, {"tcp": len(offline["two_cities.wav"])}
    )
    by_line = defaultdict(list)
    for p in partials:
        if p.session_id == "tcp":
            by_line[p.utterance].append(p)
    long_lines = 0
    for f in (f for f in finals if f.session_id == "tcp"):
        ps = by_line[f.utterance]
        if f.end_ms - f.start_ms > 1500:
            long_lines += 1
            assert ps, f"no partial for utterance {f.utterance}"
            assert (
                max(p.timestamps["published_at_us"] for p in ps) <= f.timestamps["published_at_us"]
            )
        revs = [p.revision for p in ps]
        assert revs == sorted(set(revs)), revs
        if ps:
            assert f.revision > revs[-1]
        for a, b in itertools.pairwise(ps):
            assert b.stable_text.startswith(a.stable_text), (a.stable_text, b.stable_text)
            assert b.text.startswith(a.stable_text), (a.stable_text, b.text)
        for p in ps:
            assert p.text.startswith(p.stable_text)
    assert long_lines >= 8


def test_eight_sessions_give_the_same_finals_as_one(
    kafka_bootstrap: str,
    asr_topics: Topics,
    asr_worker: Proc,
    assets: Path,
    offline: dict[str, list[str]],
) -> None:
    rep = produce(
        kafka_bootstrap, asr_topics, [str(assets / "two_cities.wav")], session_id="many", sessions=8
    )
    n = len(offline["two_cities.wav"])
    _, finals = wait_finals(kafka_bootstrap, asr_topics, dict.fromkeys(rep.sessions, n), 600)
    by = finals_by_line(finals)
    for sid in rep.sessions:
        assert _texts(by, sid) == offline["two_cities.wav"], sid


def test_injected_inference_failure(
    kafka_bootstrap: str,
    asr_topics: Topics,
    asr_worker: Proc,
    assets: Path,
    offline: dict[str, list[str]],
) -> None:
    produce(kafka_bootstrap, asr_topics, [str(assets / "beckett.wav")], session_id="fail-b")
    _, finals = wait_finals(kafka_bootstrap, asr_topics, {"fail-b": 6})
    by = finals_by_line(finals)
    broken = by[("fail-b", 0, 1)]
    assert broken.error is not None and "injected inference failure" in broken.error
    assert broken.confidence is None
    assert by[("fail-b", 0, 2)].error is None
    assert _texts(by, "fail-b")[2] == offline["beckett.wav"][2]
    dls = [d for d in dead_letters(kafka_bootstrap, asr_topics) if d.session_id == "fail-b"]
    assert len(dls) == 1 and dls[0].stage == "recognizer"
    assert dls[0].source_topic == asr_topics.utterances and "fail-b/0/1" in dls[0].reason


def test_a_replay_not_watched_live_gets_finals_only_decoded_in_batches(
    kafka_bootstrap: str,
    asr_topics: Topics,
    asr_worker: Proc,
    assets: Path,
    references: dict[str, str],
    offline: dict[str, list[str]],
) -> None:
    """``produce --pace asap`` marks the sessions not live (``SessionMeta.live``): no
    partial at all, every line's final, finals that waited together decoded in one batch
    (they share their decode timestamps), and words as accurate as the offline run's."""
    rep = produce(
        kafka_bootstrap,
        asr_topics,
        [str(assets / "two_cities.wav")],
        session_id="rp",
        sessions=6,
        live=None,  # the default of the command line: not live at --pace asap
    )
    n = len(offline["two_cities.wav"])
    partials, finals = wait_finals(kafka_bootstrap, asr_topics, dict.fromkeys(rep.sessions, n))
    assert [p for p in partials if p.session_id in rep.sessions] == []
    _assert_finals_batched(finals, rep.sessions, references, offline)


def test_live_finals_that_waited_the_behind_bound_are_decoded_in_batches(
    kafka_bootstrap: str,
    tmp_path: Path,
    assets: Path,
    references: dict[str, str],
    offline: dict[str, list[str]],
) -> None:
    """A worker that is behind (``final_behind_ms``: here 1 ms, with one decode slot, so any
    final that waits at all counts) decodes the live finals waiting together in one batch:
    every line's final still comes, without error, some share their decode timestamps, and
    the words are as accurate as the offline run's."""
    topics = Topics(f"behind{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(4))
    proc = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=f"behind-{uuid.uuid4().hex[:6]}",
        final_behind_ms="1",
        asr_workers="1",
    )
    try:
        rep = produce(
            kafka_bootstrap, topics, [str(assets / "two_cities.wav")], session_id="bh", sessions=6
        )
        n = len(offline["two_cities.wav"])
        _, finals = wait_finals(kafka_bootstrap, topics, dict.fromkeys(rep.sessions, n))
    finally:
        proc.stop()
    _assert_finals_batched(finals, rep.sessions, references, offline)


def _assert_finals_batched(
    finals: list[FinalTranscript],
    sessions: list[str],
    references: dict[str, str],
    offline: dict[str, list[str]],
) -> None:
    """Every line of ``sessions`` (two_cities) has its final without error, some finals
    were decoded in one batch (they share their decode timestamps), and each session's
    words are as accurate as the offline run's (WER within 0.03)."""
    n = len(offline["two_cities.wav"])
    by = finals_by_line(finals)
    mine = [f for k, f in by.items() if k[0] in sessions]
    assert len(mine) == len(sessions) * n and all(f.error is None for f in mine)
    spans: dict[tuple[int, int], set[str]] = defaultdict(set)
    for f in mine:
        spans[(f.timestamps["decode_start_us"], f.timestamps["decode_end_us"])].add(f.session_id)
    assert max(len(s) for s in spans.values()) >= 2, "no final was decoded in a batch"
    offline_wer = wer(references["two_cities.wav"], " ".join(offline["two_cities.wav"]))
    for sid in sessions:
        assert wer(references["two_cities.wav"], " ".join(_texts(by, sid))) <= offline_wer + 0.03
