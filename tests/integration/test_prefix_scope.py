"""Issue 13, item 10, on the real broker: ``--topic-prefix`` scopes the consumer groups and
the internal topics (table changelogs, faust's leader topic), so two pipelines with
different prefixes run side by side on one cluster without sharing a group or a table.

Both pipelines run at once with no ``--group-id``: a segmenter worker and a sink each. The
admin client then lists the groups and the changelog topics: every default name carries
its pipeline's prefix stem, each group's members read only their own pipeline's topics,
and each pipeline's output holds only its own sessions.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.admin import create_topics
from streamscribe.processors.asr import bundled_recording
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript
from tests.integration.pipeline import WORKER_READY, produce, utterances, worker_env
from tests.procs import Proc, streamscribe_cmd

pytestmark = pytest.mark.integration

BECKETT_UTTERANCES = 6
FINALS_PER_PIPELINE = 3
WAIT_S = 180.0
SEGMENTER_TABLES = {"segmenter-channels", "segmenter-sessions", "segmenter-ended"}


def _wait(what: str, check, timeout_s: float = WAIT_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout_s} s")
        time.sleep(1.0)


def _stored_texts(db: str, session: str) -> list[str]:
    store = TranscriptStore(db, create=False)
    try:
        return [row.final.text for row in store.finals(session)]
    finally:
        store.close()


def _member_topics(admin: AdminClient, group: str) -> set[str]:
    (desc,) = [f.result(30) for f in admin.describe_consumer_groups([group]).values()]
    return {
        tp.topic
        for member in desc.members
        for tp in (member.assignment.topic_partitions if member.assignment else [])
    }


def _committed_topics(admin: AdminClient, group: str) -> set[str]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    (res,) = [f.result(30) for f in futures.values()]
    return {tp.topic for tp in res.topic_partitions if tp.offset >= 0}


def test_two_prefixes_on_one_cluster_share_no_group_and_no_changelog(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    # Two separators, to check the stem rule: "pa<run>." -> "pa<run>", "pb<run>-" -> "pb<run>".
    pipelines = {"a": Topics(f"pa{run}."), "b": Topics(f"pb{run}-")}
    stems = {name: t.prefix[:-1] for name, t in pipelines.items()}
    for t in pipelines.values():
        create_topics(kafka_bootstrap, t.specs(partitions=4))
    procs: list[Proc] = []
    try:
        for name, t in pipelines.items():  # both pipelines run at the same time
            env = worker_env(kafka_bootstrap, t, tmp_path / f"data-{name}")
            procs.append(
                Proc(
                    streamscribe_cmd("worker", "--stages", "segmenter"),
                    tmp_path / f"worker-{name}.log",
                    env=env,
                )
            )
            db = f"sqlite:///{tmp_path / f'{name}.db'}"
            procs.append(
                Proc(streamscribe_cmd("sink", "--db", db), tmp_path / f"sink-{name}.log", env=env)
            )
        for proc in procs[::2]:
            proc.wait_for_log(WORKER_READY, 120)

        sessions: dict[str, str] = {}
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for name, t in pipelines.items():
            (sessions[name],) = produce(
                kafka_bootstrap, t, [str(bundled_recording("beckett.wav"))]
            ).sessions
            for u in range(FINALS_PER_PIPELINE):
                final = FinalTranscript(f"s-{name}", 0, "agent", u, 1, f"{name} {u}", u, u + 1.0)
                producer.produce(t.transcripts, key=f"s-{name}".encode(), value=final.encode())
        assert producer.flush(30) == 0

        for name, t in pipelines.items():
            _wait(
                f"pipeline {name}: {BECKETT_UTTERANCES} final utterances",
                lambda t=t: (
                    sum(1 for u in utterances(kafka_bootstrap, t).values() if u.final)
                    >= BECKETT_UTTERANCES
                ),
            )
            db = f"sqlite:///{tmp_path / f'{name}.db'}"
            _wait(
                f"sink {name}: {FINALS_PER_PIPELINE} rows",
                lambda db=db, name=name: len(_stored_texts(db, f"s-{name}")) == FINALS_PER_PIPELINE,
            )
        assert all(p.alive() for p in procs), "a process of the two pipelines exited"

        # Each pipeline's output holds only its own sessions: nothing crossed over.
        for name, t in pipelines.items():
            other = "b" if name == "a" else "a"
            seen = {u.session_id for u in utterances(kafka_bootstrap, t).values()}
            assert seen == {sessions[name]}
            db = f"sqlite:///{tmp_path / f'{name}.db'}"
            assert _stored_texts(db, f"s-{name}") == [f"{name} {u}" for u in range(3)]
            assert _stored_texts(db, f"s-{other}") == []

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        groups = {g.group_id for g in admin.list_consumer_groups().result(30).valid}
        all_topics = set(admin.list_topics(timeout=30).topics)
        for name, t in pipelines.items():
            stem = stems[name]
            assert {f"{stem}-processors", f"{stem}-sink"} <= groups
            internal = {n for n in all_topics if n.startswith(f"{stem}-processors-")}
            changelogs = {n for n in internal if n.endswith("-changelog")}
            assert changelogs == {f"{stem}-processors-{tab}-changelog" for tab in SEGMENTER_TABLES}
            assert f"{stem}-processors-__assignor-__leader" in internal  # faust's own topic
            own = {n for n in all_topics if n.startswith(t.prefix)} | internal
            for group in (f"{stem}-processors", f"{stem}-sink"):
                read = _member_topics(admin, group) | _committed_topics(admin, group)
                assert read, f"group {group} reads nothing"
                assert read <= own, f"group {group} reads other topics: {read - own}"
            assert t.audio in _member_topics(admin, f"{stem}-processors")
            assert _member_topics(admin, f"{stem}-sink") == {t.transcripts}
    finally:
        for proc in procs:
            proc.stop()


def test_explicit_group_id_still_wins(kafka_bootstrap: str, tmp_path: Path) -> None:
    """``STREAMSCRIBE_GROUP_ID`` names the worker's group and changelogs whatever the prefix."""
    run = uuid.uuid4().hex[:8]
    t = Topics(f"pc{run}.")
    group = f"explicit-{run}"
    create_topics(kafka_bootstrap, t.specs(partitions=4))
    env = {
        **worker_env(kafka_bootstrap, t, tmp_path / "data"),
        "STREAMSCRIBE_GROUP_ID": group,
    }
    proc = Proc(streamscribe_cmd("worker", "--stages", "segmenter"), tmp_path / "w.log", env=env)
    try:
        proc.wait_for_log(WORKER_READY, 120)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        _wait("the explicit group", lambda: _member_topics(admin, group))
        groups = {g.group_id for g in admin.list_consumer_groups().result(30).valid}
        names = set(admin.list_topics(timeout=30).topics)
    finally:
        proc.stop()
    assert group in groups and f"pc{run}-processors" not in groups
    assert {f"{group}-{tab}-changelog" for tab in SEGMENTER_TABLES} <= names
    assert not {n for n in names if n.startswith(f"pc{run}-processors")}
