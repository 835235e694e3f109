"""The gateway's pure cores: protocol, session (chunks, order, completion), admission, flow."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from referencing import Registry, Resource

from streamscribe.core.errors import GatewayProtocolError
from streamscribe.producers.gateway.admission import (
    Admission,
    SessionHub,
    Tokens,
    bearer,
    origin_allowed,
    token_id,
)
from streamscribe.producers.gateway.flow import FlowPolicy
from streamscribe.producers.gateway.protocol import (
    CLOSE_GATEWAY_FULL,
    CLOSE_REASONS,
    CLOSE_SESSION_BUSY,
    CLOSE_TOKEN_LIMIT,
    EndMessage,
    Refusal,
    StartMessage,
    frame_bytes,
    parse_client_message,
)
from streamscribe.producers.gateway.session import GatewaySession
from streamscribe.schemas.audio import AudioChunk

MONO = StartMessage(16000, "pcm_s16le")


def _schemas() -> tuple[Registry, dict[str, Any]]:
    folder = resources.files("streamscribe.schemas").joinpath("json")
    docs = {
        p.name.removesuffix(".schema.json"): json.loads(p.read_text())
        for p in folder.iterdir()
        if p.name.endswith(".schema.json")
    }
    registry: Registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs.values()
    )
    return registry, docs


def validate(doc: dict[str, Any]) -> None:
    registry, docs = _schemas()
    schema = docs[f"gateway_{doc['type']}"]
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def transcript(kind: str, utt: int, rev: int, text: str = "x", ch: int = 0) -> dict[str, Any]:
    return {
        "session_id": "s1", "channel": ch, "role": "mic", "utterance": utt, "kind": kind,
        "revision": rev, "text": text, "stable_text": "", "start_ms": 0.0, "end_ms": 500.0,
        "confidence": 0.9, "error": None, "timestamps": {},
    }  # fmt: skip


# ------------------------------------------------------------------------- protocol
def test_start_defaults_and_frame_size() -> None:
    s = parse_client_message('{"type":"start","sample_rate":8000,"encoding":"pcm_mulaw",'
                             '"channels":2,"session_id":"call-7"}')  # fmt: skip
    assert isinstance(s, StartMessage)
    assert (s.sample_rate, s.encoding, s.channels, s.roles, s.session_id) == (
        8000, "pcm_mulaw", 2, ("agent", "customer"), "call-7",
    )  # fmt: skip
    assert frame_bytes(s) == 2
    assert isinstance(parse_client_message('{"type":"end"}'), EndMessage)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not a JSON object"),
        ('{"type":"hello"}', "unknown message type 'hello'"),
        ('{"type":"start","sample_rate":16000,"encoding":"pcm_f32le"}', "encoding"),
        ('{"type":"start","sample_rate":12345,"encoding":"pcm_s16le"}', "sample_rate"),
        ('{"type":"start","sample_rate":16000,"encoding":"pcm_s16le","channels":2,'
         '"roles":["a"]}', "1 roles for 2 channels"),
        ('{"type":"start","sample_rate":16000,"encoding":"pcm_s16le","resume_from":3}',
         "resume_from needs a session_id"),
        ('{"type":"start","sample_rate":16000,"encoding":"pcm_s16le","audio":"AAAA"}',
         "Additional properties"),
    ],
)  # fmt: skip
def test_bad_client_messages_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(GatewayProtocolError, match=needle) as info:
        parse_client_message(text)
    assert info.value.code == "bad_message"


def test_every_close_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "websocket.md").read_text()
    for code, reason in CLOSE_REASONS.items():
        assert f"| {code} | `{reason}` |" in doc


# -------------------------------------------------------------------------- session
def test_frames_become_contract_chunks_with_continuing_seq_and_position() -> None:
    s = GatewaySession("s1", MONO, token_id="t")
    a = s.frame(np.arange(1600, dtype="<i2").tobytes(), now_us=10)
    b = s.frame(np.arange(800, dtype="<i2").tobytes(), now_us=20)
    assert [(c.seq, c.position, c.n_samples, c.captured_at_us) for c in a + b] == [
        (0, 0, 1600, 10), (1, 1600, 800, 20),
    ]  # fmt: skip
    assert a[0].session_meta is not None and a[0].session_meta.source == "websocket"
    assert b[0].session_meta is None
    decoded = AudioChunk.decode(a[0].encode())
    assert decoded.payload == np.arange(1600, dtype="<i2").tobytes()
    assert decoded.key == b"s1"
    eos = s.finish(now_us=30)
    assert [(c.seq, c.position, c.n_samples, c.end_of_stream) for c in eos] == [(2, 2400, 0, True)]
    assert s.finish(now_us=40) == []
    assert s.audio_s == pytest.approx(0.15)


def test_stereo_frames_are_split_per_channel() -> None:
    s = GatewaySession("s2", StartMessage(8000, "pcm_s16le", channels=2,
                                          roles=("agent", "customer")), token_id="t")  # fmt: skip
    inter = np.array([[1, -1], [2, -2], [3, -3]], dtype="<i2")
    chunks = s.frame(inter.tobytes(), now_us=1)
    assert [(c.channel, c.role, c.n_samples) for c in chunks] == [
        (0, "agent", 3), (1, "customer", 3),
    ]  # fmt: skip
    assert np.frombuffer(chunks[1].payload, "<i2").tolist() == [-1, -2, -3]


@pytest.mark.parametrize("size", [0, 3, 1601])
def test_a_frame_of_the_wrong_size_is_rejected_and_the_session_goes_on(size: int) -> None:
    s = GatewaySession("s3", MONO, token_id="t")
    with pytest.raises(GatewayProtocolError) as info:
        s.frame(b"\x00" * size, now_us=1)
    assert info.value.code == "bad_frame"
    assert (s.seq, s.samples) == (0, 0)
    assert s.frame(b"\x00\x00" * 4, now_us=2)[0].seq == 0


def test_events_are_numbered_in_order_replays_dropped() -> None:
    s = GatewaySession("s1", MONO, token_id="t")
    sent = [
        s.transcript(transcript("partial", 0, 0)),
        s.transcript(transcript("partial", 0, 2)),
        s.transcript(transcript("partial", 0, 1)),  # older revision (a replay)
        s.transcript(transcript("final", 0, 3, "hello")),
        s.transcript(transcript("partial", 0, 4)),  # after the final
        s.transcript(transcript("final", 0, 3, "hello")),  # the final again (worker restart)
        s.transcript(transcript("final", 1, 0, "world")),
    ]
    assert [d["n"] if d else None for d in sent] == [1, 2, None, 3, None, None, 4]
    assert [d["event"]["text"] for d in s.log if d["event"]["kind"] == "final"] == [
        "hello", "world",
    ]  # fmt: skip
    for d in s.log:
        validate(d)


def test_complete_when_ended_every_channel_ended_and_every_spoken_utterance_final() -> None:
    s = GatewaySession("s1", MONO, token_id="t")
    s.frame(b"\x00\x00" * 160, now_us=1)
    s.session_event("speech_end", 0, 0)
    s.session_event("speech_end", 0, 1)
    s.transcript(transcript("final", 0, 0))
    assert not s.all_finals_in
    s.finish(now_us=2)
    s.session_event("session_end", 0, None)
    assert not s.all_finals_in  # utterance 1 has no final yet
    s.transcript(transcript("final", 1, 0))
    assert s.all_finals_in
    end = s.complete()
    assert end == {"type": "session_end", "session_id": "s1", "finals": 2, "complete": True,
                   "audio_s": 0.01, "n": 3}  # fmt: skip
    validate(end)
    assert s.complete() is None


# ------------------------------------------------------------------------ admission
def test_tokens_parse_check_and_bearer() -> None:
    t = Tokens.parse("alpha, beta", "# a comment\ngamma\n")
    assert t.tokens == ("alpha", "beta", "gamma")
    assert t.check("gamma") == token_id("gamma")
    assert [t.check(x) for x in (None, "", "alph", "alpha ", "ALPHA")] == [None] * 5
    assert Tokens().check(None) == "anonymous"
    assert bearer("Bearer abc", "q") == "abc"
    assert bearer("Basic abc", "q") == "q"
    assert bearer(None, None) is None


def test_origins() -> None:
    host = "127.0.0.1:8765"
    assert origin_allowed(None, host=host, allowed=())
    assert origin_allowed("http://127.0.0.1:8765", host=host, allowed=())
    assert not origin_allowed("http://127.0.0.1:9999", host=host, allowed=())
    assert origin_allowed("https://app.example", host=host, allowed=("https://app.example",))
    assert origin_allowed("https://any.example", host=host, allowed=("*",))


def test_hub_limits_resume_busy_and_no_reuse() -> None:
    hub = SessionHub(max_sessions=3, max_per_token=2, grace_s=5.0)
    a = hub.admit(StartMessage(16000, "pcm_s16le", session_id="a"), "t1")
    b = hub.admit(MONO, "t1")
    assert isinstance(a, Admission) and isinstance(b, Admission)
    assert a.session.session_id == "a" and b.session.session_id.startswith("ws-")
    assert hub.admit(MONO, "t1") == Refusal(CLOSE_TOKEN_LIMIT, "2 sessions for this token")
    assert isinstance(hub.admit(MONO, "t2"), Admission)
    assert hub.admit(MONO, "t3") == Refusal(CLOSE_GATEWAY_FULL, "3 sessions open")
    again = StartMessage(16000, "pcm_s16le", session_id="a", resume_from=0)
    assert isinstance(hub.admit(again, "t1"), Refusal)  # still attached
    assert hub.admit(again, "t1").code == CLOSE_SESSION_BUSY  # type: ignore[union-attr]
    hub.detach("a", now=100.0)
    assert hub.expired(now=104.9) == []
    resumed = hub.admit(again, "t1")
    assert isinstance(resumed, Admission) and resumed.resumed and resumed.session is a.session
    hub.detach("a", now=200.0)
    assert [s.session_id for s in hub.expired(now=205.0)] == ["a"]
    fresh = hub.admit(again, "t1")
    assert isinstance(fresh, Admission) and not fresh.resumed
    assert fresh.session.session_id.startswith("a-")  # a finished id is never reused


# ----------------------------------------------------------------------------- flow
def test_flow_steps_up_under_load_and_down_when_idle() -> None:
    f = FlowPolicy(start_ms=100, high_ms=1500, low_ms=600, patience=2)
    assert [f.observe(x) for x in (3000, 3000, 3000, 3000)] == [None, 200, None, 400]
    assert [f.observe(x) for x in (3000, 3000)] == [None, None]  # the top level
    changes = [f.observe(100) for _ in range(12)]
    assert [c for c in changes if c is not None] == [200, 100, 50]
    assert f.chunk_ms == 50
    validate({"type": "flow", "chunk_ms": 200, "reason": "latency_high", "latency_ms": 1.0})


def test_gateway_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamscribe import cli

    monkeypatch.delenv("STREAMSCRIBE_GATEWAY_TOKENS", raising=False)
    assert cli.main(["gateway", "--port", "0"]) == 2
    assert capsys.readouterr().err == (
        "streamscribe gateway: error: no token configured: set STREAMSCRIBE_GATEWAY_TOKENS or "
        "--tokens-file (or --insecure-no-auth to accept anyone)\n"
    )


def test_the_docstring_examples_run() -> None:
    import doctest

    from streamscribe.producers.gateway import admission, flow, protocol, session

    for module in (protocol, session, admission, flow):
        failures, tried = doctest.testmod(module)
        assert (failures, tried > 0) == (0, True), module.__name__
