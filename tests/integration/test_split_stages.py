"""``streamscribe worker --split-stages`` on the real broker: a segmenter process and a
recognizer process in one consumer group give exactly the offline finals, and SIGTERM to
the parent stops both (issue 11, lever 5: both cores)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import (
    ASR_READY,
    WORKER_READY,
    finals_by_line,
    produce,
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
    only: before standby tables were turned off in such processes, every member of the
    other stage died in faust's assignment check."""
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
        os.kill(proc.popen.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=HANG_GUARD_S) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists() or _zombie(child)
    finally:
        proc.stop()
