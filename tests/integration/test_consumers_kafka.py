"""Consumers on a real broker: the sink on SQLite and PostgreSQL (duplicates, revisions,
dead letters, a crash between the DB commit and the offset commit), the conversation
view from Kafka, the metrics endpoint and phrase alerts."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.cli import main as cli_main
from streamscribe.consumers.alerts import run_alerts
from streamscribe.consumers.metrics import MetricsService
from streamscribe.consumers.sink import run_sink
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import Alert, DeadLetter, now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript, PartialTranscript
from tests.pg import PostgresServer, pg_server  # noqa: F401  (pg_server: the session fixture)

pytestmark = pytest.mark.integration

IDLE_S = 3.0
ROLES = ("agent", "customer")


# ------------------------------------------------------------------------------ helpers
def produce_all(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> list[Message]:
    """Produce in order; returns the delivered messages (partition, offset) in that order."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    delivered: list[Message | None] = [None] * len(items)
    errors: list[KafkaError] = []

    def report(i: int) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            delivered[i] = msg

        return cb

    for i, (key, value) in enumerate(items):
        producer.produce(topic, key=key, value=value, on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    return [m for m in delivered if m is not None]


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """Every value of ``topic`` from the start: waits for ``expected``, then 1 s for extras."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    extra_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if len(out) >= expected:
                extra_until = extra_until or time.monotonic() + 1.0
                if time.monotonic() >= extra_until:
                    break
            msg = c.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            out.append(msg.value() or b"")
    finally:
        c.close()
    return out


def fin(
    session: str,
    ch: int,
    u: int,
    text: str,
    *,
    rev: int = 1,
    start_ms: float | None = None,
    end_ms: float | None = None,
    timestamps: dict[str, int] | None = None,
) -> FinalTranscript:
    start = 3000.0 * u + 100 * ch if start_ms is None else start_ms
    return FinalTranscript(
        session_id=session,
        channel=ch,
        role=ROLES[ch],
        utterance=u,
        revision=rev,
        text=text,
        start_ms=start,
        end_ms=start + 2500.0 if end_ms is None else end_ms,
        confidence=0.9,
        timestamps=timestamps or {},
    )


def settings_for(bootstrap: str, topics: Topics) -> Settings:
    return Settings.from_env().with_overrides(
        bootstrap_servers=bootstrap, topic_prefix=topics.prefix
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database: a SQLite file, or a new database on the throwaway server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'transcripts.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    yield server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def stored(url: str, sessions: list[str]) -> dict[tuple[str, int, int], tuple[int, str, int]]:
    """(session, channel, utterance) -> (revision, text, stored_at_us)."""
    with TranscriptStore(url, create=False) as store:
        return {
            (r.final.session_id, r.final.channel, r.final.utterance): (
                r.final.revision,
                r.final.text,
                r.stored_at_us,
            )
            for s in sessions
            for r in store.finals(s)
        }


# -------------------------------------------------------------------------------- sink
def test_sink_stores_each_line_once_and_dead_letters_garbage(
    kafka_bootstrap: str, topics: Topics, db_url: str
) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    partial = PartialTranscript(
        session_id=b, channel=1, role="customer", utterance=5, revision=3, text="still talk",
        start_ms=9000.0, end_ms=9500.0, stable_text="still",
    )  # fmt: skip
    events: list[FinalTranscript | PartialTranscript] = [
        fin(a, 0, 2, "two"),
        fin(a, 0, 0, "zero"),
        fin(a, 1, 0, "customer zero"),
        fin(a, 0, 2, "two"),  # duplicate
        fin(a, 0, 1, "one"),
        fin(a, 0, 0, "zero again", rev=2),  # re-transcription wins
        fin(a, 0, 1, "one stale", rev=0),  # lower revision: ignored
        fin(b, 1, 0, "bee"),
        partial,
        fin(a, 0, 1, "one"),  # duplicate
        fin(b, 1, 0, "bee"),  # duplicate
    ]
    items = [(e.key, e.encode()) for e in events]
    items.insert(4, (a.encode(), b"{not json"))
    delivered = produce_all(kafka_bootstrap, topics.transcripts, items)
    garbage = delivered[4]

    stats = run_sink(
        settings_for(kafka_bootstrap, topics),
        db_url=db_url,
        group_id=f"sink-{uuid.uuid4().hex[:8]}",
        from_earliest=True,
        max_idle_s=IDLE_S,
        batch_size=3,
    )
    assert (stats.messages, stats.finals, stats.partials, stats.dead_letters) == (12, 10, 1, 1)
    assert (stats.finals_written, stats.finals_unchanged) == (6, 4)
    assert stats.offset_commit_failures == 0
    rows = stored(db_url, [a, b])
    assert {k: v[:2] for k, v in rows.items()} == {
        (a, 0, 0): (2, "zero again"),
        (a, 0, 1): (1, "one"),
        (a, 0, 2): (1, "two"),
        (a, 1, 0): (1, "customer zero"),
        (b, 1, 0): (1, "bee"),
    }
    with TranscriptStore(db_url, create=False) as store:
        assert store.counts() == {
            "sessions": 2,
            "channels": 3,
            "utterances": 5,
            "partials": 1,
            "latency": 0,
        }
        assert [p.text for p in store.partials(b)] == ["still talk"]
        assert {s.session_id: s.roles for s in store.sessions()} == {
            a: {"0": "agent", "1": "customer"},
            b: {"1": "customer"},
        }

    [raw] = read_topic(kafka_bootstrap, topics.deadletter, expected=1)
    dl = DeadLetter.decode(raw)
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == (
        topics.transcripts,
        garbage.partition(),
        garbage.offset(),
    )
    assert (dl.raw, dl.stage, dl.key) == (b"{not json", "sink", a)
    assert "not JSON" in dl.reason

    # the same group again: everything is committed, nothing is read or changed
    again = run_sink(
        settings_for(kafka_bootstrap, topics),
        db_url=db_url,
        group_id=f"sink-{uuid.uuid4().hex[:8]}-new",
        from_earliest=True,
        max_idle_s=IDLE_S,
    )
    assert (again.messages, again.finals_written, again.finals_unchanged) == (12, 0, 10)
    assert stored(db_url, [a, b]) == rows


CRASH_SCRIPT = """
import json, os, sys
from streamscribe.consumers.sink import run_sink
from streamscribe.core.settings import Settings

bootstrap, prefix, db_url, group, out = sys.argv[1:6]
settings = Settings.from_env().with_overrides(
    bootstrap_servers=bootstrap, topic_prefix=prefix, session_timeout_s=6.0
)  # the dead member leaves the group sooner
seen = []

def die_after_db_commit(batch):
    seen.append(batch.messages)
    if len(seen) == 3:
        with open(out, "w") as f:
            json.dump({"committed": sum(seen[:-1]), "crashed_batch": seen[-1]}, f)
        os._exit(17)  # after the DB commit, before the offset commit

run_sink(settings, db_url=db_url, group_id=group, from_earliest=True, max_idle_s=20.0,
         batch_size=4, after_db_commit=die_after_db_commit)
sys.exit(3)
"""


def test_crash_between_db_commit_and_offset_commit_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topics: Topics, db_url: str, tmp_path: Path
) -> None:
    sessions = [f"c{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    finals = [fin(s, u % 2, u, f"{s} line {u}") for s in sessions for u in range(5)]
    random.Random(5).shuffle(finals)
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    group = f"crash-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "crash.json"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, kafka_bootstrap, topics.prefix, db_url, group,
         str(out)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 17, proc.stderr[-3000:]
    crash = json.loads(out.read_text())
    before = stored(db_url, sessions)
    assert len(before) == crash["committed"] + crash["crashed_batch"]

    stats = run_sink(
        settings_for(kafka_bootstrap, topics),
        db_url=db_url,
        group_id=group,
        from_earliest=True,
        max_idle_s=IDLE_S,
        batch_size=4,
    )
    # exactly the uncommitted messages are read again: the crashed batch is replayed
    assert stats.messages == len(finals) - crash["committed"]
    assert stats.finals_unchanged == crash["crashed_batch"]
    assert stats.finals_written == len(finals) - len(before)
    after = stored(db_url, sessions)
    assert {k: v[1] for k, v in after.items()} == {
        (f.session_id, f.channel, f.utterance): f.text for f in finals
    }
    assert {k: after[k] for k in before} == before  # the replay changed nothing
    with TranscriptStore(db_url, create=False) as store:
        assert store.counts()["utterances"] == len(finals) == 30


SIGTERM_SCRIPT = """
import dataclasses, json, sys
from streamscribe.consumers.sink import run_sink
from streamscribe.core.settings import Settings

bootstrap, prefix, db_url, group = sys.argv[1:5]
settings = Settings.from_env().with_overrides(bootstrap_servers=bootstrap, topic_prefix=prefix)
stats = run_sink(settings, db_url=db_url, group_id=group, from_earliest=True)
print(json.dumps(dataclasses.asdict(stats)), flush=True)
"""


def test_sigterm_stops_the_sink_after_committing(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    sid = f"t-{uuid.uuid4().hex[:6]}"
    finals = [fin(sid, u % 2, u, f"line {u}") for u in range(8)]
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    url = f"sqlite:///{tmp_path / 'term.db'}"
    group = f"term-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, kafka_bootstrap, topics.prefix, url, group],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if Path(tmp_path / "term.db").exists() and len(stored(url, [sid])) == 8:
                break
            time.sleep(0.3)
        time.sleep(0.5)  # let it get back to polling
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert (stats["messages"], stats["finals_written"], stats["offset_commit_failures"]) == (
        8,
        8,
        0,
    )
    again = run_sink(
        settings_for(kafka_bootstrap, topics),
        db_url=url,
        group_id=group,
        from_earliest=True,
        max_idle_s=IDLE_S,
    )
    assert again.messages == 0  # every offset was committed before the exit


# ------------------------------------------------------------------------ conversation
def test_conversation_of_a_stereo_call_from_kafka(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = f"call-{uuid.uuid4().hex[:8]}"
    call = [
        fin(sid, 1, 1, "the cheaper one with more data", start_ms=21_000.0, end_ms=35_000.0),
        fin(sid, 0, 0, "thank you for calling", start_ms=0.0, end_ms=7_000.0),
        fin(sid, 1, 2, "and send me the contract", start_ms=36_000.0, end_ms=50_000.0),
        fin(sid, 1, 0, "hi i want a new plan", start_ms=7_500.0, end_ms=20_000.0),
    ]
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in call + call])
    url = f"sqlite:///{tmp_path / 'call.db'}"
    settings = settings_for(kafka_bootstrap, topics)
    stats = run_sink(settings, db_url=url, group_id="conv", from_earliest=True, max_idle_s=IDLE_S)
    assert (stats.finals_written, stats.finals_unchanged) == (4, 4)

    assert cli_main(["transcript", sid, "--db", url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[00:00] agent: thank you for calling",
        "[00:07] customer: hi i want a new plan",
        "[00:21] customer: the cheaper one with more data",
        "[00:36] customer: and send me the contract",
        "# talk: agent 7.0 s, customer 40.5 s; overtalk 0.0 s; silence 2.5 s; span 50.0 s",
    ]


# ------------------------------------------------------------------------------ metrics
def timestamps(decode_ms: int) -> dict[str, int]:
    t = now_us() - 2_000_000
    ts = {}
    for key, d in zip(TIMESTAMP_ORDER, (0, 1_000, 1_000, 300_000, 1_000, decode_ms * 1000, 500),
                      strict=True):  # fmt: skip
        t += d
        ts[key] = t
    return ts


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_service_exposes_stage_histograms(kafka_bootstrap: str, topics: Topics) -> None:
    sid = f"m-{uuid.uuid4().hex[:6]}"
    finals = [fin(sid, 0, u, "x", timestamps=timestamps(100 if u < 9 else 800)) for u in range(12)]
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    produce_all(kafka_bootstrap, topics.transcripts, [(sid.encode(), b"garbage")])
    svc = MetricsService(
        settings_for(kafka_bootstrap, topics), port=0, from_earliest=True, window="100",
        group_id=f"metrics-{uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    port = svc.start_http()
    stop = threading.Event()
    runner = threading.Thread(target=svc.run, kwargs={"stop_event": stop}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        s = metric_samples(port)
        while s[("streamscribe_latency_finals_total", ())] < 12 and time.monotonic() < deadline:
            time.sleep(0.5)
            s = metric_samples(port)
    finally:
        stop.set()
        runner.join(timeout=30)
        svc.close()
    assert not runner.is_alive()
    assert s[("streamscribe_latency_finals_total", ())] == 12
    assert s[("streamscribe_latency_undecodable_total", ())] == 1
    decode = (("origin", "live"), ("stage", "decode"))
    assert s[("streamscribe_stage_latency_seconds_count", decode)] == 12
    assert s[("streamscribe_stage_latency_seconds_sum", decode)] == pytest.approx(9 * 0.1 + 3 * 0.8)
    assert (
        s[("streamscribe_stage_latency_seconds_count", (*decode[:1], ("stage", "publish_to_sink")))]
        == 12
    )
    # eos_to_final = 1 + decode + 0.5 ms: 3 of 12 over 450 ms
    assert s[("streamscribe_sla_violation_ratio", (("series", "eos_to_final"),))] == 0.25


# ------------------------------------------------------------------------------- alerts
def test_alerts_publish_one_alert_per_phrase(kafka_bootstrap: str, topics: Topics) -> None:
    sid = f"al-{uuid.uuid4().hex[:6]}"
    finals = [
        fin(sid, 1, 0, "I want to CANCEL my subscription, now!"),
        fin(sid, 0, 0, "let me get my manager"),
        fin(sid, 1, 1, "no management needed"),
        fin(sid, 1, 2, "cancel-my subscription or a manager."),
    ]
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    stats = run_alerts(
        settings_for(kafka_bootstrap, topics),
        phrases=["cancel my subscription", "Manager"],
        group_id=f"alerts-{uuid.uuid4().hex[:6]}",
        from_earliest=True,
        max_idle_s=IDLE_S,
    )
    assert (stats.finals, stats.alerts) == (4, 4)
    alerts = [Alert.decode(v) for v in read_topic(kafka_bootstrap, topics.alerts, expected=4)]
    assert sorted((a.channel, a.utterance, a.phrase) for a in alerts) == [
        (0, 0, "Manager"),
        (1, 0, "cancel my subscription"),
        (1, 2, "Manager"),
        (1, 2, "cancel my subscription"),
    ]
    assert {a.session_id for a in alerts} == {sid}
    assert {a.text for a in alerts if a.utterance == 2} == {"cancel-my subscription or a manager."}
