"""The voice assistant on the real broker: espeak-ng speech → ``streamscribe produce`` →
a real worker (segmenter + recognizer) → ``streamscribe assistant`` → CommandEvents.

Two commands ("hey scribe, set a timer for five minutes", "hey scribe, call the
supervisor") arrive once each with their intents and slots; a line without the wake phrase
gives none. The wake-to-command latencies are printed (``-s``), not asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from confluent_kafka import Consumer, TopicPartition
from rapidfuzz import fuzz

from streamscribe.schemas.commands import CommandEvent
from streamscribe.schemas.topics import Topics
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import utterances, wait_finals, wait_session_end, worker
from tests.procs import Proc, streamscribe_cmd

pytestmark = pytest.mark.integration

ESPEAK = shutil.which("espeak-ng")
LEAD_S, TAIL_S = 0.6, 1.2  # silence around the speech: the segmenter sees its start and end
SPEECH = {
    "timer": "hey scribe, set a timer for five minutes",
    "call": "hey scribe, call the supervisor",
    "plain": "the weather is nice today",
}


def synthesize(text: str, path: Path) -> Path:
    """espeak-ng's default voice (22050 Hz), with silence before and after."""
    assert ESPEAK is not None, "espeak-ng is missing: scripts/system-deps.sh installs it"
    raw = path.with_suffix(".raw.wav")
    subprocess.run([ESPEAK, "-w", str(raw), text], check=True, timeout=60)
    pcm, rate = sf.read(raw, dtype="int16")
    silence = [np.zeros(int(s * rate), np.int16) for s in (LEAD_S, TAIL_S)]
    sf.write(path, np.concatenate([silence[0], pcm, silence[1]]), rate, subtype="PCM_16")
    return path


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


@pytest.fixture
def assistant(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> Iterator[tuple[Proc, str, str]]:
    """The assistant, and the processor group whose transcripts are its live traffic."""
    group = f"assistant-{uuid.uuid4().hex[:6]}"
    processors = f"w-{uuid.uuid4().hex[:6]}"
    proc = Proc(
        streamscribe_cmd(
            "--log-level",
            "INFO",
            "assistant",
            "--wake",
            "hey scribe",
            "--group-id",
            group,
            "--from-earliest",
        ),
        tmp_path / "assistant.log",
        env={
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix,
            "STREAMSCRIBE_GROUP_ID": processors,  # live traffic = that worker's transcripts
        },
    )
    try:
        proc.wait_for_log("assistant: wake 'hey scribe'", 60)
        yield proc, group, processors
    finally:
        proc.stop()


def test_spoken_commands_arrive_once_each(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assistant: tuple[Proc, str, str]
) -> None:
    proc, group, processors = assistant
    sessions = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in SPEECH}
    wavs = {name: synthesize(text, tmp_path / f"{name}.wav") for name, text in SPEECH.items()}
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix}
    with worker(kafka_bootstrap, topics, tmp_path, group=processors):
        for name, wav in wavs.items():
            subprocess.run(
                streamscribe_cmd(
                    "produce", str(wav), "--session-id", sessions[name], "--pace", "realtime"
                ),
                check=True,
                timeout=120,
                env={**os.environ, **env},
            )
        wait_session_end(kafka_bootstrap, topics, {(s, 0) for s in sessions.values()})
        lines = Counter(
            sid for (sid, _, _), u in utterances(kafka_bootstrap, topics).items() if u.final
        )
        _, finals = wait_finals(kafka_bootstrap, topics, dict(lines))
    deadline = time.monotonic() + 60
    while not committed_to_end(kafka_bootstrap, group, topics.transcripts):
        assert time.monotonic() < deadline, proc.log_text()[-3000:]
        time.sleep(0.5)
    commands = [CommandEvent.decode(r.value) for r in read_topic(kafka_bootstrap, topics.commands)]
    heard = {f.session_id: f.text for f in finals}
    by_session = {c.session_id: c for c in commands}

    assert len(commands) == 2, (commands, heard)
    assert len({c.command_id for c in commands}) == 2  # once each
    assert set(by_session) == {sessions["timer"], sessions["call"]}, heard  # none for "plain"

    timer = by_session[sessions["timer"]]
    assert timer.intent == "set_timer", (timer, heard)
    assert set(timer.slots) == {"duration"}
    duration = timer.slots["duration"].replace("5", "five")
    assert fuzz.ratio(duration, "five minutes") >= 80, timer.slots

    call = by_session[sessions["call"]]
    assert call.intent == "call", (call, heard)
    assert set(call.slots) == {"person"}
    assert fuzz.ratio(call.slots["person"], "the supervisor") >= 80, call.slots

    for c in (timer, call):
        assert c.confidence >= 0.5 and c.source == "final"
        ts = c.timestamps
        print(
            f"{c.intent}: heard {c.transcript!r} -> {c.slots}; command - end-of-speech chunk "
            f"{(ts['command_at_us'] - ts['captured_at_us']) / 1000:.0f} ms, command - final "
            f"published {(ts['command_at_us'] - ts['published_at_us']) / 1000:.0f} ms"
        )
