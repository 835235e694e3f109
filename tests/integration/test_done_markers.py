"""A finished session leaves no recognizer key behind (issue 13: finished sessions' table
keys tombstoned), on the real broker.

Two sessions of beckett go through one worker whose done markers live 3 s
(``STREAMSCRIBE_LINE_DONE_TTL_S``). Each line leaves a done marker in ``recognizer-lines``
when its final is published; the recognizer's sweep tombstones a marker once its final's
offset is committed and the channel's next line exists, and the channel's last one after
the 3 s. The changelogs are read from outside to their end: every key either session ever
had in ``recognizer-lines`` must read as a tombstone, the audio and segmenter state keys
too; only the segmenter's end markers (kept 7 days by design, they refuse late chunks)
stay. The finals are still exactly the offline ones, one per line.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from tests.integration.pipeline import (
    finals_by_line,
    produce,
    transcripts,
    wait_finals,
    wait_session_end,
    worker,
)
from tests.integration.test_forget import latest_records, of_session

pytestmark = pytest.mark.integration

SESSIONS = ("done-a", "done-b")
TTL_S = 3


def test_finished_sessions_leave_only_their_end_markers(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path
) -> None:
    wav = assets / "beckett.wav"
    offline = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    group = f"done-{uuid.uuid4().hex[:6]}"
    with worker(kafka_bootstrap, topics, tmp_path, group=group, line_done_ttl_s=str(TTL_S)):
        for sid in SESSIONS:
            produce(kafka_bootstrap, topics, [str(wav)], session_id=sid)
        wait_finals(kafka_bootstrap, topics, dict.fromkeys(SESSIONS, len(offline)))
        wait_session_end(kafka_bootstrap, topics, {(sid, 0) for sid in SESSIONS})
        deadline = time.monotonic() + 60
        while True:
            records = latest_records(kafka_bootstrap, group)
            live = {
                k
                for sid in SESSIONS
                for k, v in of_session(records, sid).items()
                if v is not None and k[0] != "segmenter-ended"
            }
            if not live or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    assert live == set(), f"keys still live {TTL_S} s after the end: {sorted(live)}"
    for sid in SESSIONS:
        mine = of_session(records, sid)
        markers = {k[2] for k in mine if k[0] == "recognizer-lines"}
        # every line had its key (state while open, then the done marker), now a tombstone
        assert markers == {f"{sid}/0/{u}" for u in range(len(offline))}, markers
        assert all(mine[k] is None for k in mine if k[0] == "recognizer-lines")
        ended = [k for k, v in mine.items() if k[0] == "segmenter-ended" and v is not None]
        assert len(ended) == 1  # by design: the channel's end marker stays
    finals = finals_by_line(transcripts(kafka_bootstrap, topics)[1])
    for sid in SESSIONS:
        got = [finals[(sid, 0, u)].text for u in range(len(offline))]
        assert got == offline
