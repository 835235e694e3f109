"""The transcript sink: ``streamscribe.transcripts`` → SQL store, at least once, idempotent.

Commit order (the delivery guarantee is made here)::

    1. consume a batch (at most ``batch_size`` messages, one poll) — the one consume loop,
       :func:`streamscribe.core.kafka.consume_batches`
    2. decode each value; an undecodable one becomes a DeadLetter produced to
       ``<prefix>deadletter`` (source topic/partition/offset, reason, raw bytes)
    3. upsert every decoded event of the batch in ONE database transaction and commit it
    4. wait for every dead letter's delivery report and check it (acks=all)
    5. (test hook ``after_db_commit``)
    6. the loop commits the batch's offsets (last offset + 1 per partition), synchronously

Steps 2 to 5 are :class:`SinkHandler`, the loop's ``handle``; the loop commits only after
it has returned, so offsets are committed only after the rows and the dead letters are
durable, and a crash anywhere before step 6 replays the batch; the replay is harmless
because the upsert is idempotent (a final not published later than the stored one changes
nothing) — at-least-once delivery, exactly-once effect on the store. Dead letters
themselves are at least once. ``enable.auto.commit`` and ``enable.auto.offset.store`` are
off; a failed offset commit (e.g. a rebalance) is logged and counted, and the next owner
replays those messages. A database error is retried (``DB_RETRIES`` times, exponential
backoff) and then stops the sink without committing.

Example::

    >>> from streamscribe.core.settings import Settings
    >>> stats = run_sink(Settings.from_env(), db_url="sqlite:///t.db",
    ...                  from_earliest=True, max_idle_s=5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from streamscribe.consumers.metrics import StatsCollector, loop_counters, serve_metrics, stop_server
from streamscribe.consumers.store import TranscriptStore, WriteResult
from streamscribe.core.errors import ContractError, SinkError
from streamscribe.core.kafka import (
    DeliveryProducer,
    LoopStats,
    Publisher,
    Subscription,
    consume_batches,
    consumer_config,
    next_offsets,
)
from streamscribe.core.metrics import LATENCY_BUCKETS_S, new_registry
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import DeadLetter
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import TranscriptEvent, decode_transcript

log = logging.getLogger(__name__)

STAGE: Final = "sink"
GROUP_ROLE: Final = "sink"  # group <prefix stem>-sink (Settings.group_for)
DEFAULT_BATCH_SIZE: Final = 500
CLIENT_ID: Final = "streamscribe-sink"
DEADLETTER_CLIENT_ID: Final = "streamscribe-sink-deadletter"
LAG_CLIENT_ID: Final = "streamscribe-sink-lag"
#: A scrape waits at most this long for each broker answer of the lag (then skips it).
LAG_TIMEOUT_S: Final = 2.0
DB_RETRIES: Final = 3
#: The wait before the n-th database retry is this times 2**(n-1): 0.5, 1, 2 s.
DB_RETRY_BACKOFF_S: Final = 0.5


class KafkaMessage(Protocol):
    """What the sink reads from a ``confluent_kafka.Message`` (fakes in unit tests)."""

    def error(self) -> KafkaError | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class DecodedBatch:
    """One polled batch: decoded events, dead letters, and the offsets to commit."""

    events: list[TranscriptEvent]
    dead_letters: list[DeadLetter]
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> next offset to read
    messages: int

    def topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in sorted(self.offsets.items())]


@dataclass
class SinkStats(LoopStats):
    """Counters of one :func:`run_sink` run.

    The consume loop counts ``batches``, ``messages``, ``kafka_errors``, ``offset_commits``
    and ``offset_commit_failures`` (of the batches handled); :meth:`add` counts the rest.
    """

    finals: int = 0
    finals_written: int = 0
    finals_unchanged: int = 0
    partials: int = 0
    dead_letters: int = 0
    db_retries: int = 0

    def add(self, batch: DecodedBatch, result: WriteResult) -> None:
        self.finals += result.finals_in
        self.finals_written += result.finals_written
        self.finals_unchanged += result.finals_unchanged
        self.partials += result.partials_in
        self.dead_letters += len(batch.dead_letters)


def decode_batch(messages: Sequence[KafkaMessage], *, stage: str = STAGE) -> DecodedBatch:
    """Decode a polled batch; undecodable values become dead letters, never exceptions.

    Messages that carry a Kafka error (not data) are skipped by the caller beforehand.
    """
    events: list[TranscriptEvent] = []
    dead: list[DeadLetter] = []
    for msg in messages:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        raw = msg.value()
        try:
            if raw is None:
                raise ContractError("transcript_event: empty value (tombstone)", raw=b"")
            events.append(decode_transcript(raw))
        except ContractError as exc:
            exc.at(topic, partition, offset)
            dead.append(DeadLetter.from_error(exc, stage=stage, key=msg.key()))
        except (ValueError, TypeError, KeyError) as exc:  # a value the schema let through
            dead.append(
                DeadLetter.from_raw(
                    raw,
                    reason=f"transcript_event: {exc}",
                    stage=stage,
                    source_topic=topic,
                    partition=partition,
                    offset=offset,
                    key=msg.key(),
                    error_type=type(exc).__name__,
                )
            )
    offsets = {(tp.topic, tp.partition): tp.offset for tp in next_offsets(messages)}
    return DecodedBatch(events, dead, offsets, len(messages))


def _write_with_retry(
    store: TranscriptStore,
    events: list[TranscriptEvent],
    stats: SinkStats,
    *,
    backoff_s: float = DB_RETRY_BACKOFF_S,
) -> WriteResult:
    """``store.write``, retried ``DB_RETRIES`` times on :class:`SinkError`, then raised."""

    def before_sleep(state: RetryCallState) -> None:
        stats.db_retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s; retrying in %.1f s", getattr(exc, "reason", exc), wait_s)

    retrying = Retrying(
        retry=retry_if_exception_type(SinkError),
        stop=stop_after_attempt(DB_RETRIES + 1),
        wait=wait_exponential(multiplier=backoff_s, exp_base=2),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(store.write, events)


class SinkHandler:
    """Steps 2 to 5 of the commit order for one batch (the consume loop's ``handle``).

    Returns only when the batch's rows are committed and its dead letters delivered;
    raises :class:`SinkError` otherwise (and the loop commits no offsets).
    """

    def __init__(
        self,
        store: TranscriptStore,
        dead_letters: Publisher,
        deadletter_topic: str,
        stats: SinkStats,
        *,
        after_db_commit: Callable[[DecodedBatch], None] | None = None,
        db_retry_backoff_s: float = DB_RETRY_BACKOFF_S,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.deadletter_topic = deadletter_topic
        self.stats = stats
        self.after_db_commit = after_db_commit
        self.db_retry_backoff_s = db_retry_backoff_s

    def __call__(self, messages: Sequence[KafkaMessage]) -> None:
        batch = decode_batch(messages)
        for dl in batch.dead_letters:
            log.warning(
                "dead letter %s[%d]@%d: %s",
                dl.source_topic,
                dl.source_partition,
                dl.source_offset,
                dl.reason,
            )
            key = dl.key.encode() if dl.key is not None else None
            self.dead_letters.send(self.deadletter_topic, key, dl.encode())
        result = _write_with_retry(
            self.store, batch.events, self.stats, backoff_s=self.db_retry_backoff_s
        )
        if batch.dead_letters:
            self.dead_letters.deliver_all("dead letters", error=SinkError)
        self.stats.add(batch, result)
        if self.after_db_commit is not None:
            self.after_db_commit(batch)


#: :class:`SinkStats` fields exported as ``streamscribe_sink_<name>_total`` (docs/metrics.md).
SINK_COUNTERS: Final = {
    "finals": ("streamscribe_sink_finals", "Finals consumed"),
    "finals_written": ("streamscribe_sink_finals_written", "Final rows inserted or updated"),
    "finals_unchanged": (
        "streamscribe_sink_finals_unchanged",
        "Finals that changed nothing (replays of stored ones)",
    ),
    "partials": ("streamscribe_sink_partials", "Partials consumed (not stored as rows)"),
    "dead_letters": ("streamscribe_sink_dead_letters", "Undecodable values dead-lettered"),
    "db_retries": ("streamscribe_sink_db_retries", "Database transactions retried"),
    **loop_counters("sink"),
}


class SinkLag(Collector):
    """``streamscribe_consumer_lag{topic, partition}`` of the sink, computed at scrape time.

    The position of a partition is the sink's own: the offset after the last message its
    consumer delivered and the sink made durable (what it commits next); the lag is the
    partition's high watermark minus that position. A partition shows up once the sink has
    handled a message of it. A partition whose committed offset in the sink's group is past
    this sink's position has moved to another sink of the group (a rebalance) and is
    dropped. The watermarks and committed offsets are asked of the broker by a reader of
    its own that never joins the group (``reader``: a factory, for tests).

    >>> lag = SinkLag(reader=lambda: None)
    >>> lag.observe([_Msg("t.transcripts", 2, 41), _Msg("t.transcripts", 2, 40)])
    >>> lag.positions
    {('t.transcripts', 2): 42}
    """

    def __init__(
        self,
        settings: Settings | None = None,
        group_id: str = "",
        *,
        reader: Callable[[], Any] | None = None,
    ) -> None:
        if reader is None:
            if settings is None:
                raise ValueError("SinkLag needs settings or a reader")
            conf = consumer_config(
                settings, group_id=group_id, from_earliest=True, client_id=LAG_CLIENT_ID
            )
            reader = functools.partial(Consumer, conf)  # created at the first scrape
        self._new_reader = reader
        self._reader: Any = None
        self._lock = threading.Lock()
        self.positions: dict[tuple[str, int], int] = {}

    def observe(self, messages: Sequence[KafkaMessage]) -> None:
        """After a batch is durable: its partitions' positions (last offset + 1)."""
        for tp in next_offsets(messages):
            key = (tp.topic, tp.partition)
            self.positions[key] = max(self.positions.get(key, 0), tp.offset)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        positions = dict.copy(self.positions)  # one atomic copy; the loop thread writes it
        if positions:
            with self._lock:  # scrapes may come in parallel; one reader, one at a time
                try:
                    for (topic, partition), lag in self._lags(positions):
                        family.add_metric([topic, str(partition)], float(lag))
                except KafkaException as exc:
                    log.warning("sink lag: the broker did not answer: %s", exc)
        yield family

    def _lags(self, positions: dict[tuple[str, int], int]) -> Iterator[tuple[tuple[str, int], int]]:
        if self._reader is None:
            self._reader = self._new_reader()
        reader = self._reader
        tps = [TopicPartition(t, p) for t, p in sorted(positions)]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in reader.committed(tps, timeout=LAG_TIMEOUT_S)
        }
        for key, position in sorted(positions.items()):
            if committed.get(key, -1) > position:  # another sink of the group has it now
                self.positions.pop(key, None)
                continue
            _low, high = reader.get_watermark_offsets(
                TopicPartition(*key), timeout=LAG_TIMEOUT_S, cached=False
            )
            yield key, max(0, int(high) - position)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "streamscribe_consumer_lag",
            "Messages between the sink's position and the high watermark, per partition",
            labels=["topic", "partition"],
        )

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


