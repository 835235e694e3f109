"""The whole pipeline on the real broker: a stereo call -> worker (segmenter + recognizer)
-> transcripts -> sink (SQLite and PostgreSQL) -> conversation view and latency report,
then a re-transcription by a new processors group ``--from-earliest``.

One pipeline run (the module fixture ``call``) is stored by two sinks at once, one group
per database. The re-transcription test adds a second run's finals to the same topics;
the other tests compare against the first run's finals captured by the fixture, so they
hold in any order.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa
from scipy.signal import resample_poly

from streamscribe.consumers.conversation import load_conversation
from streamscribe.consumers.latency import END_TO_END, STAGES, stage_latencies
from streamscribe.consumers.sink import SinkStats, run_sink
from streamscribe.consumers.store import SessionInfo, TranscriptStore, utterances
from streamscribe.core.admin import create_topics
from streamscribe.core.settings import Settings
from streamscribe.processors.segmenter import UtteranceSpan, segment_file
from streamscribe.schemas.events import LatencyRecord, now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript
from tests.integration.pipeline import (
    dead_letters,
    finals_by_line,
    produce,
    session_events,
    transcripts,
    wait_finals,
    worker,
)
from tests.pg import PostgresServer, pg_server  # noqa: F401  (pg_server: the session fixture)
from tests.procs import ROOT, streamscribe_cmd
from tests.wer import wer, word_errors

pytestmark = pytest.mark.integration

SESSION = "call"
RATE = 16_000
IDLE_S = 3.0
START_TOLERANCE_MS = 500.0
QUIET_S = 3.0
DATABASES = ("sqlite", "postgresql")
LineKey = tuple[str, int, int]
#: The first (live) worker's group; the re-transcription's is another one.
LIVE_GROUP = f"proc-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class StoredRow:
    text: str
    revision: int
    start_ms: float
    published_at_us: int | None  # the column the replace rule compares
    stored_at_us: int


@dataclass(frozen=True)
class Call:
    """The first pipeline run of the stereo call, stored in every database."""

    topics: Topics
    tmp: Path
    truth: list[UtteranceSpan]
    finals: dict[LineKey, FinalTranscript]  # the transcripts topic after the first run
    urls: dict[str, str]
    sink_groups: dict[str, str]
    first_sink: dict[str, SinkStats]


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def write_call(assets: Path, path: Path) -> Path:
    """Channel 0 (agent) = beckett.wav; channel 1 (customer) = two_cities.wav at 16 kHz,
    starting where beckett ends; silence on the other channel meanwhile."""
    agent, rate = sf.read(str(assets / "beckett.wav"), dtype="int16")
    assert rate == RATE and agent.ndim == 1
    tc, tc_rate = sf.read(str(assets / "two_cities.wav"), dtype="float64")
    assert tc_rate == 3 * RATE and tc.ndim == 1
    customer = to_pcm16(resample_poly(tc, 1, 3))
    stereo = np.zeros((len(agent) + len(customer), 2), dtype=np.int16)
    stereo[: len(agent), 0] = agent
    stereo[len(agent) :, 1] = customer
    sf.write(str(path), stereo, RATE, subtype="PCM_16")
    return path


def sink_all(
    bootstrap: str, topics: Topics, urls: dict[str, str], groups: dict[str, str]
) -> dict[str, SinkStats]:
    """One sink run per database (concurrently, in threads), each until idle; the live
    worker is :data:`LIVE_GROUP` (its finals' latency goes to ``latency``, any other
    group's to ``latency_history``)."""
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=bootstrap, topic_prefix=topics.prefix, group_id=LIVE_GROUP
    )
    with ThreadPoolExecutor(len(groups)) as pool:
        futures = {
            db: pool.submit(
                run_sink,
                settings,
                db_url=urls[db],
                group_id=group,
                from_earliest=True,
                max_idle_s=IDLE_S,
            )
            for db, group in groups.items()
        }
        return {db: f.result() for db, f in futures.items()}


