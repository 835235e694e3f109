"""Topic administration: create the pipeline's topics idempotently, list them with counts.

Example::

    from streamscribe.core.admin import create_topics
    from streamscribe.schemas.topics import Topics
    create_topics("127.0.0.1:9092", Topics("streamscribe.").specs(partitions=4))

The specs are anything with ``name``, ``partitions``, ``configs`` and ``alter_existing``
(the contract's ``TopicSpec``, or the worker's changelog topics): the kernel imports nothing
of ``schemas/``. A spec's ``alter_existing`` configs (the speech topics' ``retention.ms``
when a retention is set) are also applied to a topic that exists already, with
``IncrementalAlterConfigs``; its outcome then says what changed
(``exists (retention.ms set to 3600000, was 604800000)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from streamscribe.core.errors import BrokerError
from streamscribe.core.kafka import cluster_metadata, reader_config
from streamscribe.core.security import (
    AuthorizationError,
    client_security,
    describe_authorization,
    with_security,
)


class TopicSpec(Protocol):
    """What :func:`create_topics` needs of a topic."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> int: ...
    @property
    def configs(self) -> Mapping[str, str]: ...
    @property
    def alter_existing(self) -> tuple[str, ...]: ...


ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    messages: int


def admin_client(bootstrap: str) -> AdminClient:
    """An admin client for ``bootstrap`` (with its registered security, :mod:`.security`)."""
    return AdminClient(with_security(bootstrap, {"bootstrap.servers": bootstrap, "log_level": 0}))


def create_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> dict[str, str]:
    """Create missing topics; of existing ones only the ``alter_existing`` configs change.

    Returns name -> outcome (``created``, ``exists``, ``exists (retention.ms set to ...)``).
    """
    admin = admin_client(bootstrap)
    specs = list(specs)
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
            elif isinstance(err, KafkaError) and err.code() in NOT_ALLOWED_TO_CREATE:
                # A principal without CREATE (a secured cluster): fine if the topic exists.
                outcome[name] = _existing_or_refuse(admin, bootstrap, name, err)
            else:
                raise BrokerError(f"creating topic {name} failed: {err}") from exc
    wanted = {
        s.name: {k: s.configs[k] for k in s.alter_existing}
        for s in specs
        if s.alter_existing and outcome.get(s.name) == "exists"
    }
    for name, changed in alter_topic_configs(admin, wanted).items():
        if changed:
            outcome[name] += f" ({changed})"
    return outcome


NOT_ALLOWED_TO_CREATE = (
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
)


def _existing_or_refuse(admin: AdminClient, bootstrap: str, name: str, err: KafkaError) -> str:
    """What a principal without CREATE learns of a topic it asked to create.

    It exists: fine. It is not this principal's to see (no DESCRIBE: the metadata answer
    is an authorization error, whether or not it exists): skipped, its users are others.
    It is missing: the clear refusal, since nothing may create it for this principal.
    """
    meta = admin.list_topics(topic=name, timeout=ADMIN_TIMEOUT_S).topics.get(name)
    found = None if meta is None else meta.error
    if meta is not None and found is None:
        return "exists (not checked: no CREATE permission)"
    if found is not None and found.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return "skipped (not visible to this principal)"
    raise AuthorizationError(
        describe_authorization(err.name(), client_security(bootstrap), f"create topic {name}")
        + "; ask an admin to create it or to grant CREATE"
    )


def topic_configs(admin: AdminClient, names: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """The current configs of topics: name -> {key: value} (every key the broker lists)."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    if not resources:
        return {}
    found: dict[str, dict[str, str | None]] = {}
    for res, fut in admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT_S).items():
        try:
            entries = fut.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"describing topic {res.name} failed: {exc.args[0]}") from exc
        found[res.name] = {k: e.value for k, e in entries.items()}
    return found


def alter_topic_configs(
    admin: AdminClient, wanted: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """Set ``wanted`` configs (topic -> {key: value}) where they differ from the topic's.

    Only the named keys change (``IncrementalAlterConfigs`` SET), every other config stays.
    Returns topic -> what changed (``retention.ms set to X, was Y``; empty: nothing).
    """
    have = topic_configs(admin, [n for n, c in wanted.items() if c])
    todo: dict[str, list[str]] = {}
    resources = []
    for name, configs in wanted.items():
        diff = {k: v for k, v in configs.items() if have.get(name, {}).get(k) != v}
        if not diff:
            continue
        todo[name] = [f"{k} set to {v}, was {have[name].get(k)}" for k, v in sorted(diff.items())]
        entries = [
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()
        ]
        resources.append(
            ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
        )
    if resources:
        futures = admin.incremental_alter_configs(resources, request_timeout=ADMIN_TIMEOUT_S)
        for res, fut in futures.items():
            try:
                fut.result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                raise BrokerError(
                    f"setting configs of topic {res.name} failed: {exc.args[0]}"
                ) from exc
    return {name: "; ".join(todo.get(name, [])) for name in wanted}


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
        _admin, md = cluster_metadata(bootstrap, timeout_s)  # a refused login: in words
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
