"""``streamscribe forget SESSION`` on the real broker, after a real pipeline run.

Two sessions, ``call-1`` and ``call-10`` (one id a prefix of the other), go through the
worker (segmenter + recognizer) and the sink. ``forget call-1`` (the command line) must
leave no row of ``call-1`` in the store and a tombstone as the latest record of every
(partition, key) of ``call-1`` in every table changelog, while ``call-10``'s rows and the
latest records of its keys are exactly what they were. The changelogs are read here with
a reader of the test's own, independent of the one ``forget`` uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamscribe.consumers.assistant_state import ensure_state_topic
from streamscribe.consumers.sink import run_sink
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.core.settings import Settings
from streamscribe.processors.segmenter import segment_file
from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import TABLE_KEY_SHAPES, Topics, changelog_topic
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import produce, wait_finals, wait_session_end, worker
from tests.procs import ROOT, streamscribe_cmd

pytestmark = pytest.mark.integration

GONE, KEPT, OPEN = "call-1", "call-10", "call-open"
OPEN_CHUNKS = 30  # 3 s of speech, no end of stream; the worker's idle timeout is 30 s
#: A key of a session in any table: the id, then nothing or one of the separators.
KEY = re.compile(r"(?P<sid>[^#/]+)(?:[#/].*)?")

LatestRecords = dict[tuple[str, int, str], bytes | None]


def latest_records(bootstrap: str, group: str) -> LatestRecords:
    """The latest value of each (table, partition, key) in the group's changelogs, read to
    their end; a tombstone is None (``kafka_read.read_topic`` would read it as b"")."""
    out: LatestRecords = {}
    for table in TABLE_KEY_SHAPES:
        topic = changelog_topic(group, table)
        c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "log_level": 0}
        )
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            high = {
                p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
            }
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            pos = dict.fromkeys(parts, 0)
            deadline = time.monotonic() + 60
            while any(pos[p] < high[p] for p in parts):
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                msg = c.poll(1.0)
                if msg is None or msg.error():
                    continue
                out[(table, msg.partition(), json.loads(msg.key()))] = msg.value()
                pos[msg.partition()] = msg.offset() + 1
        finally:
            c.close()
    return out


def of_session(records: LatestRecords, sid: str) -> LatestRecords:
    return {k: v for k, v in records.items() if KEY.fullmatch(k[2])["sid"] == sid}  # type: ignore[index]


def forget_cli(
    bootstrap: str, topics: Topics, group: str, db: str, session: str = GONE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        streamscribe_cmd("forget", session, "--db", db, "--group-id", group),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix,
        },
    )


def send_open_session(bootstrap: str, topics: Topics, wav: Path) -> None:
    """The first chunks of a session, without its end of stream."""
    chunks = list(chunk_channel(read_audio(wav), 0, session_id=OPEN, role="agent"))
    producer = DeliveryProducer(bootstrap)
    for c in chunks[:OPEN_CHUNKS]:
        c = dataclasses.replace(c, captured_at_us=now_us())
        producer.send(topics.audio, c.key, c.encode())
    assert producer.close().delivered == OPEN_CHUNKS


def wait_until_open(bootstrap: str, group: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(v is not None for v in of_session(latest_records(bootstrap, group), OPEN).values()):
            return
        time.sleep(1.0)
    raise TimeoutError(f"no table key of {OPEN} after {timeout_s} s")


def db_for_open(tmp: Path) -> str:
    """An empty store (the open session has no rows): forget wants an existing one."""
    url = f"sqlite:///{tmp / 'open.db'}"
    TranscriptStore(url).close()
    return url


def test_forget_erases_one_session_from_the_store_and_the_tables(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    wav = str(assets / "beckett.wav")
    lines = len(segment_file(Path(wav)))
    group = f"forget-{uuid.uuid4().hex[:6]}"
    db = f"sqlite:///{tmp_path / 'transcripts.db'}"
    with worker(kafka_bootstrap, topics, tmp_path, group=group):
        for sid in (GONE, KEPT):
            # paced (x5, 2 s a session): its chunks reach the segmenter in several batches,
            # so the session leaves a channel state in the changelog; produced at once, a
            # 10 s session fits in one batch (segmenter_batch_max 256) and never writes one
            produce(kafka_bootstrap, topics, [wav], session_id=sid, pace="x5")
        send_open_session(kafka_bootstrap, topics, Path(wav))
        wait_finals(kafka_bootstrap, topics, {GONE: lines, KEPT: lines})
        wait_session_end(kafka_bootstrap, topics, {(GONE, 0), (KEPT, 0)})
        # a session still open (no end of stream, not idle yet): erased, but flagged
        wait_until_open(kafka_bootstrap, group)
        still = forget_cli(kafka_bootstrap, topics, group, db_for_open(tmp_path), OPEN)
        assert still.returncode == 1, still.stderr
        assert f"session {OPEN} is still open in " in still.stderr
        assert f"{group}/segmenter-sessions" in still.stderr
        assert "tombstones written" in still.stdout
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix
    )
    run_sink(settings, db_url=db, group_id=f"{group}-sink", from_earliest=True, max_idle_s=3.0)
    with TranscriptStore(db, create=False) as store:
        kept_rows = [r.final for r in store.finals(KEPT)]
        gone_rows = store.finals(GONE)
        kept_latency = [r for r in store.latency_records() if r.session_id == KEPT]
    assert len(kept_rows) == len(gone_rows) == lines
    before = latest_records(kafka_bootstrap, group)
    gone_before, kept_before = of_session(before, GONE), of_session(before, KEPT)
    # what a finished session leaves live: its end marker and its last line's state
    tables_live = {t for (t, _, _), v in gone_before.items() if v is not None}
    assert tables_live == {"segmenter-ended", "recognizer-lines"}, gone_before.keys()
    assert {t for t, _, _ in gone_before} == set(TABLE_KEY_SHAPES)  # every table had keys
    live = sum(v is not None for v in gone_before.values())

    # the voice assistant's state of both sessions (its own compacted topic, raw keys)
    state_topic = ensure_state_topic(settings, settings.group_for("assistant"))
    states = DeliveryProducer(kafka_bootstrap)
    for sid in (GONE, KEPT):
        states.send(state_topic, sid.encode(), b'{"session_id": "%s"}' % sid.encode())
    assert states.close().delivered == 2

    done = forget_cli(kafka_bootstrap, topics, group, db)
    assert done.returncode == 0, done.stderr
    assert f"session {GONE}: deleted from" in done.stdout
    assert f"{lines} utterances" in done.stdout and "1 sessions" in done.stdout
    written = sum(int(n) for n in re.findall(r"(\d+) tombstones written", done.stdout))
    assert written == live + 1  # + the assistant state of the session
    state_latest = {r.key: r.value for r in read_topic(kafka_bootstrap, state_topic)}
    assert state_latest[GONE.encode()] in (None, b"")
    assert state_latest[KEPT.encode()] == b'{"session_id": "%s"}' % KEPT.encode()

    after = latest_records(kafka_bootstrap, group)
    gone_after = of_session(after, GONE)
    assert set(gone_after) == set(gone_before)  # no key of it on another partition
    assert all(v is None for v in gone_after.values()), {
        k: v for k, v in gone_after.items() if v is not None
    }
    assert of_session(after, KEPT) == kept_before  # the other session's keys untouched
    with TranscriptStore(db, create=False) as store:
        assert store.finals(GONE) == [] and store.partials(GONE) == []
        assert store.session(GONE) is None
        assert all(r.session_id != GONE for r in store.latency_records())
        assert [r.final for r in store.finals(KEPT)] == kept_rows
        assert [r for r in store.latency_records() if r.session_id == KEPT] == kept_latency
        assert store.session(KEPT) is not None

    again = forget_cli(kafka_bootstrap, topics, group, db)
    assert again.returncode == 2
    assert f"unknown session '{GONE}'" in again.stderr
    assert "Traceback" not in again.stderr
