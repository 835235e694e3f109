"""Issue 13, items 6-9 and 11, on the real broker: where a new group starts, a broker that
does not answer, an in-memory sink, and ``worker --workers N`` when a child dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streamscribe.processors.asr import bundled_recording
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import (
    ASR_READY,
    WORKER_READY,
    produce,
    wait_finals,
    worker_env,
)
from tests.procs import Proc, streamscribe_cmd

pytestmark = pytest.mark.integration

BECKETT_FINALS = 6
HANG_GUARD_S = 120  # a command that never returns fails the test instead of hanging it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_new_worker_group_transcribes_audio_sent_before_it_started(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Item 6: audio produced before a group's first worker exists is transcribed (the
    new group starts at the earliest offset; no --from-earliest given)."""
    report = produce(kafka_bootstrap, topics, [str(bundled_recording("beckett.wav"))])
    (session,) = report.sessions
    group = f"new-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka_bootstrap, topics, tmp_path / "data")
    proc = Proc(streamscribe_cmd("worker", "--group-id", group), tmp_path / "w.log", env=env)
    try:
        proc.wait_for_log(WORKER_READY, 120)
        proc.wait_for_log(ASR_READY, 120)
        _, finals = wait_finals(kafka_bootstrap, topics, {session: BECKETT_FINALS}, 180)
    finally:
        proc.stop()
    assert len({(f.channel, f.utterance) for f in finals if f.session_id == session}) == 6


def test_a_new_sink_group_stores_finals_published_before_it_started(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Item 11: a sink started for the first time after finals were published stores
    them (no --from-earliest given); --from-latest skips them."""
    from confluent_kafka import Producer

    from streamscribe.consumers.store import TranscriptStore
    from streamscribe.schemas.transcripts import FinalTranscript

    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for u in range(3):
        final = FinalTranscript(
            "s-old", 0, "agent", u, 1, f"line {u}", u * 1000.0, u * 1000.0 + 500
        )
        p.produce(topics.transcripts, key=b"s-old", value=final.encode())
    p.flush(30)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix,
    }
    counts = {}
    for flag in ("", "--from-latest"):
        db = f"sqlite:///{tmp_path / f'db{flag or 0}.sqlite'}"
        cmd = streamscribe_cmd(
            "sink", "--db", db, "--group-id", f"sink-{uuid.uuid4().hex[:6]}", "--max-idle", "8"
        )
        done = subprocess.run(
            cmd + ([flag] if flag else []), env=env, capture_output=True, timeout=HANG_GUARD_S
        )
        assert done.returncode == 0, done.stderr.decode()
        store = TranscriptStore(db)
        try:
            counts[flag] = len(store.finals("s-old"))
        finally:
            store.close()
    assert counts == {"": 3, "--from-latest": 0}


@pytest.mark.parametrize(
    "argv",
    [["worker"], ["topics", "create"], ["produce", "BECKETT"]],
    ids=["worker", "topics-create", "produce"],
)
def test_no_broker_is_one_line_naming_the_address(argv: list[str]) -> None:
    """Item 7: nothing listens at the address: one line naming it, exit 2, no traceback."""
    address = f"127.0.0.1:{_free_port()}"
    argv = [str(bundled_recording("beckett.wav")) if a == "BECKETT" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    done = subprocess.run(
        streamscribe_cmd("--bootstrap-servers", address, *argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"no Kafka broker answers at {address}" in lines[0]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sink_is_refused(kafka_bootstrap: str, url: str) -> None:
    """Item 8: an in-memory database would commit offsets for rows it then loses."""
    done = subprocess.run(
        streamscribe_cmd("--bootstrap-servers", kafka_bootstrap, "sink", "--db", url),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    assert "in-memory database" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_parent_stops_every_child_on_sigterm_and_on_a_dead_child(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Item 9: SIGTERM to ``worker --workers 2`` stops both children; a child that dies
    stops its sibling and the parent exits non-zero."""
    env = worker_env(kafka_bootstrap, topics, tmp_path / "data")
    for case in ("sigterm", "child-killed"):
        cmd = streamscribe_cmd(
            "worker", "--workers", "2", "--group-id", f"wk-{uuid.uuid4().hex[:6]}"
        )
        proc = Proc(cmd, tmp_path / f"{case}.log", env=env)
        try:
            deadline = time.monotonic() + 120
            while proc.log_text().count(WORKER_READY) < 2:
                assert time.monotonic() < deadline, proc.log_text()[-2000:]
                time.sleep(0.5)
            children = _children(proc.popen.pid)
            assert len(children) == 2
            if case == "sigterm":
                os.kill(proc.popen.pid, signal.SIGTERM)
                assert proc.popen.wait(timeout=HANG_GUARD_S) == 0
            else:
                os.kill(children[0], signal.SIGKILL)
                assert proc.popen.wait(timeout=HANG_GUARD_S) == 128 + signal.SIGKILL
            for child in children:
                assert not Path(f"/proc/{child}").exists() or _zombie(child)
        finally:
            proc.stop()


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
