"""Reading a topic back in tests: every message from the beginning, to the end offsets."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from streamscribe.core.security import with_security


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """All records now in ``topic`` (up to the high watermarks at call time)."""
    c = Consumer(
        with_security(  # what the test registered for this address (a secured broker)
            bootstrap,
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-read-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "log_level": 0,
            },
        )
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in md.partitions
        }
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        pos = dict.fromkeys(md.partitions, 0)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in pos):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} of {sum(ends.values())} from {topic}")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(
                Record(
                    msg.key(), msg.value() or b"", msg.partition(), msg.offset(), msg.timestamp()[1]
                )
            )
            pos[msg.partition()] = msg.offset() + 1
        return out
    finally:
        c.close()


def wait_for_count(
    bootstrap: str, topic: str, predicate, timeout_s: float, poll_s: float = 1.0
) -> list[Record]:
    """Re-read ``topic`` until ``predicate(records)`` holds or time runs out."""
    deadline = time.monotonic() + timeout_s
    records: list[Record] = []
    while time.monotonic() < deadline:
        records = read_topic(bootstrap, topic)
        if predicate(records):
            return records
        time.sleep(poll_s)
    return records


def json_table_state(bootstrap: str, changelog: str) -> dict:
    """A faust table with JSON keys and values as its changelog holds it now (last record
    per key wins; a deleted key reads as ``{}``; a changelog not created yet as empty)."""
    try:
        records = read_topic(bootstrap, changelog)
    except KeyError:  # the topic does not exist yet
        return {}
    return {json.loads(r.key): json.loads(r.value) if r.value else {} for r in records}
