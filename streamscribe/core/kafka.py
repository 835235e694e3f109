"""The Kafka edge of every service: one producer, one consume loop, the client configs.

Delivery guarantee of the producer (made here, for every producer of ours except faust's):

1. The producer is idempotent (``enable.idempotence=true``, ``acks=all``): a retried send
   is written once, in order per partition, so a message is neither lost nor duplicated by
   broker failover or a network retry.
2. Keys are session ids hashed with ``murmur2_random`` — the partitioner of the Java
   client and aiokafka/faust — so a session's chunks land on the same partition number as
   its state in the processors' tables.
3. ``poll(0)`` after each ``produce`` serves delivery callbacks, which count delivered and
   failed messages; a full local queue (``BufferError``) is handled by polling and retrying.
4. :meth:`DeliveryProducer.close` flushes with a timeout; what is still undelivered then is
   counted as failed and the caller exits non-zero. :meth:`DeliveryProducer.deliver_all`
   waits for every report and raises if any message failed (consumers call it before they
   commit the offsets of the input that caused the messages).

Delivery guarantee of the consume loop (:func:`consume_batches`, used by the sink, the
metrics service and the alerts consumer): offsets are never auto-committed nor auto-stored;
a batch's offsets (last offset + 1 per partition) are committed only after the handler has
returned, so a crash in between replays the batch (at least once; the handlers' effects
are idempotent or harmless to repeat). A failed offset commit (a rebalance) is logged and
counted; the next owner replays those messages.

Example::

    from streamscribe.core.kafka import DeliveryProducer
    p = DeliveryProducer("127.0.0.1:9092")
    p.send("streamscribe.audio", b"session-1", b"...")
    stats = p.close()     # stats.delivered == 1, stats.failed == 0

    >>> cfg = consumer_config(Settings(), group_id="g", from_earliest=True, client_id="c")
    >>> cfg["auto.offset.reset"], cfg["enable.auto.commit"]
    ('earliest', False)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamscribe.core.errors import BrokerError, StreamscribeError
from streamscribe.core.security import (
    AuthorizationError,
    client_security,
    describe_authorization,
    install,
    raise_refusal,
    with_security,
)
from streamscribe.core.settings import Settings

log = logging.getLogger(__name__)

BUFFER_FULL_POLL_S: Final = 0.05
POLL_TIMEOUT_S: Final = 0.1  # bounds the publish -> consumer wait at low rates
JOIN_TIMEOUT_S: Final = 60.0
METADATA_STEP_S: Final = 0.5


# ------------------------------------------------------------------------------ configs
def producer_config(
    bootstrap: str,
    *,
    linger_ms: int = 5,
    client_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one producer configuration (see the module docstring)."""
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
    if client_id:
        conf["client.id"] = client_id
    conf.update(extra or {})
    return with_security(bootstrap, conf)


def consumer_config(
    settings: Settings, *, group_id: str, from_earliest: bool, client_id: str
) -> dict[str, Any]:
    """A consumer of ours: manual offset store and commit, committed reads only."""
    install(settings)
    conf = {
        "bootstrap.servers": settings.bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "auto.offset.reset": "earliest" if from_earliest else "latest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "session.timeout.ms": session_timeout_ms(settings),
        "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
    }
    return with_security(settings.bootstrap, conf)


_MIN_SESSION_MS: dict[str, int | None] = {}


def session_timeout_ms(settings: Settings) -> int:
    """``session_timeout_s`` in ms, raised to the cluster's ``group.min.session.timeout.ms``.

    The local broker allows 1 s (``streamscribe broker start``), so a SIGKILLed member's
    partitions move after 2 s (the default); a cluster with the stock minimum (6 s) would
    refuse a group member asking for less, so its minimum is used there. Looked up once
    per cluster; a refused look-up (no ACL for it) keeps the setting.
    """
    wanted = int(settings.session_timeout_s * 1000)
    bootstrap = settings.bootstrap
    if bootstrap not in _MIN_SESSION_MS:
        _MIN_SESSION_MS[bootstrap] = _broker_min_session_ms(bootstrap)
    least = _MIN_SESSION_MS[bootstrap]
    return wanted if least is None else max(wanted, least)