def snapshot(url: str) -> dict[LineKey, StoredRow]:
    with TranscriptStore(url, create=False) as store, store.engine.connect() as conn:
        c = utterances.c
        q = sa.select(c.session_id, c.channel, c.utterance, c.published_at_us)
        published = {(r[0], r[1], r[2]): r[3] for r in conn.execute(q)}
        return {
            (r.final.session_id, r.final.channel, r.final.utterance): StoredRow(
                r.final.text,
                r.final.revision,
                r.final.start_ms,
                published[(r.final.session_id, r.final.channel, r.final.utterance)],
                r.stored_at_us,
            )
            for r in store.finals(SESSION)
        }


def counts(url: str) -> dict[str, int]:
    with TranscriptStore(url, create=False) as store:
        return store.counts()


def session_info(url: str) -> SessionInfo | None:
    with TranscriptStore(url, create=False) as store:
        return store.session(SESSION)


def latency_rows(url: str) -> list[LatencyRecord]:
    with TranscriptStore(url, create=False) as store:
        return store.latency_records()


@pytest.fixture(scope="module")
def call(
    kafka_bootstrap: str,
    assets: Path,
    pg_server: PostgresServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Call]:
    tmp = tmp_path_factory.mktemp("e2e")
    wav = write_call(assets, tmp / "call.wav")
    truth = segment_file(wav)
    topics = Topics(f"e2e{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(4))
    with worker(kafka_bootstrap, topics, tmp, group=LIVE_GROUP):
        produce(kafka_bootstrap, topics, [str(wav)], session_id=SESSION)
        _, finals = wait_finals(kafka_bootstrap, topics, {SESSION: len(truth)}, timeout_s=240)
    urls = {
        "sqlite": f"sqlite:///{tmp / 'transcripts.db'}",
        "postgresql": pg_server.create_database(f"e2e_{uuid.uuid4().hex[:10]}"),
    }
    groups = {db: f"sink-{db}-{uuid.uuid4().hex[:6]}" for db in DATABASES}
    first_sink = sink_all(kafka_bootstrap, topics, urls, groups)
    yield Call(topics, tmp, truth, finals_by_line(finals), urls, groups, first_sink)


@pytest.mark.parametrize("db", DATABASES)
def test_conversation_of_the_stereo_call(
    call: Call, db: str, kafka_bootstrap: str, references: dict[str, str]
) -> None:
    truth = {(s.channel, s.utterance): s for s in call.truth}
    n_agent = sum(s.channel == 0 for s in call.truth)
    assert n_agent >= 3 and len(truth) - n_agent >= 8
    # the topic: one final per line the offline segmenter finds, no dead letters
    assert set(call.finals) == {(SESSION, ch, u) for ch, u in truth}
    assert dead_letters(kafka_bootstrap, call.topics) == []
    stats = call.first_sink[db]
    assert (stats.finals_written, stats.dead_letters, stats.offset_commit_failures) == (
        len(truth),
        0,
        0,
    )

    with TranscriptStore(call.urls[db], create=False) as store:
        conv = load_conversation(store, SESSION)
        info = store.session(SESSION)
        assert store.counts() == {
            "sessions": 1,
            "channels": 2,
            "utterances": len(truth),
            "partials": 0,
            "latency": len(truth),
        }
    assert info is not None and (info.channels, info.roles) == (2, {"0": "agent", "1": "customer"})
    # the agent's lines first, then the customer's, each in stream order
    expected = sorted(truth, key=lambda k: (k[0], truth[k].start_ms))
    assert [(ln.channel, ln.utterance) for ln in conv.lines] == expected
    assert [ln.role for ln in conv.lines] == ["agent"] * n_agent + ["customer"] * (
        len(truth) - n_agent
    )
    for ln in conv.lines:
        t = truth[(ln.channel, ln.utterance)]
        assert abs(ln.start_ms - t.start_ms) <= START_TOLERANCE_MS, (ln, t.start_ms)
        topic = call.finals[(SESSION, ln.channel, ln.utterance)]
        assert (ln.text, ln.revision, ln.start_ms, ln.end_ms, ln.error) == (
            topic.text,
            topic.revision,
            topic.start_ms,
            topic.end_ms,
            None,
        )
    agent = " ".join(ln.text for ln in conv.lines if ln.channel == 0)
    customer = " ".join(ln.text for ln in conv.lines if ln.channel == 1)
    assert word_errors(references["beckett.wav"], agent) <= 1, agent
    assert wer(references["two_cities.wav"], customer) <= 0.10, customer
    assert conv.to_text().splitlines()[0].startswith("[00:00] agent: ")


@pytest.mark.parametrize("db", DATABASES)
def test_latency_records_add_up_and_the_report_prints(call: Call, db: str) -> None:
    url = call.urls[db]
    with TranscriptStore(url, create=False) as store:
        rows = store.finals(SESSION)
        stored = {(r.session_id, r.channel, r.utterance): r for r in store.latency_records()}
    assert len(rows) == len(stored) == len(call.truth)
    clamped_by_stage: Counter[str] = Counter()
    for row in rows:
        f = row.final
        rec = stage_latencies(
            f.session_id, f.channel, f.utterance, f.timestamps, stored_at_us=row.stored_at_us
        )
        # Only the designed overlap of a speculative final is clamped (consumers/latency.py):
        # a decode that started (and perhaps ended) before the silence decision.
        assert rec is not None and rec.clamped == speculative_overlap(f.timestamps)
        clamped_by_stage.update(rec.clamped)
        assert list(rec.stages_ms) == list(STAGES)
        assert abs(sum(rec.stages_ms.values()) - rec.end_to_end_ms) <= 1.0
        assert rec.end_to_end_ms == (row.stored_at_us - f.timestamps["captured_at_us"]) / 1000
        same = stored[(f.session_id, f.channel, f.utterance)]
        assert (same.stages_ms, same.end_to_end_ms) == (rec.stages_ms, rec.end_to_end_ms)

    proc = subprocess.run(
        streamscribe_cmd("latency-report", "--db", url),
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    n = len(call.truth)
    assert out[0] == f"latency of {n} finals (ms)"
    assert out[1].split() == ["stage", "count", "p50", "p95", "p99", "max", "clamped"]
    table = {line.split()[0]: line.split() for line in out[2:] if not line.startswith("SLA ")}
    for name in (*STAGES, END_TO_END):
        assert table[name][1] == str(n), table[name]
        assert table[name][-1] == str(clamped_by_stage[name])  # the overlap, nothing else
    assert any(line.startswith(f"SLA {END_TO_END} <= ") for line in out)


def speculative_overlap(ts: dict[str, int]) -> list[str]:
    """The stages a speculative final clamps by design: its decode began before the
    decision (``decision_to_decode``), and ``decode`` too when it also ended before it."""
    decided = ts["decided_at_us"]
    return [
        stage
        for stage, at in (
            ("decision_to_decode", ts["decode_start_us"]),
            ("decode", ts["decode_end_us"]),
        )
        if at < decided
    ]


def line_key(f: FinalTranscript) -> LineKey:
    return (f.session_id, f.channel, f.utterance)


def published_at(f: FinalTranscript) -> int:
    return f.timestamps["published_at_us"]


def wait_retranscribed(
    bootstrap: str, topics: Topics, keys: set[LineKey], since_us: int, timeout_s: float = 240
) -> list[FinalTranscript]:
    """The finals published after ``since_us``, once every line has one, the new group's
    segmenter has ended both channels (a second ``session_end`` each) and no final has
    come for ``QUIET_S`` (so a line decoded twice would be seen)."""
    deadline = time.monotonic() + timeout_s
    count, quiet_since = -1, time.monotonic()
    while True:
        _, finals = transcripts(bootstrap, topics)
        new = [f for f in finals if published_at(f) > since_us]
        if len(new) != count:
            count, quiet_since = len(new), time.monotonic()
        ends = Counter(
            e.channel
            for e in session_events(bootstrap, topics)
            if e.session_id == SESSION and e.kind == "session_end"
        )
        done = keys <= {line_key(f) for f in new} and ends[0] >= 2 and ends[1] >= 2
        if done and time.monotonic() - quiet_since >= QUIET_S:
            return new
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(new)} finals re-published, session ends {dict(ends)}")
        time.sleep(0.5)


def test_retranscription_updates_the_rows_in_place(call: Call, kafka_bootstrap: str) -> None:
    keys = set(call.finals)
    before = {db: snapshot(url) for db, url in call.urls.items()}
    before_latency = {db: latency_rows(url) for db, url in call.urls.items()}
    for rows in before.values():
        assert set(rows) == keys
        assert all(r.published_at_us is not None for r in rows.values())

    # a new processors group re-reads the audio from the earliest offset
    started_us = now_us()
    group = f"retx-{uuid.uuid4().hex[:6]}"
    with worker(kafka_bootstrap, call.topics, call.tmp, group=group, log_name="worker-retx.log"):
        republished = wait_retranscribed(kafka_bootstrap, call.topics, keys, started_us)
    assert dead_letters(kafka_bootstrap, call.topics) == []
    latest: dict[LineKey, FinalTranscript] = {}
    for f in republished:
        if line_key(f) not in latest or published_at(f) > published_at(latest[line_key(f)]):
            latest[line_key(f)] = f
    assert set(latest) == keys
    # exactly one final per line: the new group's recognizer reads only the utterances of
    # its own segmenter (``origin``), not the first group's copies
    assert len(republished) == len(keys)
    assert [f for f in republished if f.text != call.finals[line_key(f)].text] == []

    # the same sink groups carry on: every row is updated under its own key
    stats = sink_all(kafka_bootstrap, call.topics, call.urls, call.sink_groups)
    for db, url in call.urls.items():
        # it reads just the new finals; each line is written once per batch it appears in
        assert (stats[db].finals, stats[db].dead_letters) == (len(republished), 0), db
        assert stats[db].finals_written == len(keys), db
        after = snapshot(url)
        assert set(after) == keys
        for k, row in after.items():
            old = before[db][k]
            assert row.text == old.text == call.finals[k].text
            assert row.published_at_us == published_at(latest[k])  # the latest publish wins
            assert row.published_at_us is not None and old.published_at_us is not None
            assert row.published_at_us > old.published_at_us
            assert row.stored_at_us > old.stored_at_us
            assert row.revision == latest[k].revision
            assert abs(row.start_ms - old.start_ms) <= 1.0
        assert counts(url) == {
            "sessions": 1,
            "channels": 2,
            "utterances": len(keys),
            "partials": 0,
            "latency": len(keys),
        }
        # issue 13 item 12: the live latency rows stay; the re-transcription has its own
        assert latency_rows(url) == before_latency[db]
        with TranscriptStore(url, create=False) as store:
            history = store.latency_records(origin="history")
        assert sorted((r.session_id, r.channel, r.utterance) for r in history) == sorted(keys)

    # a new sink group replays the whole topic (both runs): nothing changes
    settled = {db: snapshot(url) for db, url in call.urls.items()}
    sessions = {db: session_info(url) for db, url in call.urls.items()}
    latencies = {db: latency_rows(url) for db, url in call.urls.items()}
    _, all_finals = transcripts(kafka_bootstrap, call.topics)
    fresh = {db: f"replay-{db}-{uuid.uuid4().hex[:6]}" for db in DATABASES}
    replay = sink_all(kafka_bootstrap, call.topics, call.urls, fresh)
    for db, url in call.urls.items():
        assert (replay[db].finals, replay[db].finals_written) == (len(all_finals), 0), db
        assert replay[db].finals_unchanged == len(all_finals)
        assert snapshot(url) == settled[db]
        assert session_info(url) == sessions[db]
        assert latency_rows(url) == latencies[db]
        assert counts(url)["utterances"] == len(keys)
