"""Four faust-streaming 0.15.3 bugs that lose messages around a crash, their fixes, and a
warning when faust commits over records it never processed.

Every streamscribe worker calls :func:`install_faust_fixes` before faust starts
(:func:`streamscribe.processors.faust_app.make_app` does). Each fix is idempotent and says
which bug it closes and how it was measured (``bench/bench_crash_restart.py`` A/B).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


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
        snapshot = set(active_partitions or ())  # a copy: the live set changes meanwhile
        if not snapshot:
            return {}
        return await fetch(self, consumer, snapshot, timeout=timeout, max_records=max_records)

    AIOKafkaConsumerThread._fetch_records = _fetch_records
    AIOKafkaConsumerThread._streamscribe_snapshot = True


def install_gap_warning() -> None:
    """Say so when faust records a "gap" in an input partition (idempotent; no fix).

    faust commits over offsets it believes do not exist: the jump between two records it
    handed to the stream. Our input topics are neither compacted nor transactional, so a
    gap is either records another worker processed while this one did not hold the
    partition (harmless) or records this consumer fetched and never processed -- the way
    each bug above lost messages. A warning with the range makes the second kind visible
    in a worker's log instead of silent.
    """
    import logging

    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_streamscribe_gap_warning", False):
        return
    add_gap = Consumer._add_gap
    log = logging.getLogger("streamscribe.processors.faust_fixes")

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        log.warning(
            "%s[%d]: offsets %d..%d were not handed to this worker's stream (committed %s);"
            " faust will commit past them",
            tp.topic,
            tp.partition,
            offset_from,
            offset_to - 1,
            self._committed_offset.get(tp),
        )
        await add_gap(self, tp, offset_from, offset_to)

    Consumer._add_gap = _add_gap
    Consumer._streamscribe_gap_warning = True


def install_commit_below_pending() -> None:
    """Never commit past a message that was handed to the stream and is not acked yet.

    faust commits, per partition, the run of consecutive acked offsets that starts the
    list of acked offsets (``Consumer._new_offset``). Its guard against a hole before that
    run compares with the committed offset as if that were the last processed offset, but
    faust keeps Kafka's meaning, the *next* one: with offset C committed, C unacked and
    C+1.. acked, ``min(acked) - C`` is 1, the guard (``> 1``) lets it through, and faust
    commits past C (with nothing committed yet, or C = 0, there is no guard at all). An
    agent that acks out of order hits exactly this: the recognizer acks a final's message
    only once the final is published, while later messages of the partition are acked at
    once. A SIGKILL before the final is out then loses it: the successor starts after C.
    The chaos suite saw it once (a final whose message the group had committed past, never
    published); ``tests/unit/test_faust_fixes.py`` reproduces it on faust's own method.

    The fix: no commit for a partition while a message of it, handed to the stream in
    this consumer generation, is unacked below the run faust would commit (it is then
    committed with the next commit after its ack).
    """
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_streamscribe_commit_below_pending", False):
        return
    new_offset = Consumer._new_offset

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            first = min(acked)
            generation = self.app.consumer_generation_id
            for message in list(self._unacked_messages):
                if (
                    message.tp == tp
                    and not message.acked
                    and message.offset < first
                    and message.generation_id in (generation, None)
                ):
                    return None
        result: int | None = new_offset(self, tp)
        return result

    _new_offset.__wrapped__ = new_offset
    Consumer._new_offset = _new_offset
    Consumer._streamscribe_commit_below_pending = True


FETCH_MAX_WAIT_ATTR = "streamscribe_fetch_max_wait_ms"


def install_fetch_max_wait() -> None:
    """Let the app choose its consumer's ``fetch_max_wait_ms`` (faust fixes it at 1500).

    A fetch of partitions with nothing new waits at the broker up to ``fetch_max_wait_ms``,
    and Kafka answers one connection's requests in order, so every other request of the
    consumer to that broker (metadata, list offsets) waits behind it. After a rebalance
    the new owner of a killed worker's partitions asks for their changelogs' end offsets
    before it restores them; with a fetch of quiet partitions in flight that took 1.1 to
    1.5 s in a stage process, and the group leader's metadata update as long
    (``bench/README.md``, "Standby tables for stage processes"). With
    ``app.streamscribe_fetch_max_wait_ms`` set (:func:`make_app` sets it from
    ``Settings.fetch_max_wait_ms``) the consumer waits at most that long; data that
    arrives still ends a fetch at once.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread, "_streamscribe_fetch_max_wait", False):
        return
    create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait_ms = getattr(self.app, FETCH_MAX_WAIT_ATTR, None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read when the consumer starts
        return consumer

    _create_worker_consumer.__wrapped__ = create
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    AIOKafkaConsumerThread._streamscribe_fetch_max_wait = True


def install_faust_fixes() -> None:
    """The fixes above; every streamscribe worker installs them before faust starts."""
    install_fetch_max_wait()
    install_complete_producer_flush()
    install_seek_before_resume()
    install_fetch_snapshot()
    install_commit_below_pending()
    install_gap_warning()
