"""A confluent-kafka producer with the delivery guarantee made explicit.

Delivery guarantee (made here, for every edge producer):

1. The producer is idempotent (``enable.idempotence=true``, ``acks=all``): a retried send
   is written once, in order per partition, so a chunk is neither lost nor duplicated by
   broker failover or a network retry.
2. Keys are session ids hashed with ``murmur2_random`` — the partitioner of the Java
   client and aiokafka/faust — so a session's chunks land on the same partition number as
   its state in the processors' tables.
3. ``poll(0)`` after each ``produce`` serves delivery callbacks, which count delivered and
   failed messages; a full local queue (``BufferError``) is handled by polling and retrying.
4. ``close()`` flushes with a timeout; what is still undelivered then is counted as failed
   and the caller exits non-zero.

Example::

    from producers.delivery import DeliveryProducer   # streamscribe.producers.delivery
    p = DeliveryProducer("127.0.0.1:9092")
    p.send("streamscribe.audio", b"session-1", b"...")
    stats = p.close()     # stats.delivered == 1, stats.failed == 0
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

log = logging.getLogger(__name__)

BUFFER_FULL_POLL_S = 0.05


@dataclass
class DeliveryStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    bytes_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def undelivered(self) -> int:
        return self.sent - self.delivered - self.failed


def producer_config(
    bootstrap: str, *, linger_ms: int = 5, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The edge producer's configuration (see the module docstring)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "compression.type": "none",
        "message.max.bytes": 2_000_000,
        "queue.buffering.max.messages": 200_000,
        "delivery.timeout.ms": 300_000,
        "log_level": 3,
    }
    conf.update(extra or {})
    return conf


class DeliveryProducer:
    """Counts every message from ``send`` to its delivery report."""

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        flush_timeout_s: float = 30.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._producer = Producer(producer_config(bootstrap, linger_ms=linger_ms, extra=extra))
        self.flush_timeout_s = flush_timeout_s
        self.stats = DeliveryStats()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            name = err.name()
            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
            log.error("delivery to %s failed: %s", msg.topic(), err)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._producer.poll(BUFFER_FULL_POLL_S)
        self.stats.sent += 1
        self.stats.bytes_sent += len(value)
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> int:
        return int(self._producer.flush(self.flush_timeout_s if timeout_s is None else timeout_s))

    def close(self) -> DeliveryStats:
        """Flush with the timeout; what is still queued then counts as failed."""
        deadline = time.monotonic() + self.flush_timeout_s
        remaining = self.flush(self.flush_timeout_s)
        while remaining and time.monotonic() < deadline:
            remaining = self.flush(max(0.0, deadline - time.monotonic()))
        if remaining:
            self.stats.failed += remaining
            self.stats.errors["not_flushed"] = self.stats.errors.get("not_flushed", 0) + remaining
        return self.stats
