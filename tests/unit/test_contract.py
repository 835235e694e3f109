"""The contract: codecs round-trip, garbage raises ContractError with the raw bytes,
version N reads N+1 (appended optional field) and N+1 reads N."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamscribe.core.errors import ContractError
from streamscribe.schemas.audio import AUDIO_CHUNK_TYPE, AudioChunk, SessionMeta
from streamscribe.schemas.avro_codec import AvroType
from streamscribe.schemas.events import Alert, DeadLetter, LatencyRecord, SessionEvent
from streamscribe.schemas.pcm import (
    decode_payload,
    decode_to_pcm16,
    encode_payload,
    mulaw_decode,
    mulaw_encode,
)
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import (
    FinalTranscript,
    PartialTranscript,
    decode_transcript,
)
from streamscribe.schemas.utterances import UTTERANCE_TYPE, UtteranceMessage

AVRO_DIR = Path(__file__).resolve().parents[2] / "schemas" / "avro"


def _chunk(**kw: object) -> AudioChunk:
    base: dict[str, object] = dict(
        session_id="call-1",
        channel=1,
        role="customer",
        seq=7,
        position=5600,
        n_samples=800,
        sample_rate=8000,
        encoding="pcm_mulaw",
        captured_at_us=1_700_000_000_000_000,
        payload=bytes(range(256)) * 3 + bytes(32),
    )
    base.update(kw)
    return AudioChunk(**base)  # type: ignore[arg-type]


def test_audio_chunk_round_trip_keeps_raw_payload() -> None:
    meta = SessionMeta(source="a.wav", call_id="c9", channels=2, roles=("agent", "customer"))
    c = _chunk(session_meta=meta, end_of_stream=True)
    data = c.encode()
    assert AudioChunk.decode(data) == c
    assert c.payload in data  # raw bytes: no hex, base64 or JSON arrays
    assert len(data) < len(c.payload) + 120
    assert c.key == b"call-1"


def test_summary_has_payload_bytes_and_sha() -> None:
    s = _chunk().summary()
    assert s["payload_bytes"] == 800
    assert len(s["payload_sha256"]) == 64 and "payload" not in s


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00", b'{"json": 1}', bytes([0xA5, 1, 1]) + b"\xff" * 3, bytes([0xA5, 2, 1, 0])],
)
def test_garbage_raises_contract_error_with_raw_bytes(garbage: bytes) -> None:
    with pytest.raises(ContractError) as err:
        AudioChunk.decode(garbage)
    assert err.value.raw == garbage
    assert err.value.reason


def test_trailing_bytes_of_same_version_are_rejected() -> None:
    with pytest.raises(ContractError, match="trailing"):
        AudioChunk.decode(_chunk().encode() + b"xx")


def _v3_type(tmp_path: Path) -> AvroType:
    """A hypothetical next version of the audio chunk: one more field appended at the end."""
    schema = json.loads((AVRO_DIR / "audio_chunk.v2.avsc").read_text())
    schema["fields"].append({"name": "gain_db", "type": ["null", "float"], "default": None})
    path = tmp_path / "audio_chunk.v3.avsc"
    path.write_text(json.dumps(schema))
    return AvroType(
        "AudioChunk", 1, {1: "audio_chunk.v1.avsc", 2: "audio_chunk.v2.avsc", 3: str(path)}
    )


def test_reader_v2_reads_v3_with_appended_optional_field(tmp_path: Path) -> None:
    v3 = _v3_type(tmp_path)
    c = _chunk()
    rec = {**c.__dict__, "session_meta": None, "gain_db": -3.5, "schema_version": 3}
    data = v3.encode(rec)
    assert data[2] == 3
    decoded = AudioChunk.decode(data)  # the current reader is v2
    assert decoded.payload == c.payload and decoded.seq == c.seq and decoded.schema_version == 3


def test_reader_v3_reads_v2(tmp_path: Path) -> None:
    v3 = _v3_type(tmp_path)
    rec = v3.decode(_chunk().encode())
    assert rec["gain_db"] is None and rec["seq"] == 7
    assert AUDIO_CHUNK_TYPE.current == 2


def test_session_meta_live_v2_and_v1_both_ways() -> None:
    """v2 appends ``live`` to the session metadata (the chunk's last field): a v1 chunk
    reads as live, and a v1 reader reads a v2 chunk, metadata included."""
    import dataclasses

    meta = SessionMeta(source="call.wav", channels=2, roles=("agent", "customer"), live=False)
    c = dataclasses.replace(_chunk(), session_meta=meta)
    back = AudioChunk.decode(c.encode())
    assert back.session_meta == meta and back.session_meta.live is False
    v1 = AvroType("AudioChunk", 1, {1: "audio_chunk.v1.avsc"})
    rec = v1.decode(c.encode())  # an old reader ignores the appended field
    assert rec["session_meta"]["roles"] == ["agent", "customer"]
    assert "live" not in rec["session_meta"] and rec["payload"] == c.payload
    rec.pop("schema_version")
    old = AudioChunk.decode(v1.encode({**rec, "schema_version": 1}))
    assert old.session_meta is not None and old.session_meta.live is True
    assert old.schema_version == 1 and old.session_meta.roles == meta.roles


def test_utterance_message_round_trip() -> None:
    m = UtteranceMessage(
        session_id="s",
        channel=0,
        role="agent",
        utterance=2,
        kind="final",
        part=3,
        start_sample=16000,
        offset_sample=40000,
        end_sample=48000,
        payload=b"\x01\x00" * 8000,
        reason="silence",
        summary_json='{"duration_s": 2.0}',
        decided_at_us=5,
    )
    assert UtteranceMessage.decode(m.encode()) == m
    assert m.line_id == "s/0/2" and m.summary == {"duration_s": 2.0}
    with pytest.raises(ContractError):
        UtteranceMessage.decode(_chunk().encode())  # wrong type id


def test_transcripts_are_distinct_types_and_validate() -> None:
    p = PartialTranscript(
        session_id="s",
        channel=0,
        role="agent",
        utterance=0,
        revision=1,
        text="it was the",
        stable_text="it was",
        start_ms=0,
        end_ms=500,
        timestamps={"captured_at_us": 1},
    )
    f = FinalTranscript(
        session_id="s",
        channel=0,
        role="agent",
        utterance=0,
        revision=2,
        text="it was the best",
        start_ms=0,
        end_ms=900,
        confidence=0.8,
        reason="silence",
    )
    dp, df = decode_transcript(p.encode()), decode_transcript(f.encode())
    assert isinstance(dp, PartialTranscript) and dp == p
    assert isinstance(df, FinalTranscript) and df == f
    doc = json.loads(f.encode())
    assert doc["kind"] == "final" and doc["line_id"] == "s/0/0" and doc["error"] is None
    bad = json.dumps({**doc, "confidence": 3}).encode()
    with pytest.raises(ContractError, match="confidence"):
        decode_transcript(bad)
    with pytest.raises(ContractError) as err:
        decode_transcript(b"\xff")
    assert err.value.raw == b"\xff"


def test_side_types_round_trip() -> None:
    ev = SessionEvent(
        session_id="s", channel=1, kind="gap", at_ms=1200.0, details={"missing_samples": 800}
    )
    assert SessionEvent.decode(ev.encode()) == ev
    dl = DeadLetter.from_raw(
        b"\x00\xff",
        reason="bad",
        stage="segmenter",
        source_topic="x.audio",
        partition=2,
        offset=9,
        key=b"s",
    )
    back = DeadLetter.decode(dl.encode())
    assert back.raw == b"\x00\xff" and back.source_offset == 9 and back.key == "s"
    lr = LatencyRecord(
        session_id="s", channel=0, utterance=1, stages_ms={"decode": 10.5}, end_to_end_ms=10.5
    )
    assert LatencyRecord.decode(lr.encode()) == lr
    al = Alert(
        session_id="s",
        channel=0,
        role="agent",
        utterance=1,
        phrase="refund",
        text="I want a refund",
        start_ms=1.0,
    )
    assert Alert.decode(al.encode()) == al
    with pytest.raises(ContractError):
        SessionEvent.decode(json.dumps({"session_id": "s", "kind": "nope"}).encode())


def test_topics_names_and_partitions() -> None:
    t = Topics("streamscribe.")
    names = t.all_names()
    assert names == [
        "streamscribe.audio",
        "streamscribe.utterances",
        "streamscribe.transcripts",
        "streamscribe.events",
        "streamscribe.deadletter",
        "streamscribe.alerts",
        "streamscribe.commands",
    ]
    assert {s.partitions for s in t.specs(6)} == {6}  # co-partitioned
    assert Topics("p.").kind_of("p.audio") == "audio"


def test_pcm_encodings() -> None:
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 4000, dtype=np.int16)
    assert np.array_equal(decode_to_pcm16(encode_payload(pcm, "pcm_s16le"), "pcm_s16le"), pcm)
    # µ-law: every code survives decode -> encode (except the negative zero 0x7F)
    codes = bytes(range(256))
    again = mulaw_encode(mulaw_decode(codes))
    assert [i for i in range(256) if again[i] != codes[i]] == [0x7F]
    # µ-law error is within the quantisation step of its segment
    err = np.abs(mulaw_decode(mulaw_encode(pcm)).astype(int) - pcm.astype(int))
    assert err.max() <= 1024
    f = encode_payload(np.array([0.5, np.nan], dtype=np.float32), "pcm_f32le")
    assert np.isnan(decode_payload(f, "pcm_f32le")[1])
    with pytest.raises(ContractError):
        decode_payload(b"\x00\x00\x00", "pcm_s16le")
    with pytest.raises(ContractError):
        decode_payload(b"\x00\x00", "opus")


def test_utterance_v2_reads_v1_and_v1_reads_v2() -> None:
    import dataclasses

    m = UtteranceMessage(
        session_id="s",
        channel=0,
        role="agent",
        utterance=0,
        kind="update",
        part=0,
        start_sample=0,
        offset_sample=0,
        end_sample=2,
        payload=b"\x01\x00\x02\x00",
        origin="g1",
    )
    data = m.encode()
    assert data[2] == UTTERANCE_TYPE.current and UtteranceMessage.decode(data).origin == "g1"
    v1 = AvroType("UtteranceMessage", 2, {1: "utterance.v1.avsc"})
    assert v1.decode(data)["payload"] == m.payload  # an old reader ignores the new fields
    rec = dataclasses.asdict(m)
    rec.pop("origin")
    old = v1.encode({**rec, "schema_version": 1})
    back = UtteranceMessage.decode(old)
    assert back.origin is None and back.schema_version == 1 and back.payload == m.payload


def test_utterance_v4_live_defaults_true_and_v3_reads_v4() -> None:
    import dataclasses

    m = UtteranceMessage("s", 0, "agent", 0, "final", 1, 0, 2, 4, b"\x01\x00" * 2)
    replay = dataclasses.replace(m, live=False)
    assert UtteranceMessage.decode(replay.encode()).live is False
    assert UtteranceMessage.decode(m.encode()).live is True
    v3 = AvroType(
        "UtteranceMessage",
        2,
        {1: "utterance.v1.avsc", 2: "utterance.v2.avsc", 3: "utterance.v3.avsc"},
    )
    rec = v3.decode(replay.encode())  # a v3 reader ignores the appended field
    assert rec["payload"] == m.payload and "live" not in rec
    rec.pop("schema_version")
    back = UtteranceMessage.decode(v3.encode({**rec, "schema_version": 3}))
    assert back.live is True and back.schema_version == 3 and back.end_candidate is False


def test_utterance_v3_end_candidate_defaults_false_and_v2_reads_v3() -> None:
    import dataclasses

    m = UtteranceMessage("s", 0, "agent", 0, "update", 1, 0, 2, 4, b"\x01\x00" * 2)
    flagged = dataclasses.replace(m, end_candidate=True)
    assert UtteranceMessage.decode(flagged.encode()).end_candidate is True
    assert UtteranceMessage.decode(m.encode()).end_candidate is False
    assert UtteranceMessage.decode(flagged.encode()).summary_view()["end_candidate"] is True
    v2 = AvroType("UtteranceMessage", 2, {1: "utterance.v1.avsc", 2: "utterance.v2.avsc"})
    rec = v2.decode(flagged.encode())  # a v2 reader ignores the appended field
    assert rec["payload"] == m.payload and "end_candidate" not in rec
    rec.pop("schema_version")
    old = v2.encode({**rec, "schema_version": 2})
    back = UtteranceMessage.decode(old)
    assert back.end_candidate is False and back.schema_version == 2 and back.origin is None
