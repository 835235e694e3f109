"""Every long-running process's /metrics: worker, sink, alerts, with exact values after
known events, by Prometheus' conventions; and the metrics options of the CLI (no broker)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.cli import build_parser
from streamscribe.cli.consumers import alert_line
from streamscribe.cli.worker import child_argv
from streamscribe.consumers.alerts import (
    AlertStats,
    PhraseMatcher,
    alert_registry,
    publish_alerts,
)
from streamscribe.consumers.latency import LatencyWindow, SlaSpec
from streamscribe.consumers.metrics import LatencyMetrics, serve_metrics, stop_server
from streamscribe.consumers.sink import SinkHandler, SinkStats, sink_metrics
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.kafka import LoopStats
from streamscribe.core.settings import Settings
from streamscribe.processors.worker import build_worker
from streamscribe.processors.worker_metrics import LagProbe, worker_registry
from streamscribe.schemas.events import Alert
from streamscribe.schemas.transcripts import FinalTranscript

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    assert "_created" not in text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def fin(u: int, text: str = "please cancel my account") -> FinalTranscript:
    return FinalTranscript(
        session_id="s1", channel=1, role="customer", utterance=u, revision=1, text=text,
        start_ms=1000.0 * u, end_ms=1000.0 * u + 900, confidence=0.7,
    )  # fmt: skip


class FakeMessage:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self._v, self._o = value, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "t.transcripts"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"s1"

    def value(self) -> bytes | None:
        return self._v


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def deliver_all(self, what: str, error: Any = None) -> None:
        return None


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """What :class:`LagProbe` asks of faust's consumer: assignment, highwaters, position."""

    def assignment(self) -> set[TP]:
        return {TP("t.audio", 0), TP("t.audio", 1), TP("t.utterances", 3)}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {TP("t.audio", 0): 120, TP("t.audio", 1): 7, TP("t.utterances", 3): 40}

    async def position(self, tp: TP) -> int | None:
        return {TP("t.audio", 0): 100, TP("t.audio", 1): 7}.get(tp)


class FakeApp:
    """A started faust app as the collector sees it: ``started`` and its ``monitor``."""

    def __init__(self) -> None:
        self.started = True
        self.monitor = SimpleNamespace(
            messages_received_by_topic=Counter({"t.audio": 41, "t.utterances": 6}),
            messages_sent_by_topic=Counter({"t.utterances": 6, "t.transcripts": 9}),
            send_errors=0,
            rebalances=2,
        )


@pytest.fixture
def worker_stages(tmp_path: Path) -> Iterator[list[Any]]:
    _app, stages = build_worker(Settings(worker_data_dir=tmp_path / "w"))
    yield stages
    for stage in stages:
        stage.executor.shutdown(wait=False)


def test_worker_metrics_read_the_stages_own_counters(worker_stages: list[Any]) -> None:
    segmenter, recognizer = worker_stages
    lag = LagProbe()
    asyncio.run(lag.refresh(FakeConsumer()))
    app = FakeApp()
    app.started = False
    registry = worker_registry(worker_stages, lag, app)
    s = samples(registry)
    monitor = ("messages_received", "messages_sent", "send_errors", "rebalances")
    assert not any(  # the faust monitor's series: not before the app has started
        name.startswith(tuple(f"streamscribe_worker_{m}" for m in monitor)) for name, _ in s
    )
    app.started = True
    assert s[("streamscribe_decode_shed_total", ())] == 0
    assert s[("streamscribe_decode_queue_depth", ())] == 0

    async def noop(_out: Any) -> None:
        return None

    recognizer.scheduler.submit_partial("line-a", [b"x"], noop)
    recognizer.scheduler.submit_partial("line-a", [b"y"], noop)  # replaces the queued one
    recognizer.scheduler.submit_partial("line-b", [b"z"], noop)
    recognizer.core.stats.finals += 5
    recognizer.core.stats.errors += 1
    recognizer.drafts.stats.decodes += 7
    recognizer.drafts.stats.drafted += 3
    recognizer.drafts.stats.tokens += 90
    recognizer.drafts.stats.draft_tokens += 40
    segmenter.stats["chunks"] += 40
    segmenter.stats["dead_letters"] += 2
    s = samples(registry)
    assert s[("streamscribe_decode_coalesced_total", ())] == 1
    assert s[("streamscribe_decode_queue_depth", ())] == 2
    assert s[("streamscribe_recognizer_finals_total", ())] == 5
    assert s[("streamscribe_recognizer_errors_total", ())] == 1
    assert s[("streamscribe_recognizer_open_lines", ())] == 0
    assert s[("streamscribe_asr_draft_decodes_total", ())] == 7
    assert s[("streamscribe_asr_draft_drafted_total", ())] == 3
    assert s[("streamscribe_asr_draft_tokens_total", ())] == 90
    assert s[("streamscribe_asr_draft_draft_tokens_total", ())] == 40
    assert s[("streamscribe_segmenter_chunks_total", ())] == 40
    assert s[("streamscribe_segmenter_dead_letters_total", ())] == 2
    assert s[("streamscribe_segmenter_channels", ())] == 0
    lags = {k: v for k, v in s.items() if k[0] == "streamscribe_consumer_lag"}
    assert lags == {
        ("streamscribe_consumer_lag", (("partition", "0"), ("topic", "t.audio"))): 20,
        ("streamscribe_consumer_lag", (("partition", "1"), ("topic", "t.audio"))): 0,
    }
    topic = "topic"
    assert s[("streamscribe_worker_messages_received_total", ((topic, "t.audio"),))] == 41
    assert s[("streamscribe_worker_messages_sent_total", ((topic, "t.transcripts"),))] == 9
    assert s[("streamscribe_worker_rebalances_total", ())] == 2
    assert s[("streamscribe_worker_send_errors_total", ())] == 0
    assert s[("process_cpu_seconds_total", ())] >= 0


