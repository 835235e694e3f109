"""The consumers' batch handlers without a broker: the sink's commit order, dead letters,
idempotent upsert counts and database retries; the finals reader and alerts on fake batches."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streamscribe.consumers import sink as sink_module
from streamscribe.consumers.alerts import AlertStats, PhraseMatcher, publish_alerts
from streamscribe.consumers.decode import ReadCounts, finals_of
from streamscribe.consumers.sink import DecodedBatch, SinkHandler, SinkStats
from streamscribe.consumers.store import TranscriptStore, WriteResult
from streamscribe.core.errors import SinkError, StreamscribeError
from streamscribe.schemas.events import Alert, DeadLetter
from streamscribe.schemas.transcripts import PartialTranscript, TranscriptEvent
from tests.unit.test_consumers_sink import FakeMessage, fin

DEADLETTER_TOPIC = "p.deadletter"


class FakeProducer:
    """Records sends and delivery waits in a shared event log; can fail deliveries."""

    def __init__(self, log: list[str], *, fail: bool = False) -> None:
        self.log = log
        self.fail = fail
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))
        self.log.append(f"send {topic}")

    def deliver_all(self, what: str, error: type[StreamscribeError] = SinkError) -> None:
        self.log.append(f"deliver {what}")
        if self.fail:
            raise error(f"1 {what} not delivered: broker down")


class LoggingStore(TranscriptStore):
    """An in-memory store that logs each write and fails the first ``failures`` of them."""

    def __init__(self, log: list[str], failures: int = 0) -> None:
        super().__init__("sqlite://")
        self.log = log
        self.failures = failures

    def write(
        self, events: Sequence[TranscriptEvent], *, stored_at_us: int | None = None
    ) -> WriteResult:
        if self.failures:
            self.failures -= 1
            self.log.append("write failed")
            raise SinkError("database write failed (sqlite): disk I/O error")
        self.log.append(f"write {len(events)}")
        return super().write(events, stored_at_us=stored_at_us)


def handler_for(
    store: TranscriptStore, producer: FakeProducer, log: list[str]
) -> tuple[SinkHandler, SinkStats]:
    stats = SinkStats()

    def hook(batch: DecodedBatch) -> None:
        log.append(f"hook {batch.messages}")

    handler = SinkHandler(
        store, producer, DEADLETTER_TOPIC, stats, after_db_commit=hook, db_retry_backoff_s=0.0
    )
    return handler, stats


def test_sink_handler_dead_letters_then_writes_then_hooks() -> None:
    log: list[str] = []
    store, producer = LoggingStore(log), FakeProducer(log)
    handler, stats = handler_for(store, producer, log)
    handler(
        [
            FakeMessage(fin(0).encode(), 0, 10),
            FakeMessage(b"{not json", 0, 11, key=b"s7"),
            FakeMessage(fin(1).encode(), 1, 3),
        ]
    )
    assert log == ["send p.deadletter", "write 2", "deliver dead letters", "hook 3"]
    [(topic, key, value)] = producer.sent
    dl = DeadLetter.decode(value)
    assert (topic, key, dl.source_partition, dl.source_offset, dl.raw, dl.stage) == (
        DEADLETTER_TOPIC,
        b"s7",
        0,
        11,
        b"{not json",
        "sink",
    )
    assert (stats.finals, stats.finals_written, stats.dead_letters, stats.partials) == (2, 2, 1, 0)
    assert [r.final.text for r in store.finals("s1")] == ["hello", "hello"]


def test_sink_handler_replay_is_idempotent_and_skips_delivery_without_dead_letters() -> None:
    log: list[str] = []
    store, producer = LoggingStore(log), FakeProducer(log)
    handler, stats = handler_for(store, producer, log)
    part = PartialTranscript(
        session_id="s1", channel=1, role="customer", utterance=5, revision=2, text="wait",
        start_ms=5000.0, end_ms=5400.0, stable_text="wa",
    )  # fmt: skip
    batch = [
        FakeMessage(fin(0, "zero").encode(), 0, 0),
        FakeMessage(fin(0, "zero").encode(), 0, 1),  # duplicate within the batch
        FakeMessage(part.encode(), 0, 2),
    ]
    handler(batch)
    handler(batch)  # the replay after a crash before the offset commit
    assert "deliver dead letters" not in log and producer.sent == []
    assert (stats.finals, stats.finals_written, stats.finals_unchanged) == (4, 1, 3)
    assert (stats.partials, stats.dead_letters) == (2, 0)
    assert store.counts() == {
        "sessions": 1,
        "channels": 1,
        "utterances": 1,
        "partials": 1,
        "latency": 0,
    }


def test_sink_handler_retries_the_database_then_gives_up() -> None:
    log: list[str] = []
    store = LoggingStore(log, failures=2)
    handler, stats = handler_for(store, FakeProducer(log), log)
    handler([FakeMessage(fin(0).encode(), 0, 0)])
    assert log == ["write failed", "write failed", "write 1", "hook 1"]
    assert (stats.db_retries, stats.finals_written) == (2, 1)

    log.clear()
    store.failures = sink_module.DB_RETRIES + 1
    with pytest.raises(SinkError, match="disk I/O error"):
        handler([FakeMessage(fin(1).encode(), 0, 1)])
    assert log == ["write failed"] * (sink_module.DB_RETRIES + 1)  # no hook: nothing committed
    assert stats.db_retries == 2 + sink_module.DB_RETRIES


def test_sink_handler_raises_when_dead_letters_are_not_delivered() -> None:
    log: list[str] = []
    handler, stats = handler_for(LoggingStore(log), FakeProducer(log, fail=True), log)
    with pytest.raises(SinkError, match="dead letters not delivered"):
        handler([FakeMessage(b"\xff", 0, 0)])
    assert log == ["send p.deadletter", "write 0", "deliver dead letters"]
    assert stats.dead_letters == 0  # the batch is not counted: it will be replayed


def test_finals_of_counts_partials_and_garbage() -> None:
    part = PartialTranscript(
        session_id="s1", channel=0, role="agent", utterance=0, revision=1, text="x",
        start_ms=0.0, end_ms=1.0,
    )  # fmt: skip
    counts = ReadCounts()
    got = list(finals_of([fin(0).encode(), part.encode(), b"", None, fin(1).encode()], counts))
    assert [f.utterance for f in got] == [0, 1]
    assert counts == ReadCounts(messages=5, finals=2, undecodable=2)


def test_publish_alerts_sends_then_waits_for_delivery() -> None:
    log: list[str] = []
    producer = FakeProducer(log)
    stats = AlertStats()
    values = [fin(0, "get me a manager").encode(), b"garbage", fin(1, "fine thanks").encode()]
    publish_alerts(values, PhraseMatcher(["Manager"]), producer, "p.alerts", stats)
    assert log == ["send p.alerts", "deliver alerts"]
    [(topic, key, value)] = producer.sent
    alert = Alert.decode(value)
    assert (topic, key, alert.phrase, alert.utterance) == ("p.alerts", b"s1", "Manager", 0)
    assert (stats.messages, stats.finals, stats.undecodable, stats.alerts) == (3, 2, 1, 1)
    with pytest.raises(SinkError, match="alerts not delivered"):
        publish_alerts(values, PhraseMatcher(["manager"]), FakeProducer(log, fail=True),
                       "p.alerts", AlertStats())  # fmt: skip
