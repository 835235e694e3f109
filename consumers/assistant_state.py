"""The assistant's session state on Kafka: a compacted changelog, read back on start.

The topic is the group's own, :func:`~streamscribe.schemas.commands.assistant_state_topic`
(``<group>-sessions-changelog``, as faust names a table's changelog), compacted, one
:class:`~streamscribe.schemas.commands.AssistantState` JSON per change, key = session id:
the latest record of a session is its whole state. :func:`ensure_state_topic` creates it
(idempotently, ``partitions`` as the pipeline's topics) and :func:`read_states` reads it
from the beginning to the high watermarks of the moment it starts — before the consumer
group joins, so no transcript is handled on a state older than the last one written. The
edge (:mod:`.assistant`) writes a session's record before the offsets of the transcripts
that changed it are committed.

Example::

    ensure_state_topic(settings, "streamscribe-assistant")
    states, bad = read_states(settings, "streamscribe-assistant-sessions-changelog")
    core.restore(states.values())
"""

from __future__ import annotations

import logging
import time
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streamscribe.core.admin import create_topics
from streamscribe.core.errors import BrokerError, ContractError
from streamscribe.core.kafka import reader_config
from streamscribe.core.settings import Settings
from streamscribe.schemas.commands import AssistantState, assistant_state_topic
from streamscribe.schemas.topics import TopicSpec

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S: Final = 15.0
RESTORE_TIMEOUT_S: Final = 120.0
POLL_S: Final = 0.2
#: Compacted: the latest record per session is kept; a week after a session's last change
#: its state goes too (a session idle that long has no command in progress).
STATE_TOPIC_CONFIGS: Final = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(7 * 24 * 3600 * 1000),
}


def ensure_state_topic(settings: Settings, group_id: str) -> str:
    """Create the group's state topic if it is missing; returns its name."""
    name = assistant_state_topic(group_id)
    spec = TopicSpec(name, settings.partitions, dict(STATE_TOPIC_CONFIGS), "AssistantState JSON")
    outcome = create_topics(settings.bootstrap, [spec])
    log.info("assistant: state topic %s (%s)", name, outcome.get(name, "?"))
    return name


def read_states(
    settings: Settings, topic: str, *, timeout_s: float = RESTORE_TIMEOUT_S
) -> tuple[dict[str, AssistantState], int]:
    """The latest state of every session in ``topic``, and how many records were unreadable.

    Reads every partition from the beginning to its high watermark at the call; a record
    with no value (a tombstone) drops its session. An unreadable record is logged and
    counted (the state of that session is then the one before it, or none).
    """
    consumer = Consumer(reader_config(settings.bootstrap, client="streamscribe-assistant-restore"))
    states: dict[str, AssistantState] = {}
    bad = 0
    try:
        md = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
        if md is None or md.error is not None:
            raise BrokerError(f"assistant state topic {topic}: {md.error if md else 'missing'}")
        deadline = time.monotonic() + timeout_s
        found = {p: _end_offset(consumer, topic, p, deadline) for p in md.partitions}
        ends = {p: end for p, end in found.items() if end is not None}
        if not ends:
            return states, bad
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        done: set[int] = set()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} back took over {timeout_s:g} s")
            msg = consumer.poll(POLL_S)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("assistant: restore: %s", err.str())
                continue
            p, offset = msg.partition() or 0, msg.offset() or 0
            key = (msg.key() or b"").decode("utf-8", "replace")
            value = msg.value()
            if value is None:
                states.pop(key, None)
            else:
                try:
                    states[key] = AssistantState.decode(value)
                except ContractError as exc:
                    bad += 1
                    log.warning("assistant: unreadable state %s[%d]@%d: %s", topic, p, offset, exc)
            if offset + 1 >= ends[p]:
                done.add(p)
    finally:
        consumer.close()
    return states, bad


#: A topic just created has no partition leader for a moment: asked again.
_NOT_YET: Final = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
}


def _end_offset(consumer: Consumer, topic: str, partition: int, deadline: float) -> int | None:
    """The partition's high watermark, None if it is empty (retried while it has no leader)."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S
            )
            return high if high > low else None
        except KafkaException as exc:
            err = exc.args[0]
            if not isinstance(err, KafkaError) or err.code() not in _NOT_YET:
                raise BrokerError(f"assistant state topic {topic}[{partition}]: {err}") from exc
            if time.monotonic() > deadline:
                raise BrokerError(f"assistant state topic {topic}[{partition}]: {err}") from exc
            time.sleep(POLL_S)


__all__ = ["STATE_TOPIC_CONFIGS", "ensure_state_topic", "read_states"]