def test_sink_metrics_count_rows_replays_dead_letters_and_time_batches(tmp_path: Path) -> None:
    stats = SinkStats()
    with TranscriptStore(f"sqlite:///{tmp_path / 't.db'}") as store:
        publisher = FakePublisher()
        registry, handle = sink_metrics(stats, SinkHandler(store, publisher, "t.dl", stats))
        handle([FakeMessage(fin(0).encode(), 0), FakeMessage(b"junk", 1)])
        handle([FakeMessage(fin(0).encode(), 2), FakeMessage(fin(1).encode(), 3)])  # replay
    s = samples(registry)
    assert s[("streamscribe_sink_finals_total", ())] == 3
    assert s[("streamscribe_sink_finals_written_total", ())] == 2
    assert s[("streamscribe_sink_finals_unchanged_total", ())] == 1
    assert s[("streamscribe_sink_dead_letters_total", ())] == 1
    assert s[("streamscribe_sink_write_seconds_count", ())] == 2
    assert s[("streamscribe_sink_write_seconds_bucket", (("le", "+Inf"),))] == 2
    assert s[("streamscribe_sink_messages_total", ())] == 0  # the consume loop counts these
    assert len(publisher.sent) == 1


def test_alerts_are_handed_out_after_delivery_and_counted() -> None:
    stats, seen = AlertStats(), list[Alert]()
    publisher = FakePublisher()
    values = [fin(0).encode(), fin(1, "fine thanks").encode(), b"junk"]
    matcher = PhraseMatcher(["cancel my account", "supervisor"])
    publish_alerts(values, matcher, publisher, "t.alerts", stats, seen.append)
    s = samples(alert_registry(stats, LoopStats(batches=1, messages=3)))
    assert [a.phrase for a in seen] == ["cancel my account"]
    assert s[("streamscribe_alerts_published_total", ())] == 1
    assert s[("streamscribe_alerts_finals_total", ())] == 2
    assert s[("streamscribe_alerts_undecodable_total", ())] == 1
    assert s[("streamscribe_alerts_messages_total", ())] == 3
    line = alert_line(seen[0], "text")
    assert line == "s1 ch1 customer u0 @0.0s [cancel my account] please cancel my account"
    assert json.loads(alert_line(seen[0], "json"))["phrase"] == "cancel my account"


def test_serve_metrics_binds_the_given_host() -> None:
    m = LatencyMetrics(LatencyWindow(max_records=5), SlaSpec(450.0, 0.05))
    server = serve_metrics(m.registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
    finally:
        stop_server(server)
    assert "streamscribe_latency_finals_total 0.0" in body


@pytest.mark.parametrize("command", ["worker", "sink", "alerts --phrases x", "metrics"])
def test_long_running_commands_take_metrics_host_and_port(command: str) -> None:
    argv = [*command.split(), "--metrics-host", "0.0.0.0", "--metrics-port", "9200"]
    args = build_parser().parse_args(argv)
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", 9200)


def test_worker_children_get_the_metrics_options() -> None:
    args = build_parser().parse_args(["worker", "--workers", "2", "--metrics-port", "9200"])
    assert child_argv(args)[-4:] == ["--metrics-port", "9200", "--worker-log-level", "info"]


def test_settings_metrics_fields_from_env() -> None:
    s = Settings.from_env(
        {"STREAMSCRIBE_METRICS_HOST": "0.0.0.0", "STREAMSCRIBE_PROCESS_METRICS_PORT": "9109"}
    )
    assert (s.metrics_host, s.process_metrics_port, Settings().process_metrics_port) == (
        "0.0.0.0",
        9109,
        None,
    )
