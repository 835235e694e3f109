"""The faust app of the processors: topics, tables and the helpers every agent shares.

Delivery guarantee (at-least-once, made here for every stage):

1. Agents run with ``concurrency=1`` (more loses in-flight messages on a crash, faust
   issue 606) and read raw bytes (``value_serializer="raw"``): decoding happens in our
   code, inside a ``try``, so an undecodable value becomes a dead letter, never a crash.
2. A batch of events (``take_events``) is handled completely — outputs sent, table state
   written — before faust acks it. An exception inside a faust agent would ack the
   message anyway, so every event is handled inside its own ``try`` at the boundary and a
   failure becomes a dead letter with topic/partition/offset and raw bytes.
3. Faust flushes its producer (outputs and changelog writes) before it commits offsets, so
   a committed offset means its outputs and state are in Kafka -- once
   :func:`install_faust_fixes` has fixed three faust-streaming 0.15.3 bugs that otherwise
   lose messages around a crash: a buffer flush that returns with table writes unsent, a
   restart that skips records fetched before its seek, and a fetch that reads "no active
   partition" as "all partitions" and undoes that seek (see each). A crash replays the events
   after the last commit; their state may already be in the changelog, so every stage
   dedupes replays on ids carried by the data (chunk ``seq``, utterance ``part``).
4. A worker that cannot go on (e.g. ASR error budget exhausted) exits non-zero *before*
   the batch is acked, so no audio is dropped silently.

Table writes need faust's current event (it picks the changelog partition); when a batch is
handled, :func:`event_scope` sets it to the event being handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event  # the context variable behind current_event()

from streamscribe.schemas.errors import StreamscribeError
from streamscribe.schemas.events import DeadLetter
from streamscribe.schemas.topics import Topics
from streamscribe.settings import Settings

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


EXIT_STAGE_FAILURE = 4


async def guarded(
    handle: Callable[[list[Any]], Awaitable[None]], events: list[Any], stage: str
) -> None:
    """Run a batch handler; if it fails as a whole, exit before faust acks the batch.

    Errors about one message are handled inside ``handle`` (dead letters). An exception
    that escapes it is systemic (a bug, a broken model, Kafka gone): faust would ack the
    batch and move on, losing it, so the process exits non-zero instead and the batch is
    processed again after the restart.
    """
    try:
        await handle(events)
    except Exception:
        log.critical(
            "%s: batch of %d events failed; exiting before ack", stage, len(events), exc_info=True
        )
        logging.shutdown()
        os._exit(EXIT_STAGE_FAILURE)


def install_complete_producer_flush() -> None:
    """Make faust's producer flush wait for every buffered table write (idempotent).

    Table writes (``table[key] = value``) reach Kafka through faust's ``ProducerBuffer``: a
    queue drained by a background task. Before committing offsets, faust (at-least-once)
    awaits ``producer.flush()``, which drains that buffer first -- but in faust-streaming
    0.15.3 ``ProducerBuffer.flush`` returns as soon as no message leaves the buffer within
    0.1 s, and it ignores the message the background task has taken from the queue but
    not yet handed to aiokafka. Either way offsets are committed while changelog writes of
    acked events are still in this process; a SIGKILL then loses them and the restarted
    worker restores a table older than its committed offsets. Traced here: commits began
    with a table write in flight (taken from the queue, not yet in aiokafka). The losses
    measured in crash runs came from the restart bug below; this closes the smaller window
    too: the flush returns only when the queue is empty and nothing is in flight.
    """
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer, "_streamscribe_complete_flush", False):
        return
    send_one = ProducerBuffer._send_pending

    async def _send_pending(self: Any, fut: Any) -> None:
        self._ss_in_flight = getattr(self, "_ss_in_flight", 0) + 1
        try:
            await send_one(self, fut)
        finally:
            self._ss_in_flight -= 1
            self.message_sent.set()

    async def flush(self: Any) -> None:
        give_up_at = None  # while stopping, the sending task may already be gone
        while self.size or getattr(self, "_ss_in_flight", 0):
            if self.state != "running":
                now = asyncio.get_running_loop().time()
                give_up_at = give_up_at or now + 10.0
                if now > give_up_at:
                    raise RuntimeError(
                        f"cannot flush: producer {self.state}, {self.size} table writes unsent"
                    )
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.5)

    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = flush
    ProducerBuffer._streamscribe_complete_flush = True


def install_seek_before_resume() -> None:
    """Seek a restarted worker's input partitions to the committed offsets *before* fetching.

    After restoring its tables, faust 0.15.3 resumes the input partitions and only then
    seeks them to the committed offsets, while the fetcher -- already running to read the
    changelogs -- keeps iterating. Records fetched in that window are handed on and not
    processed; after the seek faust's read position is back at the committed offset, the
    next record it sees is the one after them, and faust records the skipped range as a
    "gap" (offsets it believes do not exist) and commits past it. Measured here: 3 of 8
    restarts of the foundation's counter worker lost 45-60 messages per partition this
    way. This keeps the input partitions paused until the seek is done: ``resume_partitions``
    calls made while faust completes recovery are deferred until after ``perform_seek``.
    """
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_streamscribe_seek_first", False):
        return
    resume = Consumer.resume_partitions
    seek = Consumer.perform_seek

    def resume_partitions(self: Any, tps: Any) -> None:
        deferred = getattr(self, "_ss_deferred", None)
        if deferred is None:
            resume(self, tps)
        else:
            deferred.update(tps)

    async def perform_seek(self: Any) -> None:
        await seek(self)
        deferred, self._ss_deferred = getattr(self, "_ss_deferred", None), None
        if deferred:
            resume(self, deferred)

    Consumer.resume_partitions = resume_partitions
    Consumer.perform_seek = perform_seek
    Recovery.on_recovery_completed = _completing(Recovery.on_recovery_completed)
    Recovery._resume_streams = _completing(Recovery._resume_streams)
    Consumer._streamscribe_seek_first = True


def _completing(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap a Recovery step: its ``resume_partitions`` calls wait for its seek."""

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        from faust.transport.consumer import Consumer

        consumer = self.app.consumer
        consumer._ss_depth = getattr(consumer, "_ss_depth", 0) + 1
        if getattr(consumer, "_ss_deferred", None) is None:
            consumer._ss_deferred = set()
        try:
            await method(self, *args, **kwargs)
        finally:
            consumer._ss_depth -= 1
            if consumer._ss_depth == 0:  # no seek came (rebalancing again): resume now
                deferred, consumer._ss_deferred = consumer._ss_deferred, None
                if deferred:
                    Consumer.resume_partitions(consumer, deferred)

    return wrapper


