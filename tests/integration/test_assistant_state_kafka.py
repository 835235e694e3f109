"""The assistant's session state survives a kill -9 mid-command (real broker).

Transcripts are published straight to the transcripts topic (the recognizer's part is
tested elsewhere), so the crash falls exactly between the wake phrase and the command:

- session ``partial``: a partial "Hey scribe" is consumed and committed; after the crash
  the line's final has lost the wake words ("Call the supervisor.") — only the restored
  mark makes it a command;
- session ``wakeonly``: a final that is only "Hey scribe." is consumed and committed; after
  the crash the next line ("Set a timer for five minutes") is the command;
- session ``done``: a whole command before the crash, not published again after it.

Without the state topic the first two commands are lost; with it each of the three
commands is on the commands topic exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamscribe.core.kafka import DeliveryProducer
from streamscribe.schemas.commands import AssistantState, CommandEvent, assistant_state_topic
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent
from tests.integration.kafka_read import read_topic
from tests.procs import Proc, streamscribe_cmd

pytestmark = pytest.mark.integration


def committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every partition of ``topic`` up to its end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        done = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        return all(ends[p] == 0 or done[p] == ends[p] for p in ends)
    finally:
        c.close()


def wait_committed(bootstrap: str, group: str, topic: str, proc: Proc) -> None:
    deadline = time.monotonic() + 60
    while not committed_to_end(bootstrap, group, topic):
        assert proc.alive(), proc.log_text()[-3000:]
        assert time.monotonic() < deadline, proc.log_text()[-3000:]
        time.sleep(0.3)


def publish(bootstrap: str, topic: str, events: list[TranscriptEvent]) -> None:
    producer = DeliveryProducer(bootstrap, client_id="test-transcripts")
    for e in events:
        producer.send(topic, e.session_id.encode(), e.encode())
    producer.deliver_all("transcripts")
    producer.close()


def line(
    kind: str, sid: str, utterance: int, text: str, start: float, end: float
) -> TranscriptEvent:
    cls = PartialTranscript if kind == "partial" else FinalTranscript
    return cls(
        session_id=sid,
        channel=0,
        role="",
        utterance=utterance,
        revision=1,
        text=text,
        start_ms=start,
        end_ms=end,
    )


def test_a_restart_mid_command_loses_nothing_and_repeats_nothing(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    group = f"assistant-{uuid.uuid4().hex[:6]}"
    sid = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("partial", "wakeonly", "done")}
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix}
    args = streamscribe_cmd(
        "--log-level", "INFO", "assistant", "--wake", "hey scribe", "--timeout", "5",
        "--group-id", group, "--from-earliest",
    )  # fmt: skip

    first = Proc(args, tmp_path / "assistant-1.log", env=env)
    try:
        first.wait_for_log("assistant: wake 'hey scribe'", 60)
        publish(
            kafka_bootstrap,
            topics.transcripts,
            [
                line("partial", sid["partial"], 0, "Hey scribe", 0, 800),
                line("final", sid["wakeonly"], 0, "Hey scribe.", 0, 900),
                line("final", sid["done"], 0, "Hey scribe, call mom.", 0, 1500),
            ],
        )
        wait_committed(kafka_bootstrap, group, topics.transcripts, first)
        first.kill9()  # mid-command for two sessions
    finally:
        first.stop()
    states = {
        r.key: AssistantState.decode(r.value)
        for r in read_topic(kafka_bootstrap, assistant_state_topic(group))
    }
    assert [m.utterance for m in states[sid["partial"].encode()].lines] == [0]
    assert [m.channel for m in states[sid["wakeonly"].encode()].waiting] == [0]
    assert states[sid["done"].encode()].done == ((0, 0),)

    publish(
        kafka_bootstrap,
        topics.transcripts,
        [
            line("final", sid["partial"], 0, "Call the supervisor.", 0, 2200),
            line("final", sid["wakeonly"], 1, "Set a timer for five minutes.", 1500, 3600),
        ],
    )
    second = Proc(args, tmp_path / "assistant-2.log", env=env)
    try:
        second.wait_for_log("assistant: 3 session states restored", 60)
        wait_committed(kafka_bootstrap, group, topics.transcripts, second)
    finally:
        second.stop()

    commands = [CommandEvent.decode(r.value) for r in read_topic(kafka_bootstrap, topics.commands)]
    assert Counter(c.command_id for c in commands) == {
        f"{sid['done']}/0/0": 1,
        f"{sid['partial']}/0/0": 1,
        f"{sid['wakeonly']}/0/1": 1,
    }, commands
    by_session = {c.session_id: c for c in commands}
    assert (by_session[sid["done"]].intent, by_session[sid["done"]].slots) == (
        "call",
        {"person": "mom"},
    )
    partial_cmd = by_session[sid["partial"]]
    assert (partial_cmd.intent, partial_cmd.slots, partial_cmd.wake_heard) == (
        "call",
        {"person": "the supervisor"},
        "hey scribe",
    )
    wake_cmd = by_session[sid["wakeonly"]]
    assert (wake_cmd.intent, wake_cmd.slots) == ("set_timer", {"duration": "five minutes"})
    assert wake_cmd.transcript == "Hey scribe. Set a timer for five minutes."
