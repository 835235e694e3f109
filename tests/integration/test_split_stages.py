"""``streamscribe worker --split-stages`` on the real broker: a segmenter process and a
recognizer process in one consumer group give exactly the offline finals, and SIGTERM to
the parent stops both (issue 11, lever 5: both cores)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from streamscribe.cli.worker import usable_cores
from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import (
    ASR_READY,
    WORKER_READY,
    finals_by_line,
    produce,
    transcripts,
    wait_finals,
    worker_env,
)
from tests.integration.test_reliability_cli import HANG_GUARD_S, _children, _zombie
from tests.procs import Proc, streamscribe_cmd

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_split_stages_give_the_offline_finals_and_stop_together(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, workers: int
) -> None:
    """With ``--workers 2`` (two processes per stage) the group's leader runs one stage
    only: with faust's own assignor every member of the other stage died in faust's
    assignment check once it kept standby tables (``processors/faust_assignor.py``); now
    each stage process keeps standbys of its own stage's tables."""
    wav = assets / "beckett.wav"
    offline = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    group = f"split-{uuid.uuid4().hex[:6]}"
    cmd = streamscribe_cmd(
        "worker",
        "--split-stages",
        "--workers",
        str(workers),
        "--group-id",
        group,
        "--from-earliest",
    )
    proc = Proc(cmd, tmp_path / "split.log", env=worker_env(kafka_bootstrap, topics, tmp_path))
    sessions = [f"split-{workers}-{i}" for i in range(2 * workers)]
    try:
        deadline = time.monotonic() + 150
        while (
            proc.log_text().count(WORKER_READY) < 2 * workers
            or proc.log_text().count(ASR_READY) < workers
        ):
            assert time.monotonic() < deadline, proc.log_text()[-2000:]
            assert proc.popen.poll() is None, proc.log_text()[-2000:]
            time.sleep(0.5)
        children = _children(proc.popen.pid)
        assert len(children) == 2 * workers
        for sid in sessions:
            produce(kafka_bootstrap, topics, [str(wav)], session_id=sid)
        _, finals = wait_finals(kafka_bootstrap, topics, dict.fromkeys(sessions, len(offline)))
        by_line = finals_by_line(finals)
        for sid in sessions:
            assert [by_line[(sid, 0, u)].text for u in range(len(offline))] == offline
        assert len(finals) == len(sessions) * len(offline), len(finals)
        assert "AssertionError" not in proc.log_text()
        if workers == 2:  # one of each stage's two processes is its partner's warm copy
            standby = standby_topics(proc.log_text())
            assert {
                f"{group}-{table}-changelog"
                for table in ("segmenter-channels", "recognizer-lines", "recognizer-audio")
            } <= standby, standby
        os.kill(proc.popen.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=HANG_GUARD_S) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists() or _zombie(child)
    finally:
        proc.stop()


def test_the_default_worker_runs_a_process_per_stage_and_a_sigkill_of_it_kills_them_all(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    """On 2 cores or more, plain ``streamscribe worker`` runs the two stages in processes of
    their own (issue 11, lever 5). SIGKILL to the worker's own pid, not to its process
    group, takes its stage processes with it (``PR_SET_PDEATHSIG``): none is left holding
    partitions; a new worker then gives every line of the session killed mid-stream, with
    the offline text."""
    if usable_cores() < 2:
        pytest.skip("one usable core: the default worker is one process")
    wav = assets / "beckett.wav"
    offline = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    group = f"dflt-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka_bootstrap, topics, tmp_path / "data")
    del env["STREAMSCRIBE_SPLIT_STAGES"]  # the default
    cmd = streamscribe_cmd("worker", "--group-id", group, "--from-earliest")
    first = Proc(cmd, tmp_path / "first.log", env=env)
    second: Proc | None = None
    try:
        _wait_ready(first, processes=2)
        children = _children(first.popen.pid)
        assert len(children) == 2, first.log_text()[-2000:]
        assert "segmenter and recognizer in processes of their own" in first.log_text()
        produce(kafka_bootstrap, topics, [str(wav)], session_id="before")
        _, finals = wait_finals(kafka_bootstrap, topics, {"before": len(offline)})
        assert [finals_by_line(finals)[("before", 0, u)].text for u in range(len(offline))] == (
            offline
        )
        killed = False

        def kill_after_first_final() -> None:
            nonlocal killed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _, fs = transcripts(kafka_bootstrap, topics)
                if any(f.session_id == "during" for f in fs):
                    os.kill(first.popen.pid, signal.SIGKILL)  # the parent only
                    killed = True
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_after_first_final)
        killer.start()
        produce(kafka_bootstrap, topics, [str(wav)], session_id="during", pace="realtime")
        killer.join()
        assert killed
        deadline = time.monotonic() + 5
        while not all(_gone(c) for c in children):
            assert time.monotonic() < deadline, "a stage process outlived its worker"
            time.sleep(0.1)
        second = Proc(cmd, tmp_path / "second.log", env=env)
        _wait_ready(second, processes=2)
        _, finals = wait_finals(kafka_bootstrap, topics, {"during": len(offline)})
        by_line = finals_by_line(finals)  # a line published twice must say the same
        assert [by_line[("during", 0, u)].text for u in range(len(offline))] == offline
        assert {u for (s, _, u) in by_line if s == "during"} == set(range(len(offline)))
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _wait_ready(proc: Proc, processes: int) -> None:
    deadline = time.monotonic() + 150
    while proc.log_text().count(WORKER_READY) < processes or proc.log_text().count(ASR_READY) < 1:
        assert time.monotonic() < deadline, proc.log_text()[-2000:]
        assert proc.popen.poll() is None, proc.log_text()[-2000:]
        time.sleep(0.5)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def standby_topics(log_text: str) -> set[str]:
    """The changelog topics in faust's "Reading Starts At - Standby" tables of a log."""
    topics: set[str] = set()
    inside = False
    for line in log_text.splitlines():
        if line.startswith("+Reading Starts At - Standby"):
            inside = True
        elif not line.startswith(("+", "|")):
            inside = False  # the table ends where the next log line starts
        elif inside and line.startswith("|"):
            name = line.strip("|").split("|")[0].strip()
            if name not in ("topic", "\u3003"):
                topics.add(name)
    return topics
