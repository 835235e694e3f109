"""Erasing one session for an erasure request: its store rows and its processors' table keys.

:func:`forget_session` does three things, in this order (each is idempotent, so a run
that failed half-way is simply run again):

1. **Find the keys.** Each changelog topic of the processors' tables
   (:data:`~streamscribe.schemas.topics.TABLE_KEY_SHAPES`, one set per processors group)
   is read from its start to the high watermarks taken when the scan starts. A key
   belongs to the session when it is the session id followed by exactly the table's key
   shape (:func:`~streamscribe.schemas.topics.is_session_key`): ``call-1`` never matches
   ``call-10#0``. The latest record of each (partition, key) says whether it is still live.
2. **Write tombstones** (the key, a null value) for every live key, each to the
   partition it was found in: faust writes a table's changelog to the partition of the
   event that changed it (the session's partition), not to the hash of the table key, so
   the key's own hash would put the tombstone beside nothing. The producer is the
   idempotent one of :func:`~streamscribe.core.kafka.producer_config`; every delivery
   report is awaited and a failure raises :class:`BrokerError` before the store is touched.
   Compaction then drops every older value of those keys (audio pieces, line states).
   The voice assistant's session state (``<stem>-assistant-sessions-changelog``, raw
   session-id keys) is erased the same way.
3. **Delete the store rows** (:meth:`TranscriptStore.forget`, one transaction).

What it does not do: records on the stream topics (audio, utterances, transcripts,
events) cannot be deleted one session at a time; they expire with the topics' retention
(:class:`~streamscribe.schemas.topics.Retention`). A worker that is running keeps its
in-memory copy of the tables until it restarts (it then restores from the changelogs,
without the session); run ``forget`` after the session ended -- while the session is open
a worker writes its state again, which the report flags (:attr:`ForgetReport.still_open`).
``docs/privacy.md`` says the same for operators.

Example::

    report = forget_session(settings, "call-1")
    print(report.store, [(t.table, t.tombstoned) for t in report.tables])
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.admin import ADMIN_TIMEOUT_S, admin_client
from streamscribe.core.errors import BrokerError
from streamscribe.core.kafka import producer_config, reader_config
from streamscribe.core.settings import Settings
from streamscribe.schemas.commands import assistant_state_topic
from streamscribe.schemas.topics import TABLE_KEY_SHAPES, changelog_topic, is_session_key

log = logging.getLogger(__name__)

CLIENT_ID: Final = "streamscribe-forget"
SCAN_TIMEOUT_S: Final = 120.0
SCAN_POLL_S: Final = 0.5
#: The assistant's state topic: ``<stem>-assistant-sessions-changelog`` (its group's).
ASSISTANT_ROLE: Final = "assistant"
ASSISTANT_TABLE: Final = "sessions"
#: Tables whose live keys mean the segmenter still has the session open.
OPEN_TABLES: Final = ("segmenter-sessions", "segmenter-channels")


@dataclass(frozen=True)
class TableKey:
    """One key of a table as its changelog holds it: raw key bytes, partition, liveness."""

    partition: int
    key: bytes
    live: bool


@dataclass(frozen=True)
class TableErasure:
    """What was found and erased in one table's changelog."""

    group_id: str
    table: str
    topic: str
    keys: int  # the session's keys in the changelog (live or already deleted)
    tombstoned: int  # tombstones written (the keys that were live)


