"""Sink decoding and dead letters, alert matching, and the CLI glue (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamscribe.cli import main
from streamscribe.consumers.alerts import PhraseMatcher, alerts_for, load_phrases, normalize
from streamscribe.consumers.sink import decode_batch
from streamscribe.consumers.store import TranscriptStore
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript


class FakeMessage:
    def __init__(self, value: bytes | None, partition: int, offset: int, key: bytes = b"s1"):
        self._v, self._p, self._o, self._k = value, partition, offset, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "p.transcripts"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes | None:
        return self._v


def fin(u: int, text: str = "hello", session: str = "s1") -> FinalTranscript:
    return FinalTranscript(
        session_id=session, channel=1, role="customer", utterance=u, revision=1, text=text,
        start_ms=1000.0 * u, end_ms=1000.0 * u + 900, confidence=0.7,
    )  # fmt: skip


def test_decode_batch_dead_letters_and_offsets() -> None:
    part = PartialTranscript(
        session_id="s1", channel=0, role="agent", utterance=0, revision=2, text="he",
        start_ms=0.0, end_ms=1.0, stable_text="h",
    )  # fmt: skip
    msgs = [
        FakeMessage(fin(0).encode(), 0, 10),
        FakeMessage(b"\xff\xfe", 0, 11),
        FakeMessage(part.encode(), 2, 5),
        FakeMessage(None, 2, 6, key=b"s9"),
        FakeMessage(b'{"kind": "final"}', 1, 0),
        FakeMessage(fin(1).encode(), 0, 12),
    ]
    batch = decode_batch(msgs)
    assert batch.events == [fin(0), part, fin(1)]
    assert batch.offsets == {
        ("p.transcripts", 0): 13,
        ("p.transcripts", 1): 1,
        ("p.transcripts", 2): 7,
    }
    dls = batch.dead_letters
    assert [(d.source_partition, d.source_offset, d.stage, d.error_type) for d in dls] == [
        (0, 11, "sink", "ContractError"),
        (2, 6, "sink", "ContractError"),
        (1, 0, "sink", "ContractError"),
    ]
    assert dls[0].raw == b"\xff\xfe" and dls[0].source_topic == "p.transcripts"
    assert "not JSON" in dls[0].reason
    assert dls[1].key == "s9" and "tombstone" in dls[1].reason
    assert "required property" in dls[2].reason
    assert [tp.offset for tp in batch.topic_partitions()] == [13, 1, 7]


def test_phrase_matching_is_case_punctuation_and_boundary_aware() -> None:
    m = PhraseMatcher(["Cancel my subscription", "manager", "don't", "  ", "MANAGER"])
    assert m.phrases == ["Cancel my subscription", "manager", "don't"]
    assert m.find("I want to CANCEL... my subscription, now!") == ["Cancel my subscription"]
    assert m.find("get me your Manager.") == ["manager"]
    assert m.find("the management and managers") == []
    assert m.find("I DON'T think so") == ["don't"]
    assert m.find("cancel my subscriptions") == []
    assert normalize("Ça   va?") == "ça va"
    alerts = alerts_for(fin(3, "Manager please, cancel my subscription"), m)
    assert [(a.phrase, a.utterance, a.role, a.start_ms) for a in alerts] == [
        ("Cancel my subscription", 3, "customer", 3000.0),
        ("manager", 3, "customer", 3000.0),
    ]
    with pytest.raises(ValueError):
        PhraseMatcher([" ", ""])


def test_load_phrases(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("# escalation\nspeak to a manager\n\n  refund \n")
    assert load_phrases("a, b,,", f) == ["a", "b", "speak to a manager", "refund"]


def run_cli(argv: list[str]) -> int:
    """One ``streamscribe`` command in this process, through the CLI's one error wrapper."""
    return main(argv)


def test_cli_reads_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = TranscriptStore(url)
    store.write([fin(1, "second"), fin(0, "first")], stored_at_us=1_700_000_000_000_000)
    store.close()
    assert run_cli(["transcript", "s1", "--db", url]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "[00:00] customer: first",
        "[00:01] customer: second",
    ]
    assert run_cli(["transcript", "s1", "--db", url, "--format", "srt"]) == 0
    assert capsys.readouterr().out.startswith("1\n00:00:00,000 --> 00:00:00,900\ncustomer: first")
    assert run_cli(["sessions", "--db", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["s1", "customer", "2", "1.9s", "2023-11-14T22:13:20+00:00"]
    assert run_cli(["latency-report", "--db", url, "--since", "1h"]) == 0
    assert "latency of 0 finals" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcript", "nope"], "streamscribe transcript: error: unknown session 'nope'"),
        (["sessions", "--db", "sqlite:////nonexistent-xyz/a.db"], "no transcript database"),
        (["sessions", "--db", "oracle://x"], "unsupported database 'oracle'"),
        (["latency-report", "--since", "soon"], "neither an ISO time nor a duration"),
        (["latency-report", "--sla-stage", "nope"], "--sla-stage must be one of"),
        (["alerts", "--phrases", " , "], "no phrases"),
        (["alerts", "--phrases-file", "/nonexistent-xyz"], "cannot read phrases file"),
        (["metrics", "--window", "0"], "window must be positive"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    TranscriptStore(url).close()
    if argv[0] in {"transcript", "latency-report"}:
        argv = [*argv, "--db", url]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