@dataclass(frozen=True)
class _Msg:
    """A message as :meth:`SinkLag.observe` reads it (for the doctest)."""

    _topic: str
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def sink_metrics(
    stats: SinkStats,
    handle: Callable[[Sequence[KafkaMessage]], None],
    lag: SinkLag | None = None,
) -> tuple[CollectorRegistry, Callable[[Sequence[KafkaMessage]], None]]:
    """The sink's registry (its counters read from ``stats`` at scrape time) and ``handle``
    timed into ``streamscribe_sink_write_seconds`` (a handled batch: rows + dead letters);
    with ``lag``, the handled batches' positions feed its consumer lag."""
    registry = new_registry()
    registry.register(StatsCollector(lambda: stats, SINK_COUNTERS))
    if lag is not None:
        registry.register(lag)
    seconds = Histogram(
        "streamscribe_sink_write_seconds",
        "One batch made durable: database transaction and dead-letter delivery",
        buckets=LATENCY_BUCKETS_S,
        registry=registry,
    )

    def timed(messages: Sequence[KafkaMessage]) -> None:
        start = time.perf_counter()
        handle(messages)
        seconds.observe(time.perf_counter() - start)
        if lag is not None:
            lag.observe(messages)

    return registry, timed


def run_sink(
    settings: Settings,
    *,
    db_url: str | None = None,
    group_id: str | None = None,
    from_earliest: bool = False,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    after_db_commit: Callable[[DecodedBatch], None] | None = None,
) -> SinkStats:
    """Consume transcripts into the store until stopped (see the module doc for the order).

    ``group_id`` defaults to ``settings.group_for("sink")`` (``streamscribe-sink`` with the
    default prefix). Stops on SIGTERM/SIGINT, when ``stop_event`` is set, or after
    ``max_idle_s`` seconds without a message. ``after_db_commit`` runs after the batch is
    durable and before its offsets are committed (tests kill the process there). Raises
    :class:`SinkError` when the database keeps failing (offsets of the failed batch are not
    committed).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    topics = Topics(settings.topic_prefix)
    group_id = group_id or settings.group_for(GROUP_ROLE)
    store = TranscriptStore(db_url or settings.db_url, live_group=settings.group_id)
    stats = SinkStats()
    producer = DeliveryProducer.from_settings(settings, client_id=DEADLETTER_CLIENT_ID)
    handler = SinkHandler(
        store, producer, topics.deadletter, stats, after_db_commit=after_db_commit
    )
    handle: Callable[[Sequence[KafkaMessage]], None] = handler
    server: Any = None
    lag: SinkLag | None = None
    if settings.process_metrics_port is not None:
        lag = SinkLag(settings, group_id)
        registry, handle = sink_metrics(stats, handler, lag)
        server = serve_metrics(registry, settings.metrics_host, settings.process_metrics_port)
    log.info("sink: %s -> %s (group %s)", topics.transcripts, store.safe_url, group_id)
    sub = Subscription([topics.transcripts], group_id, CLIENT_ID, from_earliest)
    try:
        consume_batches(
            settings,
            sub,
            handle,
            batch_size=batch_size,
            max_idle_s=max_idle_s,
            stop_event=stop_event,
            stats=stats,
        )
    finally:
        if server is not None:
            stop_server(server)
        if lag is not None:
            lag.close()
        producer.close()
        store.close()
    log.info("sink: stopped: %s", stats)
    return stats


__all__ = [
    "GROUP_ROLE",
    "DecodedBatch",
    "SinkHandler",
    "SinkLag",
    "SinkStats",
    "decode_batch",
    "run_sink",
    "sink_metrics",
]
