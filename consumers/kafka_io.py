"""Kafka plumbing shared by the consumers (sink, metrics, alerts): configs, delivery, stop.

Producers here are idempotent with ``acks=all`` and the ``murmur2_random`` partitioner (the
Java client's, so keys land where the rest of the pipeline expects them); every produce is
followed by ``poll(0)``, a full local queue (``BufferError``) is handled by polling and
retrying, and :func:`flush` checks every delivery report. Consumers never auto-commit and
never auto-store offsets: each service commits after its own side effect is durable.

Example::

    >>> cfg = consumer_config(Settings(), group_id="g", from_earliest=True, client_id="c")
    >>> cfg["auto.offset.reset"], cfg["enable.auto.commit"]
    ('earliest', False)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from streamscribe.core.errors import SinkError
from streamscribe.core.settings import Settings

log = logging.getLogger(__name__)

BUFFER_FULL_POLL_S = 0.5


def consumer_config(
    settings: Settings, *, group_id: str, from_earliest: bool, client_id: str
) -> dict[str, Any]:
    """A consumer of ours: manual offset store and commit, committed reads only."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": "earliest" if from_earliest else "latest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
    }


def producer_config(settings: Settings, *, client_id: str) -> dict[str, Any]:
    """Idempotent, acks=all, murmur2 (Java-compatible) key partitioning."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": settings.linger_ms,
    }


class DeliveryTracker:
    """Delivery callback that counts failures; ``check()`` raises if any."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.delivered = 0
        self.failed: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err.str()}")
            log.error("%s delivery failed: %s", self.what, err.str())
        else:
            self.delivered += 1

    def check(self) -> None:
        if self.failed:
            failed, self.failed = self.failed, []
            raise SinkError(f"{len(failed)} {self.what} not delivered: {failed[0]}")


def produce(producer: Producer, topic: str, key: bytes | None, value: bytes, cb: Any) -> None:
    """Produce with back-pressure: on a full local queue, serve callbacks and retry."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=cb)
            break
        except BufferError:
            producer.poll(BUFFER_FULL_POLL_S)
    producer.poll(0)


def flush(producer: Producer, tracker: DeliveryTracker, timeout_s: float) -> None:
    """Wait for every delivery report; :class:`SinkError` if any is missing or failed."""
    remaining = producer.flush(timeout_s)
    if remaining:
        raise SinkError(f"{remaining} {tracker.what} still undelivered after {timeout_s:g} s")
    tracker.check()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (main thread only; restored on exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class IdleClock:
    """``max_idle_s`` without a message ends a run; the clock starts at the first assignment.

    Joining a group takes seconds, so the time before partitions are assigned does not
    count, up to ``join_timeout_s`` (then the run ends anyway, with a warning).
    """

    def __init__(self, max_idle_s: float | None, join_timeout_s: float = 60.0) -> None:
        self.max_idle_s = max_idle_s
        self.started = time.monotonic()
        self.join_timeout_s = max(join_timeout_s, max_idle_s or 0.0)
        self.last: float | None = None

    def on_assign(self, _consumer: object, partitions: list[Any]) -> None:
        log.info("assigned %d partitions", len(partitions))
        self.touch()

    def touch(self) -> None:
        self.last = time.monotonic()

    def expired(self) -> bool:
        if self.max_idle_s is None:
            return False
        now = time.monotonic()
        if self.last is None:
            if now - self.started >= self.join_timeout_s:
                log.warning("no partitions assigned after %.0f s", self.join_timeout_s)
                return True
            return False
        return now - self.last >= self.max_idle_s


def next_offsets(messages: Any) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: last offset + 1 per (topic, partition)."""
    offsets: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic() or "", m.partition() or 0)
        offsets[key] = max(offsets.get(key, 0), (m.offset() or 0) + 1)
    return [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
