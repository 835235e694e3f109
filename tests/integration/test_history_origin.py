"""Issue 13, item 12, on the real broker: a re-transcription group has no side effects on
the live figures downstream.

The transcripts topic holds the live pipeline's finals of a call (``origin`` = the live
processor group, ``Settings.group_id``) and then the same lines re-transcribed from history
by another group (captured ten minutes ago, decoded slowly). The sink keeps both latency
rows (the live ones untouched), the metrics service labels them by origin and keeps the
history out of the SLA window, and alerts fire for live traffic only unless asked.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.consumers.alerts import run_alerts
from streamscribe.consumers.metrics import MetricsService
from streamscribe.consumers.sink import run_sink
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript

pytestmark = pytest.mark.integration

IDLE_S = 3.0
LINES = 4
HISTORY_AGE_S = 600.0
LIVE_DECODE_MS = 100
HISTORY_DECODE_MS = 800  # over the 450 ms SLA: it would fail the live SLA if it counted


def _timestamps(captured_us: int, decided_us: int, decode_ms: int) -> dict[str, int]:
    ts = dict.fromkeys(TIMESTAMP_ORDER, 0)
    ts.update(captured_at_us=captured_us, broker_at_us=captured_us + 1_000)
    ts.update(received_at_us=captured_us + 2_000, decided_at_us=decided_us)
    ts.update(decode_start_us=decided_us + 1_000)
    ts.update(decode_end_us=decided_us + 1_000 + decode_ms * 1_000)
    ts.update(published_at_us=ts["decode_end_us"] + 500)
    return ts


def _call(session: str, live_group: str, history_group: str) -> list[FinalTranscript]:
    """The live finals of a call, then the same lines re-transcribed from history."""
    now = now_us()
    live = [
        FinalTranscript(
            session, 0, "agent", u, 1, f"live {u}: get me a manager", 3000.0 * u, 3000.0 * u + 2500,
            timestamps=_timestamps(now - 2_000_000, now - 1_700_000, LIVE_DECODE_MS),
            origin=live_group,
        )
        for u in range(LINES)
    ]  # fmt: skip
    old = now - int(HISTORY_AGE_S * 1e6)
    history = [
        FinalTranscript(
            session, 0, "agent", u, 1, f"again {u}: get me a manager", 3000.0 * u,
            3000.0 * u + 2500,
            timestamps=_timestamps(old, now - 1_000_000, HISTORY_DECODE_MS),
            origin=history_group,
        )
        for u in range(LINES)
    ]  # fmt: skip
    assert all(
        h.timestamps["published_at_us"] > f.timestamps["published_at_us"]
        for f, h in zip(live, history, strict=True)
    )
    return live + history


@pytest.fixture
def call(kafka_bootstrap: str, topics: Topics) -> tuple[Settings, list[FinalTranscript]]:
    """Settings of the live pipeline, and a call's live finals then its re-transcription."""
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix
    )
    session = f"h-{uuid.uuid4().hex[:6]}"
    return settings, _call(session, settings.group_id, f"retranscribe-{uuid.uuid4().hex[:6]}")


def _produce(settings: Settings, finals: list[FinalTranscript]) -> None:
    p = Producer({"bootstrap.servers": settings.bootstrap})
    for f in finals:
        p.produce(Topics(settings.topic_prefix).transcripts, key=f.key, value=f.encode())
    assert p.flush(30) == 0


def _count(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"n-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_the_sink_keeps_live_latency_rows_and_history_rows_apart(
    call: tuple[Settings, list[FinalTranscript]], tmp_path: Path
) -> None:
    """The live finals are stored first; the re-transcription comes later (a new run)."""
    settings, finals = call
    session = finals[0].session_id
    db = f"sqlite:///{tmp_path / 'transcripts.db'}"
    _produce(settings, finals[:LINES])
    assert run_sink(settings, db_url=db, from_earliest=True, max_idle_s=IDLE_S).finals == LINES
    _produce(settings, finals[LINES:])
    stats = run_sink(settings, db_url=db, from_earliest=True, max_idle_s=IDLE_S)
    assert (stats.finals, stats.finals_written) == (LINES, LINES)
    store = TranscriptStore(db, create=False)
    try:
        live = store.latency_records(origin="live")
        history = store.latency_records(origin="history")
        texts = [row.final.text for row in store.finals(session)]
    finally:
        store.close()
    # The re-transcription supersedes the stored text (published later), as before...
    assert texts == [f"again {u}: get me a manager" for u in range(LINES)]
    # ...but the live latency rows are the live ones, and history has rows of its own.
    assert sorted(r.utterance for r in live) == sorted(r.utterance for r in history) == [0, 1, 2, 3]
    assert all(r.stages_ms["decode"] == LIVE_DECODE_MS for r in live)
    assert all(r.end_to_end_ms < 60_000 for r in live)
    assert all(r.stages_ms["decode"] == HISTORY_DECODE_MS for r in history)
    assert all(r.end_to_end_ms >= HISTORY_AGE_S * 1000 for r in history)


def test_alerts_fire_for_live_traffic_only_unless_asked(
    kafka_bootstrap: str, topics: Topics, call: tuple[Settings, list[FinalTranscript]]
) -> None:
    settings, finals = call
    _produce(settings, finals)
    live_only = run_alerts(settings, phrases=["manager"], from_earliest=True, max_idle_s=IDLE_S)
    assert (live_only.finals, live_only.alerts, live_only.history_skipped) == (8, 4, 4)
    assert _count(kafka_bootstrap, topics.alerts) == LINES
    both = run_alerts(
        settings,
        phrases=["manager"],
        group_id=f"alerts-all-{uuid.uuid4().hex[:6]}",
        from_earliest=True,
        max_idle_s=IDLE_S,
        include_history=True,
    )
    assert (both.finals, both.alerts, both.history_skipped) == (8, 8, 0)
    assert _count(kafka_bootstrap, topics.alerts) == LINES + 2 * LINES


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_label_latency_by_origin_and_keep_history_out_of_the_sla(
    call: tuple[Settings, list[FinalTranscript]],
) -> None:
    settings, finals = call
    _produce(settings, finals)
    svc = MetricsService(settings, port=0, from_earliest=True, window="100")
    port = svc.start_http()
    stop = threading.Event()
    runner = threading.Thread(target=svc.run, kwargs={"stop_event": stop}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        s = _samples(port)
        while s[("streamscribe_latency_finals_total", ())] < 2 * LINES:
            assert time.monotonic() < deadline, "the metrics service saw too few finals"
            time.sleep(0.5)
            s = _samples(port)
    finally:
        stop.set()
        runner.join(timeout=30)
        svc.close()
    assert not runner.is_alive()
    count = "streamscribe_stage_latency_seconds_count"
    e2e_sum = "streamscribe_stage_latency_seconds_sum"
    live = (("origin", "live"), ("stage", "end_to_end"))
    history = (("origin", "history"), ("stage", "end_to_end"))
    assert (s[(count, live)], s[(count, history)]) == (LINES, LINES)
    assert s[(e2e_sum, live)] < LINES * 60
    assert s[(e2e_sum, history)] >= LINES * HISTORY_AGE_S
    assert s[("streamscribe_latency_window_records", ())] == LINES
    assert s[("streamscribe_sla_violation_ratio", (("series", "eos_to_final"),))] == 0.0
