"""A final still decoding when its worker is SIGKILLed is not lost (issue 13, the chaos
suite's one unexplained loss).

faust-streaming 0.15.3 commits past an unacked message that sits exactly at the committed
offset once later messages of the partition are acked (``Consumer._new_offset``), and the
recognizer acks a final's message only after the final is published, while the updates of
the next lines are acked at once. Here every final of one session is held in its decode
(fault injection: ``STREAMSCRIBE_ASR_SLOW_LINES``) while its other messages are acked;
the group's committed offset on the utterances topic must stay at the first held final,
and after a SIGKILL a second worker publishes every final. Before
``faust_fixes.install_commit_below_pending`` the group committed the whole topic and the
second worker published nothing for the session.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamscribe.core.admin import create_topics
from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.utterances import KIND_FINAL, UtteranceMessage
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import finals_by_line, produce, start_worker, wait_finals

pytestmark = pytest.mark.integration

SESSION = "held"


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset on partition 0 of ``topic`` (None: nothing yet)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        (tp,) = c.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset if tp.offset >= 0 else None
    finally:
        c.close()


def _worker_held_in(
    bootstrap: str, topics: Topics, tmp: Path, group: str, lines: str, **common: str
) -> Any:
    """The first worker: the final decodes of the lines matching ``lines`` hang (600 s)."""
    for name in ("w1", "w2"):
        (tmp / name).mkdir()
    return start_worker(
        bootstrap,
        topics,
        tmp / "w1",
        group=group,
        log_name="w1.log",
        asr_slow_lines=lines,
        asr_slow_s="600",
        **common,
    )


def _second_worker_publishes_every_final(
    bootstrap: str, topics: Topics, tmp: Path, group: str, offline: list[str], **common: str
) -> None:
    """After the first worker's SIGKILL: a second one in its group publishes every line's
    final, as the offline run has them."""
    second = start_worker(bootstrap, topics, tmp / "w2", group=group, log_name="w2.log", **common)
    try:
        _, finals = wait_finals(bootstrap, topics, {SESSION: len(offline)}, timeout_s=120)
        by_line = finals_by_line(finals)
        assert [by_line[(SESSION, 0, u)].text for u in range(len(offline))] == offline
    finally:
        second.stop()


def test_a_final_still_decoding_at_a_sigkill_is_published_after_it(
    kafka_bootstrap: str, tmp_path: Path, assets: Path
) -> None:
    wav = assets / "beckett.wav"
    offline = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    topics = Topics(f"held{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(1))  # one partition: every message in line
    group = f"held-{uuid.uuid4().hex[:6]}"
    common = {"partitions": "1", "speculative_finals": "false"}
    first = _worker_held_in(kafka_bootstrap, topics, tmp_path, group, f"{SESSION}/0/*", **common)
    try:
        produce(kafka_bootstrap, topics, [str(wav)], session_id=SESSION)
        final_offsets: list[int] = []
        deadline = time.monotonic() + 60
        while len(final_offsets) < len(offline):
            assert time.monotonic() < deadline, "the segmenter did not end every line"
            final_offsets = [
                r.offset
                for r in read_topic(kafka_bootstrap, topics.utterances)
                if UtteranceMessage.decode(r.value).kind == KIND_FINAL
            ]
            time.sleep(0.5)
        last = max(r.offset for r in read_topic(kafka_bootstrap, topics.utterances))
        time.sleep(4)  # several commit intervals (1 s) after every later message was acked
        committed = _committed(kafka_bootstrap, group, topics.utterances)
        assert committed is not None and committed <= final_offsets[0] < last, (
            committed,
            final_offsets,
            last,
        )
    finally:
        first.kill9()
        first.stop()
    _second_worker_publishes_every_final(
        kafka_bootstrap, topics, tmp_path, group, offline, **common
    )


def test_a_replay_line_is_held_on_the_topic_until_its_final_and_survives_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path, assets: Path
) -> None:
    """A session not watched live (``produce --pace asap``) stores none of its audio in the
    recognizer's tables: a line's messages stay unacked until its final is published, so
    the topic holds them. Here line 2's final is held in its decode; lines 0 and 1 are
    done, and the group's committed offset on the (one-partition) utterances topic must be
    exactly the offset of line 2's first message: everything before it acked, nothing of
    line 2 or after it. After a SIGKILL a second worker reads line 2 again from that
    first message and publishes every final, as the offline run has them (finals one by
    one here, ``replay_batch_max`` 1: a batch may differ in a near-tie token)."""
    wav = assets / "beckett.wav"
    offline = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    assert len(offline) > 3
    topics = Topics(f"rheld{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_bootstrap, topics.specs(1))
    group = f"rheld-{uuid.uuid4().hex[:6]}"
    common = {"partitions": "1", "replay_batch_max": "1"}
    first = _worker_held_in(kafka_bootstrap, topics, tmp_path, group, f"{SESSION}/0/2", **common)
    try:
        produce(kafka_bootstrap, topics, [str(wav)], session_id=SESSION, live=False)
        _, done = wait_finals(kafka_bootstrap, topics, {SESSION: 2}, timeout_s=120)
        assert {f.utterance for f in done} == {0, 1}
        records = read_topic(kafka_bootstrap, topics.utterances)
        messages = [(r.offset, UtteranceMessage.decode(r.value)) for r in records]
        assert all(not m.live for _, m in messages)
        line2 = min(offset for offset, m in messages if m.utterance == 2)
        assert [m.utterance for offset, m in messages if offset < line2] == sorted(
            m.utterance for offset, m in messages if offset < line2
        ) and {m.utterance for offset, m in messages if offset < line2} == {0, 1}
        time.sleep(4)  # several commit intervals (1 s) after lines 0 and 1 were acked
        assert _committed(kafka_bootstrap, group, topics.utterances) == line2
    finally:
        first.kill9()
        first.stop()
    _second_worker_publishes_every_final(
        kafka_bootstrap, topics, tmp_path, group, offline, **common
    )
