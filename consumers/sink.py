"""The transcript sink: ``streamscribe.transcripts`` → SQL store, at least once, idempotent.

Commit order (the delivery guarantee is made here)::

    1. consume a batch (at most ``batch_size`` messages, one poll)
    2. decode each value; an undecodable one becomes a DeadLetter produced to
       ``<prefix>deadletter`` (source topic/partition/offset, reason, raw bytes)
    3. upsert every decoded event of the batch in ONE database transaction and commit it
    4. flush the dead-letter producer and check every delivery report (acks=all)
    5. (test hook ``after_db_commit``)
    6. commit the batch's offsets (last offset + 1 per partition) to Kafka, synchronously

Offsets are committed only after the rows and the dead letters are durable, so a crash
anywhere before step 6 replays the batch; the replay is harmless because the upsert is
idempotent (a final not published later than the stored one changes nothing) — at-least-once
delivery, exactly-once effect on the store. Dead letters themselves are at least once.
``enable.auto.commit`` and ``enable.auto.offset.store`` are off; a failed offset commit
(e.g. a rebalance) is logged and counted, and the next owner replays those messages.
A database error is retried (``DB_RETRIES``) and then stops the sink without committing.

Example::

    >>> from streamscribe.core.settings import Settings
    >>> stats = run_sink(Settings.from_env(), db_url="sqlite:///t.db",
    ...                  from_earliest=True, max_idle_s=5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamscribe.consumers.kafka_io import (
    DeliveryTracker,
    IdleClock,
    consumer_config,
    flush,
    produce,
    producer_config,
    stop_on_signals,
)
from streamscribe.consumers.store import TranscriptStore, WriteResult
from streamscribe.core.errors import ContractError, SinkError
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import DeadLetter
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import TranscriptEvent, decode_transcript

log = logging.getLogger(__name__)

STAGE: Final = "sink"
DEFAULT_GROUP_ID: Final = "streamscribe-sink"
DEFAULT_BATCH_SIZE: Final = 500
POLL_TIMEOUT_S: Final = 0.1  # bounds the publish->sink wait at low rates
DB_RETRIES: Final = 3
DB_RETRY_BACKOFF_S: Final = 0.5
DEADLETTER_FLUSH_TIMEOUT_S: Final = 30.0


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
class SinkStats:
    """Counters of one :func:`run_sink` run."""

    messages: int = 0
    finals: int = 0
    finals_written: int = 0
    finals_unchanged: int = 0
    partials: int = 0
    dead_letters: int = 0
    batches: int = 0
    offset_commits: int = 0
    offset_commit_failures: int = 0
    kafka_errors: int = 0
    db_retries: int = 0

    def add(self, batch: DecodedBatch, result: WriteResult) -> None:
        self.messages += batch.messages
        self.finals += result.finals_in
        self.finals_written += result.finals_written
        self.finals_unchanged += result.finals_unchanged
        self.partials += result.partials_in
        self.dead_letters += len(batch.dead_letters)
        self.batches += 1


def decode_batch(messages: Sequence[KafkaMessage], *, stage: str = STAGE) -> DecodedBatch:
    """Decode a polled batch; undecodable values become dead letters, never exceptions.

    Messages that carry a Kafka error (not data) are skipped by the caller beforehand.
    """
    events: list[TranscriptEvent] = []
    dead: list[DeadLetter] = []
    offsets: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        raw = msg.value()
        offsets[(topic, partition)] = max(offsets.get((topic, partition), 0), offset + 1)
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
    return DecodedBatch(events, dead, offsets, len(messages))


def _write_with_retry(
    store: TranscriptStore, events: list[TranscriptEvent], stats: SinkStats
) -> WriteResult:
    for attempt in range(DB_RETRIES + 1):
        try:
            return store.write(events)
        except SinkError as exc:
            if attempt == DB_RETRIES:
                raise
            stats.db_retries += 1
            delay = DB_RETRY_BACKOFF_S * 2**attempt
            log.warning("%s; retrying in %.1f s", exc.reason, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def run_sink(
    settings: Settings,
    *,
    db_url: str | None = None,
    group_id: str = DEFAULT_GROUP_ID,
    from_earliest: bool = False,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    after_db_commit: Callable[[DecodedBatch], None] | None = None,
) -> SinkStats:
    """Consume transcripts into the store until stopped (see the module doc for the order).

    Stops on SIGTERM/SIGINT, when ``stop_event`` is set, or after ``max_idle_s`` seconds
    without a message. ``after_db_commit`` runs after the batch is durable and before its
    offsets are committed (tests kill the process there). Raises :class:`SinkError` when
    the database keeps failing (offsets of the failed batch are not committed).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    topics = Topics(settings.topic_prefix)
    store = TranscriptStore(db_url or settings.db_url)
    stop = stop_event or threading.Event()
    stats = SinkStats()
    consumer = Consumer(
        consumer_config(
            settings, group_id=group_id, from_earliest=from_earliest, client_id="streamscribe-sink"
        )
    )
    producer = Producer(producer_config(settings, client_id="streamscribe-sink-deadletter"))
    tracker = DeliveryTracker("dead letters")
    log.info("sink: %s -> %s (group %s)", topics.transcripts, store.safe_url, group_id)
    idle = IdleClock(max_idle_s)
    try:
        consumer.subscribe([topics.transcripts], on_assign=idle.on_assign)
        with stop_on_signals(stop):
            while not stop.is_set():
                polled = consumer.consume(num_messages=batch_size, timeout=POLL_TIMEOUT_S)
                msgs = [m for m in polled if not _is_error(m, stats)]
                if not msgs:
                    if idle.expired():
                        log.info("sink: idle for %.1f s, stopping", max_idle_s)
                        break
                    continue
                idle.touch()
                batch = decode_batch(msgs)
                for dl in batch.dead_letters:
                    log.warning(
                        "dead letter %s[%d]@%d: %s",
                        dl.source_topic,
                        dl.source_partition,
                        dl.source_offset,
                        dl.reason,
                    )
                    key = dl.key.encode() if dl.key is not None else None
                    produce(producer, topics.deadletter, key, dl.encode(), tracker)
                result = _write_with_retry(store, batch.events, stats)
                if batch.dead_letters:
                    flush(producer, tracker, DEADLETTER_FLUSH_TIMEOUT_S)
                stats.add(batch, result)
                if after_db_commit is not None:
                    after_db_commit(batch)
                _commit(consumer, batch, stats)
    finally:
        consumer.close()
        producer.flush(DEADLETTER_FLUSH_TIMEOUT_S)
        store.close()
    log.info("sink: stopped: %s", stats)
    return stats


def _is_error(msg: Message, stats: SinkStats) -> bool:
    err = msg.error()
    if err is None:
        return False
    stats.kafka_errors += 1
    if err.fatal():
        raise SinkError(f"fatal Kafka error: {err.str()}")
    log.warning("consumer error: %s", err.str())
    return True


def _commit(consumer: Consumer, batch: DecodedBatch, stats: SinkStats) -> None:
    try:
        consumer.commit(offsets=batch.topic_partitions(), asynchronous=False)
        stats.offset_commits += 1
    except KafkaException as exc:
        stats.offset_commit_failures += 1
        log.warning("offset commit failed (the batch will be replayed, idempotently): %s", exc)


__all__ = [
    "DEFAULT_GROUP_ID",
    "DecodedBatch",
    "SinkStats",
    "decode_batch",
    "run_sink",
]