def _broker_min_session_ms(bootstrap: str) -> int | None:
    from confluent_kafka.admin import ConfigResource

    try:
        admin, metadata = cluster_metadata(bootstrap, 10.0)
        brokers = metadata.brokers
        if not brokers:
            return None
        resource = ConfigResource(ConfigResource.Type.BROKER, str(next(iter(brokers))))
        entries = admin.describe_configs([resource], request_timeout=10)[resource].result(10)
        entry = entries.get("group.min.session.timeout.ms")
        return None if entry is None or entry.value is None else int(entry.value)
    except (KafkaException, ValueError, KeyError):
        return None


def cluster_metadata(bootstrap: str, timeout_s: float) -> tuple[Any, Any]:
    """``(admin client, cluster metadata)`` of ``bootstrap``, waiting up to ``timeout_s``.

    A refused login or TLS handshake raises its clear error
    (:func:`~streamscribe.core.security.raise_refusal`) within a second instead of
    waiting out the timeout; no answer raises the last ``KafkaException``.
    """
    from confluent_kafka.admin import AdminClient

    seen: list[KafkaError] = []  # librdkafka reports a refused login here, not in the call
    conf = {"bootstrap.servers": bootstrap, "log_level": 0, "error_cb": seen.append}
    admin = AdminClient(with_security(bootstrap, conf))
    deadline = time.monotonic() + timeout_s
    while True:
        step = max(0.05, min(METADATA_STEP_S, deadline - time.monotonic()))
        try:
            return admin, admin.list_topics(timeout=step)
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            for err in (*seen, exc.args[0]):
                if isinstance(err, KafkaError):
                    raise_refusal(err, bootstrap)
            if time.monotonic() >= deadline:
                raise


def reader_config(bootstrap: str, *, client: str, from_beginning: bool = True) -> dict[str, Any]:
    """A throw-away reader (``tail``, the demo's live view, watermark look-ups).

    It has a group of its own (``client`` + a random suffix) and never commits: it shares
    no position with anyone and leaves nothing behind.
    """
    return with_security(
        bootstrap,
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{client}-{uuid.uuid4().hex[:8]}",
            "client.id": client,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "log_level": 0,
        },
    )


# ----------------------------------------------------------------------------- producer
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


class DeliveryProducer:
    """Counts every message from ``send`` to its delivery report.

    Build it with :meth:`from_settings` in services; the plain constructor takes a bootstrap
    address (tools and tests).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        flush_timeout_s: float = 30.0,
        client_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._producer = Producer(
            producer_config(bootstrap, linger_ms=linger_ms, client_id=client_id, extra=extra)
        )
        self.flush_timeout_s = flush_timeout_s
        self.stats = DeliveryStats()
        self._failures: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings, *, client_id: str) -> DeliveryProducer:
        install(settings)
        return cls(
            settings.bootstrap,
            linger_ms=settings.linger_ms,
            flush_timeout_s=settings.flush_timeout_s,
            client_id=client_id,
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            name = err.name()
            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
            self._failures.append(f"{msg.topic()}: {err.str()}")
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                # Not retriable: every further message would fail the same way.
                raise AuthorizationError(
                    describe_authorization(
                        name, client_security(self.bootstrap), f"write to topic {msg.topic()}"
                    )
                )
            raise_refusal(err, self.bootstrap)
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
            except KafkaException as exc:
                err = exc.args[0]
                if (
                    isinstance(err, KafkaError)
                    and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
                ):
                    sec = client_security(self.bootstrap)
                    raise AuthorizationError(
                        describe_authorization(err.name(), sec, f"write to topic {topic}")
                    ) from None
                raise
        self.stats.sent += 1
        self.stats.bytes_sent += len(value)
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> int:
        return int(self._producer.flush(self.flush_timeout_s if timeout_s is None else timeout_s))

    def deliver_all(self, what: str, error: type[StreamscribeError] = BrokerError) -> None:
        """Wait for every delivery report; ``error`` if a message is missing or failed."""
        remaining = self.flush()
        if remaining:
            raise error(f"{remaining} {what} still undelivered after {self.flush_timeout_s:g} s")
        if self._failures:
            failed, self._failures = self._failures, []
            raise error(f"{len(failed)} {what} not delivered: {failed[0]}")

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


class Publisher(Protocol):
    """What a consume-loop handler needs of :class:`DeliveryProducer` (fakes in unit tests)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None: ...
    def deliver_all(self, what: str, error: type[StreamscribeError] = ...) -> None: ...