@dataclass(frozen=True)
class ForgetReport:
    session_id: str
    store_url: str
    store: dict[str, int]  # rows deleted per store table
    tables: list[TableErasure] = field(default_factory=list)
    #: Tables that held the session as open (a worker may write its state again).
    still_open: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether anything of the session was found (rows, or live table keys)."""
        return any(self.store.values()) or any(t.tombstoned for t in self.tables)


def session_keys(
    table: str, records: Iterable[tuple[int, bytes | None, bytes | None]], session_id: str
) -> list[TableKey]:
    """The session's keys among changelog ``records`` (partition, key, value), in order.

    The latest record of a (partition, key) decides whether it is live; keys that are not
    JSON strings (not faust's) are skipped.

    >>> recs = [(2, b'"s1#0"', b"{}"), (2, b'"s10#0"', b"{}"), (2, b'"s1#1"', b"{}"),
    ...         (2, b'"s1#1"', None)]
    >>> [(k.key, k.live) for k in session_keys("segmenter-ended", recs, "s1")]
    [(b'"s1#0"', True), (b'"s1#1"', False)]
    >>> [k.key for k in session_keys("sessions", [(0, b"s1", b"{}"), (0, b"s10", b"{}")], "s1")]
    [b's1']
    """
    latest: dict[tuple[int, bytes], bool] = {}
    for partition, raw, value in records:
        if raw is None:
            continue
        if table == ASSISTANT_TABLE:  # raw utf-8 session ids, not faust's JSON keys
            if raw == session_id.encode():
                latest[(partition, raw)] = value is not None
            continue
        try:
            key = json.loads(raw)
        except ValueError:
            continue
        if isinstance(key, str) and is_session_key(table, key, session_id):
            latest[(partition, raw)] = value is not None
    return [TableKey(p, k, live) for (p, k), live in latest.items()]


def forget_session(
    settings: Settings,
    session_id: str,
    *,
    db_url: str | None = None,
    group_ids: Sequence[str] = (),
) -> ForgetReport:
    """Erase ``session_id`` from the store and the tables of ``group_ids`` (default: the
    settings' processors group); see the module docstring for the order and guarantees."""
    groups = list(group_ids) or [settings.group_id]
    url = db_url or settings.db_url
    with TranscriptStore(url, create=False) as store:  # a wrong path fails before any write
        existing = set(admin_client(settings.bootstrap).list_topics(timeout=ADMIN_TIMEOUT_S).topics)
        found: list[tuple[str, str, str, list[TableKey]]] = []
        for group in groups:
            for table in TABLE_KEY_SHAPES:
                topic = changelog_topic(group, table)
                if topic in existing:
                    found.append(
                        (group, table, topic, scan_changelog(settings, topic, table, session_id))
                    )
        # The voice assistant's session state (consumers/assistant_state.py): its own
        # compacted topic per group, keyed by the raw session id.
        assistant = assistant_state_topic(settings.group_for(ASSISTANT_ROLE))
        if assistant in existing:
            found.append(
                (
                    settings.group_for(ASSISTANT_ROLE),
                    ASSISTANT_TABLE,
                    assistant,
                    scan_changelog(settings, assistant, ASSISTANT_TABLE, session_id),
                )
            )
        live = [(topic, k) for _, _, topic, keys in found for k in keys if k.live]
        if live:
            write_tombstones(settings, live)
        erased = [
            TableErasure(group, table, topic, len(keys), sum(k.live for k in keys))
            for group, table, topic, keys in found
        ]
        still_open = [
            f"{group}/{table}"
            for group, table, _, keys in found
            if table in OPEN_TABLES and any(k.live for k in keys)
        ]
        removed = store.forget(session_id)
        return ForgetReport(session_id, store.safe_url, removed, erased, still_open)


def scan_changelog(settings: Settings, topic: str, table: str, session_id: str) -> list[TableKey]:
    """Read ``topic`` from its start to the high watermarks of now; the session's keys."""
    consumer = Consumer(reader_config(settings.bootstrap, client=CLIENT_ID))
    try:
        return session_keys(table, _read_to_end(consumer, topic), session_id)
    finally:
        consumer.close()


def _read_to_end(
    consumer: Consumer, topic: str
) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """(partition, key, value) of every record of ``topic`` up to the high watermarks taken
    first (values are not kept: the caller only looks at which are null)."""
    md = consumer.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics[topic]
    todo: dict[int, int] = {}
    starts = []
    for p in md.partitions:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if hi > lo:
            todo[p] = hi
            starts.append(TopicPartition(topic, p, lo))
    if not starts:
        return
    consumer.assign(starts)
    read = 0
    deadline = time.monotonic() + SCAN_TIMEOUT_S
    while todo:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"reading {topic} took over {SCAN_TIMEOUT_S:g} s ({read} records read); "
                "nothing was erased"
            )
        msg = consumer.poll(SCAN_POLL_S)
        if msg is None or _failed(msg, topic):
            continue
        p, offset = msg.partition(), msg.offset()
        if p is None or offset is None or p not in todo:
            continue
        read += 1
        yield p, msg.key(), msg.value()
        if offset + 1 >= todo[p]:
            del todo[p]


def _failed(msg: Message, topic: str) -> bool:
    err = msg.error()
    if err is None:
        return False
    if err.code() == KafkaError._PARTITION_EOF:
        return True
    if err.fatal() or not err.retriable():
        raise BrokerError(f"reading {topic} failed: {err.str()}")
    log.warning("reading %s: %s", topic, err.str())
    return True


def write_tombstones(settings: Settings, keys: Sequence[tuple[str, TableKey]]) -> None:
    """Produce a tombstone for each (topic, key) to the key's partition; wait for them all.

    Raises :class:`BrokerError` if any is not delivered within ``flush_timeout_s``.
    """
    producer = Producer(producer_config(settings.bootstrap, linger_ms=0, client_id=CLIENT_ID))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    for topic, k in keys:
        kwargs: dict[str, Any] = {"partition": k.partition, "on_delivery": on_delivery}
        while True:
            try:
                producer.produce(topic, key=k.key, value=None, **kwargs)
                break
            except BufferError:
                producer.poll(SCAN_POLL_S)
        producer.poll(0)
    remaining = producer.flush(settings.flush_timeout_s)
    if remaining:
        raise BrokerError(
            f"{remaining} of {len(keys)} tombstones undelivered after "
            f"{settings.flush_timeout_s:g} s; the store was not touched (run forget again)"
        )
    if failures:
        raise BrokerError(
            f"{len(failures)} of {len(keys)} tombstones not delivered ({failures[0]}); "
            "the store was not touched (run forget again)"
        )
