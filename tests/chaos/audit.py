"""The chaos run's audit: every acknowledged chunk and every final, recorded as they happen.

- :class:`AuditProducer` is the run's producer: a :class:`DeliveryProducer` that also keeps
  the delivery report of every message it sent (partition and offset by the sha256 of the
  value), so a dead letter can be matched to the exact record it names;
- :class:`FinalsAudit` reads ``<prefix>transcripts`` from the beginning in a thread (no
  consumer group, so it commits nothing and survives the broker's restart like any client)
  and keeps every final, duplicates included.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streamscribe.core.kafka import DeliveryProducer
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript

LineKey = tuple[str, int, int]


@dataclass(frozen=True)
class Acked:
    partition: int
    offset: int


class AuditProducer(DeliveryProducer):
    """A :class:`DeliveryProducer` that records where each delivered value landed."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, client_id="chaos-audit-producer", extra={"log_level": 0})
        self.acked: dict[str, list[Acked]] = defaultdict(list)  # sha256 of value -> reports

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        super()._on_delivery(err, msg)
        if err is None:
            sha = hashlib.sha256(msg.value() or b"").hexdigest()
            self.acked[sha].append(Acked(msg.partition() or 0, msg.offset() or 0))


class FinalsAudit:
    """Every final published on ``topic`` (all copies), read in a background thread."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "chaos-audit-unused",  # assign() only: nothing is committed
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._lock = threading.Lock()
        self._finals: list[FinalTranscript] = []
        self.partials = 0
        self.undecodable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finals-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            try:
                event = decode_transcript(msg.value() or b"")
            except Exception:  # counted: the sink dead-letters what it cannot decode
                self.undecodable += 1
                continue
            with self._lock:
                if isinstance(event, FinalTranscript):
                    self._finals.append(event)
                else:
                    self.partials += 1

    def finals(self) -> list[FinalTranscript]:
        with self._lock:
            return list(self._finals)

    def lines(self) -> dict[LineKey, list[FinalTranscript]]:
        out: dict[LineKey, list[FinalTranscript]] = defaultdict(list)
        for f in self.finals():
            out[(f.session_id, f.channel, f.utterance)].append(f)
        return out

    def wait_lines(self, expected: dict[str, int], timeout_s: float) -> dict[str, tuple]:
        """Until each session has ``expected[session]`` distinct lines; the sessions still
        short then, as ``{session: (have, want)}`` (the tests say what is missing)."""
        deadline = time.monotonic() + timeout_s
        while True:
            have: dict[str, int] = defaultdict(int)
            for sid, _, _ in self.lines():
                have[sid] += 1
            short = {s: (have[s], n) for s, n in expected.items() if have[s] < n}
            if not short or time.monotonic() > deadline:
                return short
            time.sleep(1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