# ------------------------------------------------------------------------- consume loop
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

    def __init__(self, max_idle_s: float | None, join_timeout_s: float = JOIN_TIMEOUT_S) -> None:
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


def next_offsets(messages: Iterable[Any]) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: last offset + 1 per (topic, partition)."""
    offsets: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic() or "", m.partition() or 0)
        offsets[key] = max(offsets.get(key, 0), (m.offset() or 0) + 1)
    return [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]


@dataclass
class LoopStats:
    """Counters of one :func:`consume_batches` run."""

    batches: int = 0
    messages: int = 0
    kafka_errors: int = 0
    offset_commits: int = 0
    offset_commit_failures: int = 0


@dataclass(frozen=True)
class Subscription:
    """Who reads what: the group, the topics, where a new group starts, the client id."""

    topics: Sequence[str]
    group_id: str
    client_id: str
    from_earliest: bool = False


def consume_batches(
    settings: Settings,
    sub: Subscription,
    handle: Callable[[list[Message]], None],
    *,
    batch_size: int = 500,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
    stats: LoopStats | None = None,
) -> LoopStats:
    """Consume ``sub.topics`` in batches until stopped; commit each batch after ``handle``.

    ``handle`` gets the batch's data messages (Kafka error events are counted and logged;
    a fatal one raises :class:`BrokerError`). The loop stops on SIGTERM/SIGINT, when
    ``stop_event`` is set, or after ``max_idle_s`` without a message. An exception from
    ``handle`` propagates and the batch's offsets are not committed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    stats = stats if stats is not None else LoopStats()
    stop = stop_event or threading.Event()
    consumer = Consumer(
        consumer_config(
            settings,
            group_id=sub.group_id,
            from_earliest=sub.from_earliest,
            client_id=sub.client_id,
        )
    )
    idle = IdleClock(max_idle_s)
    try:
        consumer.subscribe(list(sub.topics), on_assign=idle.on_assign)
        with stop_on_signals(stop):
            while not stop.is_set():
                polled = consumer.consume(num_messages=batch_size, timeout=POLL_TIMEOUT_S)
                data = [
                    m for m in polled if not _is_error(m, stats, settings.bootstrap, sub.group_id)
                ]
                if not data:
                    if idle.expired():
                        log.info("%s: idle for %.1f s, stopping", sub.client_id, max_idle_s)
                        break
                    continue
                idle.touch()
                handle(data)
                stats.batches += 1
                stats.messages += len(data)
                try:
                    consumer.commit(offsets=next_offsets(data), asynchronous=False)
                    stats.offset_commits += 1
                except KafkaException as exc:
                    stats.offset_commit_failures += 1
                    log.warning("offset commit failed (the batch will be replayed): %s", exc)
    finally:
        consumer.close()
    return stats


def _is_error(msg: Message, stats: LoopStats, bootstrap: str = "", group_id: str = "") -> bool:
    err = msg.error()
    if err is None:
        return False
    stats.kafka_errors += 1
    refused_consumer(err, bootstrap, group_id)
    if err.fatal():
        raise BrokerError(f"fatal Kafka error: {err.str()}")
    log.warning("consumer error: %s", err.str())
    return True


def refused_consumer(err: KafkaError, bootstrap: str, group_id: str) -> None:
    """Raise the clear error when a consumer's login, topic or group is refused."""
    sec = client_security(bootstrap)
    if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        raise AuthorizationError(
            describe_authorization(err.name(), sec, f"use consumer group {group_id}")
        )
    if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        topic = _topic_of(err.str())
        raise AuthorizationError(describe_authorization(err.name(), sec, f"read topic {topic}"))
    raise_refusal(err, bootstrap, sec)


def _topic_of(text: str) -> str:
    """The topic named in a librdkafka error (``...: TOPIC: Broker: ...``), else ``?``."""
    for part in text.split(": "):
        if part and " " not in part and not part.startswith("Broker"):
            return part
    return "(one of the subscribed topics)"
