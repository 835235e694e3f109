"""Care with speech, the pure parts: retention settings -> topic specs, which table keys
belong to a session (``forget``), and the store's erasure of one session."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
from pathlib import Path

import pytest

from streamscribe.consumers.forget import session_keys
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.settings import Settings
from streamscribe.processors.recognizer_line import piece_key
from streamscribe.processors.stream_segmenter import ChannelKey
from streamscribe.processors.worker import build_worker
from streamscribe.schemas.topics import (
    HOUR_MS,
    MONTH_MS,
    TABLE_KEY_SHAPES,
    WEEK_MS,
    Retention,
    Topics,
    changelog_topic,
    is_session_key,
)
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript
from streamscribe.schemas.utterances import line_id


# ------------------------------------------------------------------------------ retention
def _retention(topics: Topics) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        s.name.removeprefix(topics.prefix): (s.configs["retention.ms"], s.alter_existing)
        for s in topics.specs(4)
    }


def test_plain_topics_keep_the_default_retention_and_never_alter_an_existing_topic() -> None:
    got = _retention(Topics("p."))
    assert got["audio"] == (str(WEEK_MS), ())
    assert got["utterances"] == (str(WEEK_MS), ())
    assert got["transcripts"] == (str(MONTH_MS), ())
    assert all(alter == () for _, alter in got.values())


def test_retention_from_the_settings_reaches_the_specs_and_is_applied_to_existing_topics() -> None:
    settings = Settings.from_env(
        {
            "STREAMSCRIBE_TOPIC_PREFIX": "r.",
            "STREAMSCRIBE_AUDIO_RETENTION_HOURS": "1.5",
            "STREAMSCRIBE_UTTERANCES_RETENTION_HOURS": "2",
            "STREAMSCRIBE_TRANSCRIPTS_RETENTION_HOURS": "48",
        }
    )
    topics = Topics.from_settings(settings)
    got = _retention(topics)
    assert topics.prefix == "r."
    assert got["audio"] == (str(int(1.5 * HOUR_MS)), ("retention.ms",))
    assert got["utterances"] == (str(2 * HOUR_MS), ("retention.ms",))
    assert got["transcripts"] == (str(48 * HOUR_MS), ("retention.ms",))
    # the topics without speech keep their own retention, never altered
    assert got["events"] == (str(WEEK_MS), ())
    assert got["deadletter"] == (str(MONTH_MS), ())
    # the other configs of the speech topics are unchanged
    audio = topics.specs(4)[0]
    assert audio.configs["message.timestamp.type"] == "LogAppendTime"


def test_default_settings_give_the_default_retention() -> None:
    assert Topics.from_settings(Settings()).retention == Retention()


@pytest.mark.parametrize("hours", [0, -1])
def test_a_retention_that_is_not_positive_is_refused(hours: float) -> None:
    with pytest.raises(ValueError, match="audio retention must be positive"):
        Topics.from_settings(Settings(audio_retention_hours=hours))


# --------------------------------------------------------------------------- table keys
def test_the_key_shapes_cover_every_table_the_worker_declares(tmp_path: Path) -> None:
    app, _ = build_worker(Settings(worker_data_dir=tmp_path / "w"))
    assert set(app.tables) == set(TABLE_KEY_SHAPES)
    assert changelog_topic("g", "recognizer-lines") == "g-recognizer-lines-changelog"


def test_the_key_shapes_match_the_keys_the_processors_write() -> None:
    """The processors' own key builders give keys of the shapes ``forget`` looks for."""
    sid = "call-1"
    written = {
        "segmenter-channels": str(ChannelKey(sid, 1)),
        "segmenter-ended": str(ChannelKey(sid, 0)),
        "segmenter-sessions": sid,
        "recognizer-lines": line_id(sid, 1, 12),
        "recognizer-audio": piece_key(line_id(sid, 0, 3), 7),
    }
    for table, key in written.items():
        assert is_session_key(table, key, sid), (table, key)
        assert not is_session_key(table, key, "call-10"), (table, key)
        assert not is_session_key(table, key, "call"), (table, key)


