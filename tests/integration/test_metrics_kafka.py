"""The processes' /metrics on the real broker: the sink and a segmenter worker scraped after
known traffic (exact counts, per-partition lag from the faust consumer), and
`streamscribe alerts` printing each alert as a JSON line."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.broker import free_port
from streamscribe.cli import main as cli_main
from streamscribe.consumers.sink import run_sink
from streamscribe.core.settings import Settings
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import produce, start_worker
from tests.integration.test_consumers_kafka import produce_all

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "_created" not in text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape_until(port: int, ready: Callable[[Samples], bool], timeout_s: float = 120) -> Samples:
    """Scrape until ``ready`` holds (the values are then asserted exactly by the caller)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            s = scrape(port)
        except OSError:  # not serving yet
            s = {}
        if (s and ready(s)) or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def fin(sid: str, u: int, text: str) -> FinalTranscript:
    return FinalTranscript(
        session_id=sid, channel=0, role="agent", utterance=u, revision=1, text=text,
        start_ms=1000.0 * u, end_ms=1000.0 * u + 800, confidence=0.9,
    )  # fmt: skip


def test_sink_metrics_after_known_traffic(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    sid = f"sm-{uuid.uuid4().hex[:6]}"
    finals = [fin(sid, u, "hello") for u in range(3)]
    items = [(f.key, f.encode()) for f in [*finals, finals[1]]]  # utterance 1 twice: a replay
    produce_all(kafka_bootstrap, topics.transcripts, [*items, (sid.encode(), b"garbage")])
    port = free_port()
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        process_metrics_port=port,
    )
    stop = threading.Event()
    runner = threading.Thread(
        target=run_sink,
        kwargs={
            "settings": settings,
            "db_url": f"sqlite:///{tmp_path / 't.db'}",
            "group_id": f"sink-{uuid.uuid4().hex[:6]}",
            "from_earliest": True,
            "stop_event": stop,
        },
        daemon=True,
    )
    runner.start()
    try:
        s = scrape_until(port, lambda s: s[("streamscribe_sink_messages_total", ())] >= 5)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert s[("streamscribe_sink_messages_total", ())] == 5
    assert s[("streamscribe_sink_finals_total", ())] == 4
    assert s[("streamscribe_sink_finals_written_total", ())] == 3
    assert s[("streamscribe_sink_finals_unchanged_total", ())] == 1
    assert s[("streamscribe_sink_dead_letters_total", ())] == 1
    batches = s[("streamscribe_sink_batches_total", ())]
    assert s[("streamscribe_sink_write_seconds_count", ())] == batches
    assert s[("streamscribe_sink_offset_commits_total", ())] == batches
    with pytest.raises(OSError):  # the endpoint stops with the sink
        scrape(port)


