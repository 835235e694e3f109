"""Topic administration: create the pipeline's topics idempotently, list them with counts.

Example::

    from streamscribe.core.admin import create_topics
    from streamscribe.schemas.topics import Topics
    create_topics("127.0.0.1:9092", Topics("streamscribe.").specs(partitions=4))

The specs are anything with ``name``, ``partitions`` and ``configs`` (the contract's
``TopicSpec``, or the worker's changelog topics): the kernel imports nothing of ``schemas/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamscribe.core.errors import BrokerError
from streamscribe.core.kafka import reader_config


class TopicSpec(Protocol):
    """What :func:`create_topics` needs of a topic."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    @property
    def configs(self) -> Mapping[str, str]: ...


ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    messages: int


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def create_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> dict[str, str]:
    """Create missing topics; existing ones are left as they are. Returns name -> outcome."""
    admin = admin_client(bootstrap)
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.configs))
        for s in specs
    ]
    outcome: dict[str, str] = {}
    for name, fut in admin.create_topics(new, request_timeout=ADMIN_TIMEOUT_S).items():
        try:
            fut.result(timeout=ADMIN_TIMEOUT_S)
            outcome[name] = "created"
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"
            else:
                raise BrokerError(f"creating topic {name} failed: {err}") from exc
    return outcome


def describe_topics(bootstrap: str, names: list[str] | None = None) -> list[TopicInfo]:
    """Topics with partition counts and message counts (sum of high - low watermarks)."""
    admin = admin_client(bootstrap)
    try:
        md = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"no Kafka broker answers at {bootstrap}: {exc}") from exc
    consumer = Consumer(reader_config(bootstrap, client="streamscribe-admin"))
    try:
        infos = []
        for name in sorted(md.topics):
            if names is not None and name not in names:
                continue
            if name.startswith("__"):
                continue
            total = 0
            for p in md.topics[name].partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                total += hi - lo
            infos.append(TopicInfo(name, len(md.topics[name].partitions), total))
        return infos
    finally:
        consumer.close()


def probe_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerError` naming ``bootstrap`` if no broker answers within the time."""
    try:
        md = admin_client(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} (waited {timeout_s:g} s; start one with "
            "'streamscribe broker start' or set --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)"
        ) from exc
    if not md.brokers:
        raise BrokerError(f"no Kafka broker answers at {bootstrap}")


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = admin_client(bootstrap)
    for fut in admin.delete_topics(names, request_timeout=ADMIN_TIMEOUT_S).values():
        try:
            fut.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0]
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                raise