@pytest.mark.parametrize(
    ("table", "key", "session", "belongs"),
    [
        ("segmenter-ended", "call-10#0", "call-1", False),  # never a prefix match
        ("segmenter-ended", "call-1#0", "call-10", False),
        ("segmenter-sessions", "call-10", "call-1", False),
        ("segmenter-sessions", "call-1", "call-1", True),
        ("recognizer-lines", "call-1/0/3", "call-1", True),
        ("recognizer-lines", "call-1/0/3#2", "call-1", False),  # an audio key's shape
        ("recognizer-audio", "call-1/0/3", "call-1", False),  # a line key's shape
        # ids with the separators in them: only the exact shape after the exact id counts
        ("recognizer-lines", "a/1/0", "a", True),  # session a, channel 1, utterance 0
        ("recognizer-lines", "a/1/0/2", "a", False),  # session a/1's line
        ("recognizer-lines", "a/1/0/2", "a/1", True),
        ("segmenter-channels", "a#1#0", "a", False),  # session a#1's channel
        ("segmenter-channels", "a#1#0", "a#1", True),
        ("recognizer-lines", "a/1/2", "a/1/2", False),  # a line of "a", not session a/1/2
    ],
)
def test_is_session_key(table: str, key: str, session: str, belongs: bool) -> None:
    assert is_session_key(table, key, session) is belongs


def test_session_keys_take_the_latest_record_per_partition_and_key() -> None:
    recs = [
        (1, b'"s#0"', b"{}"),
        (1, b'"s#0"', None),  # deleted by the worker: not live
        (2, b'"s#0"', b"{}"),  # the same key on another partition: its own latest
        (1, b'"s#1"', None),
        (1, b'"s#1"', b"{}"),  # written again after a delete: live
        (1, b'"s1#0"', b"{}"),  # another session
        (1, b"not json", b"{}"),
        (1, b"42", b"{}"),  # JSON, not a string
        (1, None, b"{}"),
    ]
    got = {(k.partition, k.key): k.live for k in session_keys("segmenter-ended", recs, "s")}
    assert got == {(1, b'"s#0"'): False, (2, b'"s#0"'): True, (1, b'"s#1"'): True}


# -------------------------------------------------------------------------------- store
def _final(session: str, utterance: int, text: str) -> FinalTranscript:
    return FinalTranscript(
        session_id=session, channel=0, role="agent", utterance=utterance, revision=1,
        text=text, start_ms=1000.0 * utterance, end_ms=1000.0 * utterance + 900.0,
        timestamps={"captured_at_us": 1, "published_at_us": 5},
    )  # fmt: skip


def _partial(session: str, utterance: int) -> PartialTranscript:
    return PartialTranscript(
        session_id=session, channel=1, role="customer", utterance=utterance, revision=2,
        text="half a", start_ms=0.0, end_ms=400.0, stable_text="half",
    )  # fmt: skip


def test_store_forget_deletes_every_row_of_the_session_and_nothing_else() -> None:
    store = TranscriptStore("sqlite://", live_group="live")
    for sid in ("call-1", "call-10"):
        store.write([_final(sid, 0, "first words"), _final(sid, 1, "more"), _partial(sid, 0)])
    # a re-transcription of call-1's first line by another group: a latency_history row
    store.write(
        [
            dataclasses.replace(
                _final("call-1", 0, "first word"),
                origin="again",
                timestamps={"captured_at_us": 1, "published_at_us": 9},
            )
        ]
    )
    before = store.counts()
    assert before == {"sessions": 2, "channels": 4, "utterances": 4, "partials": 2, "latency": 4}
    removed = store.forget("call-1")
    assert removed == {
        "utterances": 2,
        "partials": 1,
        "latency": 2,
        "latency_history": 1,
        "channels": 2,
        "sessions": 1,
    }
    assert store.finals("call-1") == [] and store.partials("call-1") == []
    assert store.session("call-1") is None
    assert [r.final.text for r in store.finals("call-10")] == ["first words", "more"]
    assert [p.text for p in store.partials("call-10")] == ["half a"]
    assert store.counts() == {k: v - removed[k] for k, v in before.items()}
    assert store.latency_records(origin="history") == []
    assert store.forget("call-1") == dict.fromkeys(removed, 0)  # again: nothing left


@pytest.mark.parametrize(
    "module",
    [
        "streamscribe.schemas.topics",
        "streamscribe.consumers.forget",
        "streamscribe.consumers.store",
        "streamscribe.cli.forget",
    ],
)
def test_doctests(module: str) -> None:
    failures, tried = doctest.testmod(importlib.import_module(module))
    assert tried > 0 and failures == 0
