"""The conversation view: merge by stream time, talk/overtalk/silence arithmetic, formats."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from streamscribe.consumers.conversation import (
    Conversation,
    list_sessions,
    load_conversation,
    talk_stats,
    union_length,
)
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.errors import SinkError
from streamscribe.schemas.transcripts import FinalTranscript

ROLES = ("agent", "customer")
#: A stereo call: the agent speaks 0-7 s, the customer 7.5-50 s in three utterances.
CALL = [
    (1, 2, 36_000.0, 50_000.0, "and please send me the new contract"),
    (0, 0, 0.0, 7_000.0, "thank you for calling how can i help"),
    (1, 0, 7_500.0, 20_000.0, "hi i would like to change my plan"),
    (1, 1, 21_000.0, 35_000.0, "the cheaper one with more data"),
]


def fin(
    ch: int, u: int, start: float, end: float, text: str, session: str = "call"
) -> FinalTranscript:
    return FinalTranscript(
        session_id=session,
        channel=ch,
        role=ROLES[ch],
        utterance=u,
        revision=1,
        text=text,
        start_ms=start,
        end_ms=end,
        confidence=0.8,
    )


def call_finals(session: str = "call") -> list[FinalTranscript]:
    return [fin(*row, session=session) for row in CALL]


def test_stereo_call_is_merged_by_stream_time() -> None:
    conv = Conversation.from_finals("call", call_finals())
    assert conv.to_text() == (
        "[00:00] agent: thank you for calling how can i help\n"
        "[00:07] customer: hi i would like to change my plan\n"
        "[00:21] customer: the cheaper one with more data\n"
        "[00:36] customer: and please send me the new contract"
    )
    assert [(ln.channel, ln.utterance, ln.role) for ln in conv.lines] == [
        (0, 0, "agent"),
        (1, 0, "customer"),
        (1, 1, "customer"),
        (1, 2, "customer"),
    ]


def test_stereo_call_talk_overtalk_silence_exact() -> None:
    st = Conversation.from_finals("call", call_finals()).stats()
    assert st.talk_ms == {0: 7_000.0, 1: 12_500.0 + 14_000.0 + 14_000.0}
    assert st.overtalk_ms == 0.0
    assert st.silence_ms == 500.0 + 1_000.0 + 1_000.0
    assert st.span_ms == 50_000.0
    assert sum(st.talk_ms.values()) - st.overtalk_ms == st.span_ms - st.silence_ms


def test_overtalk_and_silence_with_overlaps() -> None:
    st = talk_stats(
        {
            0: [(0.0, 10_000.0), (11_000.0, 15_000.0), (2_000.0, 3_000.0)],  # self-overlap
            1: [(8_000.0, 12_000.0), (20_000.0, 21_000.0)],
        }
    )
    assert st.talk_ms == {0: 14_000.0, 1: 5_000.0}
    assert st.overtalk_ms == 2_000.0 + 1_000.0
    assert st.silence_ms == 5_000.0
    assert st.span_ms == 21_000.0


def test_leading_silence_counts_from_stream_start() -> None:
    st = talk_stats({0: [(3_000.0, 4_000.0)]})
    assert (st.silence_ms, st.talk_ms, st.span_ms) == (3_000.0, {0: 1_000.0}, 4_000.0)
    assert union_length([(0, 5), (3, 8), (10, 12), (9, 9)]) == 10.0


def test_srt_format() -> None:
    conv = Conversation.from_finals("call", call_finals()[:2])
    assert conv.to_srt() == (
        "1\n00:00:00,000 --> 00:00:07,000\nagent: thank you for calling how can i help\n"
        "\n"
        "2\n00:00:36,000 --> 00:00:50,000\ncustomer: and please send me the new contract\n"
    )
    long = Conversation.from_finals("c", [fin(0, 0, 3_723_456.4, 3_725_000.0, "late")])
    assert long.to_srt().splitlines()[1] == "01:02:03,456 --> 01:02:05,000"
    assert long.to_text() == "[62:03] agent: late"


def test_json_format_and_error_lines() -> None:
    failed = replace(fin(0, 1, 51_000.0, 52_000.0, ""), error="asr_failed", confidence=None)
    finals = [*call_finals(), failed]
    conv = Conversation.from_finals("call", finals)
    doc = json.loads(conv.render("json"))
    assert doc["session_id"] == "call"
    assert [ln["start_ms"] for ln in doc["lines"]] == [0.0, 7_500.0, 21_000.0, 36_000.0, 51_000.0]
    assert doc["talk_ms"] == {"0": 8_000.0, "1": 40_500.0}
    assert (doc["overtalk_ms"], doc["silence_ms"], doc["span_ms"]) == (0.0, 3_500.0, 52_000.0)
    assert conv.to_text().splitlines()[-1] == "[00:51] agent: [asr_failed]"
    assert conv.render("text").splitlines()[-1] == (
        "# talk: agent 8.0 s, customer 40.5 s; overtalk 0.0 s; silence 3.5 s; span 52.0 s"
    )
    with pytest.raises(ValueError, match="unknown format"):
        conv.render("html")


def test_load_from_store_and_unknown_session(tmp_path: Path) -> None:
    store = TranscriptStore(f"sqlite:///{tmp_path / 'c.db'}")
    store.write(list(reversed(call_finals())) + call_finals()[:1], stored_at_us=1)
    store.write(call_finals("other")[:1], stored_at_us=2)
    conv = load_conversation(store, "call")
    assert [ln.start_ms for ln in conv.lines] == [0.0, 7_500.0, 21_000.0, 36_000.0]
    assert [s.session_id for s in list_sessions(store, 10)] == ["other", "call"]
    with pytest.raises(SinkError, match="unknown session 'nope'"):
        load_conversation(store, "nope")
    store.close()