def test_alerts_cli_prints_each_alert_as_a_json_line(
    kafka_bootstrap: str, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = f"al-{uuid.uuid4().hex[:6]}"
    texts = ["I want a refund", "all good", "get me a supervisor, I want a refund"]
    finals = [fin(sid, u, t) for u, t in enumerate(texts)]
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    code = cli_main(
        [
            "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", topics.prefix,
            "alerts", "--phrases", "refund,supervisor", "--format", "json",
            "--from-earliest", "--group-id", f"al-{uuid.uuid4().hex[:6]}", "--max-idle", "3",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted((a["utterance"], a["phrase"]) for a in lines) == [
        (0, "refund"),
        (2, "refund"),
        (2, "supervisor"),
    ]
    assert "3 alerts from 3 finals" in err


def test_worker_metrics_count_chunks_and_lag_per_partition(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    port = free_port()
    proc = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=f"wm-{uuid.uuid4().hex[:6]}",
        stages="segmenter",
        process_metrics_port=str(port),
    )
    try:
        report = produce(kafka_bootstrap, topics, [str(assets / "beckett.wav")], session_id="wm")
        chunks = sum(report.chunks_by_session.values())

        def audio_lag(s: Samples) -> dict[str, float]:
            return {
                dict(labels)["partition"]: v
                for (name, labels), v in s.items()
                if name == "streamscribe_consumer_lag" and dict(labels)["topic"] == topics.audio
            }

        def done(s: Samples) -> bool:
            counted = s.get(("streamscribe_segmenter_chunks_total", ()), 0) >= chunks
            return counted and len(audio_lag(s)) == 4 and sum(audio_lag(s).values()) == 0

        s = scrape_until(port, done, timeout_s=180)
        events = read_topic(kafka_bootstrap, topics.events)
        utterances = read_topic(kafka_bootstrap, topics.utterances)
    finally:
        proc.stop()
    sent = {
        dict(labels)["topic"]: v
        for (name, labels), v in s.items()
        if name == "streamscribe_worker_messages_sent_total"
    }
    assert (sent[topics.events], sent[topics.utterances]) == (len(events), len(utterances))
    received = s[("streamscribe_worker_messages_received_total", (("topic", topics.audio),))]
    assert received >= chunks  # and the segmenter's own idle ticks
    assert s[("streamscribe_segmenter_chunks_total", ())] == chunks
    assert s[("streamscribe_segmenter_dead_letters_total", ())] == 0
    assert audio_lag(s) == {"0": 0, "1": 0, "2": 0, "3": 0}
    assert s[("process_cpu_seconds_total", ())] > 0


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        done = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in done if tp.offset >= 0}
    finally:
        c.close()


def test_sink_lag_per_partition_from_its_own_positions(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """The sink, held inside its second batch: its lag is the high watermark minus the
    offset it has made durable (= what its group committed), on the one partition used."""

    sid = f"lag-{uuid.uuid4().hex[:6]}"
    total = 20
    finals = [fin(sid, u, "hello") for u in range(total)]  # one key: one partition
    produce_all(kafka_bootstrap, topics.transcripts, [(f.key, f.encode()) for f in finals])
    port = free_port()
    group = f"sink-lag-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, process_metrics_port=port
    )
    batches: list[int] = []
    held, release = threading.Event(), threading.Event()

    def hold_second_batch(batch: object) -> None:
        batches.append(1)
        if len(batches) == 2:
            held.set()
            release.wait(60)

    stop = threading.Event()
    runner = threading.Thread(
        target=run_sink,
        kwargs={
            "settings": settings,
            "db_url": f"sqlite:///{tmp_path / 't.db'}",
            "group_id": group,
            "from_earliest": True,
            "stop_event": stop,
            "batch_size": 5,
            "after_db_commit": hold_second_batch,
        },
        daemon=True,
    )
    runner.start()
    try:
        assert held.wait(60), "the sink did not reach its second batch"
        (partition, committed), *_ = _committed(kafka_bootstrap, group, topics.transcripts).items()
        s = scrape(port)
        lag = {
            dict(labels)["partition"]: v
            for (name, labels), v in s.items()
            if name == "streamscribe_consumer_lag"
        }
        assert 0 < committed < total
        assert lag == {str(partition): total - committed}
        release.set()
        s = scrape_until(port, lambda s: s[("streamscribe_sink_finals_total", ())] >= total)
        final_lag = s[
            (
                "streamscribe_consumer_lag",
                (("partition", str(partition)), ("topic", topics.transcripts)),
            )
        ]
    finally:
        release.set()
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert final_lag == 0


def test_worker_metrics_sessions_live_dead_letters_by_reason_and_restore(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    """Two sessions streaming (no end of stream yet), three undecodable values and a NaN
    chunk: the worker counts 2 live sessions (0 once they time out), the dead letters by
    reason, and the table restore of its start."""
    import dataclasses

    import numpy as np

    from streamscribe.core.kafka import DeliveryProducer
    from streamscribe.producers.source import chunk_channel, read_audio
    from streamscribe.schemas.events import now_us

    port = free_port()
    proc = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        group=f"wm2-{uuid.uuid4().hex[:6]}",
        stages="segmenter",
        process_metrics_port=str(port),
        idle_timeout_s="4",
    )
    try:
        s = scrape_until(
            port, lambda s: s.get(("streamscribe_worker_table_restore_seconds_count", ()), 0) >= 1
        )
        restores = s[("streamscribe_worker_table_restore_seconds_count", ())]
        assert restores >= 1  # the start's assignment, restored (empty changelogs)
        src = read_audio(assets / "beckett.wav")
        producer = DeliveryProducer(kafka_bootstrap)
        for sid in ("wm-a", "wm-b"):
            chunks = list(chunk_channel(src, 0, session_id=sid, role="speaker"))[:20]
            for c in chunks:
                c = dataclasses.replace(c, captured_at_us=now_us())
                producer.send(topics.audio, c.key, c.encode())
        nan = dataclasses.replace(
            chunks[-1],
            seq=chunks[-1].seq + 1,
            position=chunks[-1].position + chunks[-1].n_samples,
            encoding="pcm_f32le",
            payload=np.full(chunks[-1].n_samples, np.nan, np.float32).tobytes(),
        )
        producer.send(topics.audio, nan.key, nan.encode())
        for _ in range(3):
            producer.send(topics.audio, b"wm-junk", b"not an audio chunk")
        assert producer.close().failed == 0
        name = "streamscribe_stage_dead_letters_total"
        undecodable = (name, (("reason", "undecodable"), ("stage", "segmenter")))
        invalid = (name, (("reason", "invalid_audio"), ("stage", "segmenter")))
        s = scrape_until(
            port,
            lambda s: (
                s.get(("streamscribe_segmenter_sessions", ()), 0) == 2
                and s.get(undecodable, 0) + s.get(invalid, 0) >= 4
            ),
        )
        assert s[("streamscribe_segmenter_sessions", ())] == 2
        assert s[("streamscribe_segmenter_channels", ())] == 2
        assert (s[undecodable], s[invalid]) == (3, 1)
        assert s[("streamscribe_segmenter_dead_letters_total", ())] == 4
        s = scrape_until(port, lambda s: s.get(("streamscribe_segmenter_sessions", ()), 1) == 0)
        assert s[("streamscribe_segmenter_sessions", ())] == 0  # both timed out (idle 4 s)
    finally:
        proc.stop()