def install_fetch_snapshot() -> None:
    """Fetch only from the partitions that were active when the fetch began.

    faust hands its *live* set of active partitions to the fetch running in the consumer
    thread, which waits up to a second for records and re-reads the set while it waits.
    When faust pauses every partition in that second (the end of table recovery: the
    changelogs are paused, the input partitions are not resumed yet), the set is empty,
    and aiokafka reads an empty set as "all partitions": the fetch returns the input
    partition's records, moving aiokafka's position past them, while faust drops them as
    not active. If this lands just after the seek to the committed offset, the seek is
    undone and faust commits over the records as a "gap". Traced here: the fetch returned
    107 records (63..169) 3 ms before the seek ended; the next records began at 170. A
    snapshot taken when the fetch begins (and no fetch at all for an empty one) keeps
    paused partitions out of it.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread, "_streamscribe_snapshot", False):
        return
    fetch = AIOKafkaConsumerThread._fetch_records

    async def _fetch_records(
        self: Any,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        snapshot = frozenset(active_partitions or ())
        if not snapshot:
            return {}
        return await fetch(self, consumer, snapshot, timeout=timeout, max_records=max_records)

    AIOKafkaConsumerThread._fetch_records = _fetch_records
    AIOKafkaConsumerThread._streamscribe_snapshot = True


def install_faust_fixes() -> None:
    """The fixes above; every streamscribe worker installs them before faust starts."""
    install_complete_producer_flush()
    install_seek_before_resume()
    install_fetch_snapshot()


@contextlib.contextmanager
def event_scope(event: Any) -> Iterator[None]:
    """Make ``event`` faust's current event (table writes and sends attach to it)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def make_app(
    settings: Settings, *, instance: str | None = None, from_earliest: bool = False
) -> faust.App:
    """The processors' faust app; its id is the consumer group (``settings.group_id``).

    ``instance`` turns on static group membership (``group.instance.id``; it must be unique
    per worker process): a worker restarted after a crash with the same id takes its
    partitions back at once, without a rebalance. Without one, a restart waits for the old
    member's session to expire (``session_timeout_s``, 6 s by default). (Static
    membership once lost messages here; that was faust's restart seek bug, fixed by
    :func:`install_seek_before_resume`; ``bench/bench_crash_restart.py --arms static``.)
    """
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    install_faust_fixes()
    return faust.App(
        settings.group_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        web_enabled=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_group_instance_id=instance,
        consumer_auto_offset_reset="earliest" if from_earliest else "latest",
        broker_commit_every=500,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=2_500_000,
        stream_wait_empty=False,
        topic_allow_declare=True,
    )


@dataclass
class StageTopics:
    """The faust topic objects of the pipeline (all raw bytes)."""

    names: Topics
    audio: faust.TopicT
    utterances: faust.TopicT
    transcripts: faust.TopicT
    events: faust.TopicT
    deadletter: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> StageTopics:
        names = Topics(settings.topic_prefix)
        p = settings.partitions
        return cls(
            names=names,
            audio=app.topic(names.audio, partitions=p, **RAW),
            utterances=app.topic(names.utterances, partitions=p, **RAW),
            transcripts=app.topic(names.transcripts, partitions=p, **RAW),
            events=app.topic(names.events, partitions=p, **RAW),
            deadletter=app.topic(names.deadletter, partitions=p, **RAW),
        )


async def send_dead_letter(
    topics: StageTopics,
    event: Any,
    *,
    stage: str,
    reason: str,
    error_type: str,
    session_id: str | None = None,
) -> None:
    """Publish a dead letter for ``event`` (its topic/partition/offset, raw value)."""
    msg = event.message
    dl = DeadLetter.from_raw(
        msg.value if isinstance(msg.value, bytes | bytearray) else None,
        reason=reason,
        stage=stage,
        source_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key if isinstance(msg.key, bytes | bytearray) else None,
        error_type=error_type,
        session_id=session_id,
    )
    log.warning(
        "dead letter from %s[%s]@%s (%s): %s", msg.topic, msg.partition, msg.offset, stage, reason
    )
    await topics.deadletter.send(key=msg.key or b"", value=dl.encode())


async def dead_letter_for(
    topics: StageTopics,
    event: Any,
    err: StreamscribeError,
    *,
    stage: str,
    session_id: str | None = None,
) -> None:
    await send_dead_letter(
        topics,
        event,
        stage=stage,
        reason=err.reason,
        error_type=type(err).__name__,
        session_id=session_id,
    )
