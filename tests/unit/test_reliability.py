"""Hostile inputs of issue 13 on the pure cores (and the agent through a stand-in app):
each test fails on the code before its fix.

1. a dead letter is always sendable and its path never raises;
2. a forged position costs O(1): gaps are bounded, contradicting positions are rejected;
3. chunks after end of stream, and a reused session id, are refused (never a second run);
4. a sample-rate change rejects each changed chunk once and keeps the audio before it;
5. a batch's outputs are delivered before any state of it is written (crash inside a batch).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from streamscribe.core.errors import ContractError, ValidationError
from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import StageTopics, send_dead_letter
from streamscribe.processors.reassembly import Chunk, Gap, JitterBuffer, JitterConfig
from streamscribe.processors.segmenter_agent import SegmenterStage
from streamscribe.processors.segmenter_sessions import expired_markers, parse_arrival
from streamscribe.processors.stream_segmenter import (
    Arrival,
    ChannelBatch,
    ChannelKey,
    ChannelResult,
    ChannelState,
    EndedChannel,
    StreamSegmenter,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.events import DEAD_LETTER_MAX_RAW_BYTES, DeadLetter
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.utterances import UtteranceMessage
from tests.audio_files import beckett_arrivals

HOUR_16K = 3600 * 16000
CHUNK = 1600  # beckett.wav as the producer cuts it: 100 ms at 16 kHz
BECKETT_UTTERANCES = 6


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def _with_offsets(arrivals: list[Arrival], first: int = 0) -> list[Arrival]:
    return [dataclasses.replace(a, offset=first + i) for i, a in enumerate(arrivals)]


def _finals(res: ChannelResult) -> list[UtteranceMessage]:
    return [m for m, _ in res.utterances if m.kind == "final"]


# ------------------------------------------------------------------ 1. dead letters


class _LimitedTopic:
    """A topic that refuses what a producer with ``max.request.size`` would refuse."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[bytes] = []

    async def send(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        if len(key) + len(value) > self.limit:
            raise RuntimeError(f"message of {len(value)} bytes over the request limit")
        self.sent.append(value)


class _BrokenTopic:
    async def send(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        raise RuntimeError("broker gone")


@dataclasses.dataclass
class _Message:
    value: bytes
    key: bytes | None
    partition: int
    offset: int
    topic: str = "t.audio"
    timestamp: float | None = None


class _Event:
    def __init__(self, message: _Message) -> None:
        self.message = message


def _topics(deadletter: Any) -> StageTopics:
    return StageTopics(Topics("t."), *(None,) * 4, deadletter)  # type: ignore[arg-type]


def test_a_60_second_chunk_gets_a_sendable_dead_letter_that_references_the_source() -> None:
    raw = bytes(range(256)) * 7500  # 1.92 MB: a 60 s chunk, over max_payload_bytes
    topic = _LimitedTopic(1_000_000)  # the default producer request limit
    ev = _Event(_Message(raw, b"big-session", partition=2, offset=77))
    sent = asyncio.run(
        send_dead_letter(_topics(topic), ev, stage="segmenter", reason="too big", error_type="X")
    )
    assert sent is True and len(topic.sent) == 1
    dl = DeadLetter.decode(topic.sent[0])
    assert (dl.source_partition, dl.source_offset, dl.key) == (2, 77, "big-session")
    assert dl.raw_truncated is True and dl.raw_size == 1_920_000
    assert dl.raw == raw[:DEAD_LETTER_MAX_RAW_BYTES] and len(dl.raw) == 262_144
    assert dl.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert len(topic.sent[0]) < 400_000 and dl.schema_version == 2


def test_the_dead_letter_path_never_raises_even_when_sending_fails() -> None:
    ev = _Event(_Message(b"\xff" * 10, b"s", partition=0, offset=5))
    sent = asyncio.run(
        send_dead_letter(
            _topics(_BrokenTopic()), ev, stage="segmenter", reason="bad", error_type="X"
        )
    )
    assert sent is False


def test_a_small_dead_letter_keeps_its_raw_bytes_whole() -> None:
    dl = DeadLetter.from_raw(
        b"\x01\x02", reason="r", stage="s", source_topic="t", partition=0, offset=1
    )
    assert (dl.raw, dl.raw_truncated, dl.raw_size) == (b"\x01\x02", False, 2)


def test_a_10000_character_key_and_reason_are_cut() -> None:
    dl = DeadLetter.from_raw(
        b"",
        reason="x" * 20_000,
        stage="s",
        source_topic="t",
        partition=0,
        offset=1,
        key=b"k" * 10_000,
    )
    assert dl.key is not None and dl.key.endswith("... (10000 characters)")
    assert len(dl.key) == 1024 + len("... (10000 characters)")
    assert dl.reason.endswith("... (20000 characters)")


# ------------------------------------------------------------------ 2. gaps


def _chunk(seq: int, position: int, n: int = CHUNK) -> Chunk:
    return Chunk(seq, position, n, 16000, bytes(2 * n))


def test_a_position_six_hours_ahead_with_one_seq_missing_is_rejected() -> None:
    jb = JitterBuffer()
    assert [type(i) for i in jb.push(_chunk(0, 0))] == [Chunk]
    with pytest.raises(ValidationError, match="contradicts the seq order") as err:
        jb.push(_chunk(2, 2 * CHUNK + 6 * HOUR_16K))
    assert "more than its 1 missing chunk(s) can hold (1048576)" in err.value.reason
    assert (jb.next_seq, jb.next_position, jb.held, jb.counters.contradicting) == (1, CHUNK, 0, 1)
    assert jb.counters.chunks_in == 1
    # the true chunks go on as if the forged one never came
    assert [i.seq for i in jb.push(_chunk(1, CHUNK)) if isinstance(i, Chunk)] == [1]


def test_a_position_before_the_stream_position_is_rejected() -> None:
    jb = JitterBuffer()
    jb.push(_chunk(0, 0))
    jb.push(_chunk(1, CHUNK))
    with pytest.raises(ValidationError, match="starts 1600 samples before the stream position"):
        jb.push(_chunk(3, CHUNK))


def test_a_long_gap_inserts_at_most_max_gap_ms_of_silence_and_reports_the_rest() -> None:
    jb = JitterBuffer(JitterConfig(max_gap_ms=10_000))
    jb.push(_chunk(0, 0))
    jump = 60 * 16000  # 60 s: three missing chunks could hold it
    out = jb.push(_chunk(4, CHUNK + jump))
    (gap,) = [i for i in out if isinstance(i, Gap)]
    assert (gap.position, gap.n_samples, gap.declared_samples) == (CHUNK, 160_000, jump)
    assert (gap.first_missing_seq, gap.missing_count) == (1, 3)
    c = jb.counters.to_dict()
    assert (c["gaps"], c["gap_samples"], c["gaps_capped"], c["gap_samples_skipped"]) == (
        1,
        160_000,
        1,
        jump - 160_000,
    )


def test_the_core_fills_a_one_hour_jump_with_ten_seconds_and_rejects_a_forged_one(
    vad: SileroVad,
) -> None:
    """Before: the stream clock advanced by the whole jump, sample by sample."""
    core = StreamSegmenter(vad, clock=lambda: 0)
    arrivals = _with_offsets(beckett_arrivals("g"))
    key = ChannelKey("g", 0)
    c30 = arrivals[30].chunk  # an extra chunk: one seq skipped, an hour ahead
    forged = dataclasses.replace(
        arrivals[30],
        chunk=dataclasses.replace(c30, seq=31, position=c30.position + HOUR_16K),
        ref="forged",
    )
    shifted = []  # then a real hole: 41..45 lost, the positions after it 9 chunks further
    for a in arrivals:
        if 41 <= a.chunk.seq <= 45:
            continue
        if a.chunk.seq > 45:
            a = dataclasses.replace(
                a, chunk=dataclasses.replace(a.chunk, position=a.chunk.position + 9 * CHUNK)
            )
        shifted.append(a)
    batch = [*shifted[:30], forged, *shifted[30:]]
    (res,) = core.process([ChannelBatch(key, None, batch)])
    assert [(ref, type(e).__name__) for ref, e in res.rejected] == [("forged", "ValidationError")]
    gaps = [e for e, _ in res.events if e.kind == "gap"]
    # 5 chunks lost and 9 chunks' worth of positions skipped: 14 chunks = 1.4 s, under 10 s
    assert [g.details["samples_16k"] for g in gaps] == [14 * CHUNK]
    end = next(e for e, _ in res.events if e.kind == "session_end")
    assert end.details["contradicting"] == 1 and end.details["gaps"] == 1
    assert len(_finals(res)) == BECKETT_UTTERANCES
    total = sum(a.chunk.n_samples for a in shifted)
    assert end.at_ms == pytest.approx((total + 14 * CHUNK) / 16, abs=1e-6)


def test_the_core_bounds_a_jump_its_missing_chunks_could_hold(vad: SileroVad) -> None:
    core = StreamSegmenter(vad, clock=lambda: 0)
    arrivals = _with_offsets(beckett_arrivals("h"))
    jump = 60 * 16000  # 60 s after seq 40, with 2 chunks missing: allowed, but capped
    kept = [a for a in arrivals if a.chunk.seq not in (41, 42)]
    moved = [
        a
        if a.chunk.seq <= 40
        else dataclasses.replace(
            a, chunk=dataclasses.replace(a.chunk, position=a.chunk.position + jump)
        )
        for a in kept
    ]
    (res,) = core.process([ChannelBatch(ChannelKey("h", 0), None, moved)])
    assert res.rejected == []
    (gap,) = [e for e, _ in res.events if e.kind == "gap"]
    assert gap.details["samples_16k"] == 160_000
    assert gap.details["skipped_source_samples"] == 2 * CHUNK + jump - 160_000
    end = next(e for e, _ in res.events if e.kind == "session_end")
    total = sum(a.chunk.n_samples for a in kept)
    assert end.at_ms == pytest.approx((total + 160_000) / 16, abs=1e-6)


# ------------------------------------------------------------------ 3. after the end


def _run_to_end(core: StreamSegmenter, session: str) -> tuple[ChannelResult, list[Arrival]]:
    arrivals = _with_offsets(beckett_arrivals(session))
    (res,) = core.process([ChannelBatch(ChannelKey(session, 0), None, arrivals)])
    assert res.ended and res.end_marker is not None
    return res, arrivals


def test_the_end_marker_holds_the_offset_of_the_end_of_stream(vad: SileroVad) -> None:
    core = StreamSegmenter(vad, clock=lambda: 5_000_000)
    res, _ = _run_to_end(core, "e")
    assert res.end_marker == EndedChannel(99, "session_end", 5.0, last_seq=99, last_captured_us=0)
    assert len(_finals(res)) == BECKETT_UTTERANCES


def test_a_reused_session_id_is_refused_and_a_replay_dropped_silently(vad: SileroVad) -> None:
    """Before: the second stream started at utterance 0 and overwrote the first one's."""
    core = StreamSegmenter(vad, clock=lambda: 0)
    res, arrivals = _run_to_end(core, "r")
    marker = EndedChannel.from_doc(res.end_marker.to_doc())  # type: ignore[union-attr]
    replay = arrivals[-20:]  # a crash replays the end of the stream
    again = [  # a new recording under the same id: captured later
        dataclasses.replace(a, chunk=dataclasses.replace(a.chunk, captured_at_us=10**15 + i))
        for i, a in enumerate(_with_offsets(beckett_arrivals("r"), first=len(arrivals) + 10))
    ]
    (res2,) = core.process([ChannelBatch(ChannelKey("r", 0), marker, replay + again)])
    assert res2.replayed == 20 and res2.utterances == [] and res2.events == []
    assert len(res2.rejected) == len(again) == 100
    assert [ref for ref, _ in res2.rejected] == [a.ref for a in again]
    reason = res2.rejected[0][1].reason
    assert reason == (
        "chunk seq 0 of session 'r' channel 0 arrived after the channel ended"
        " (session_end at offset 99); a session id cannot be reused"
    )
    assert res2.state is None and not res2.ended


def test_chunks_after_end_of_stream_in_the_same_batch_are_refused(vad: SileroVad) -> None:
    core = StreamSegmenter(vad, clock=lambda: 0)
    arrivals = _with_offsets(beckett_arrivals("l"))
    eos = arrivals[-1]
    late = [
        dataclasses.replace(
            eos,
            chunk=dataclasses.replace(eos.chunk, seq=eos.chunk.seq + k, end_of_stream=False),
            ref=1000 + k,
            offset=eos.offset + k,
        )
        for k in (1, 2, 3)
    ]
    dup = dataclasses.replace(arrivals[10], ref=2000, offset=eos.offset + 4)  # a producer's copy
    (res,) = core.process([ChannelBatch(ChannelKey("l", 0), None, arrivals + late + [dup])])
    assert [ref for ref, _ in res.rejected] == [1001, 1002, 1003]
    assert res.replayed == 1  # the duplicate: dropped silently, as before the end
    assert all("after the channel ended" in e.reason for _, e in res.rejected)
    assert res.ended and len(_finals(res)) == BECKETT_UTTERANCES


def test_after_an_idle_timeout_late_chunks_are_refused(vad: SileroVad) -> None:
    core = StreamSegmenter(vad, clock=lambda: 0)
    arrivals = _with_offsets(beckett_arrivals("i"))[:50]
    key = ChannelKey("i", 0)
    (res,) = core.process([ChannelBatch(key, None, arrivals)])
    idle = core.finish_idle(key, res.state, "tick", offset=60)  # type: ignore[arg-type]
    assert idle.ended and idle.end_marker == EndedChannel(
        60, "idle_timeout", 0.0, last_seq=49, last_captured_us=0
    )
    rest = _with_offsets(beckett_arrivals("i"), first=61)[50:]
    (res2,) = core.process([ChannelBatch(key, idle.end_marker, rest)])
    assert len(res2.rejected) == len(rest) == 50 and res2.replayed == 0
    assert "(idle_timeout at offset 60)" in res2.rejected[0][1].reason


def test_end_markers_expire_per_partition() -> None:
    items = [
        ("a#0", {"p": 1, "at": 5.0}),
        ("b#0", {"p": 2, "at": 5.0}),
        ("c#0", {"p": 1, "at": 9.0}),
    ]
    assert expired_markers(items, partition=1, deadline=6.0) == ["a#0"]


def test_an_empty_session_id_is_a_contract_error() -> None:
    c = beckett_arrivals("x")[0].chunk
    empty = dataclasses.replace(c, session_id="")
    with pytest.raises(ContractError, match="empty session id"):
        parse_arrival(empty.encode(), b"", None, 0)


# ------------------------------------------------------------------ 4. sample rate


def test_a_sample_rate_change_rejects_each_changed_chunk_once_and_keeps_the_audio_before(
    vad: SileroVad,
) -> None:
    """Before: the whole channel failed (the batch's earlier audio lost, 6 dead letters)."""
    core = StreamSegmenter(vad, clock=lambda: 0)
    arrivals = _with_offsets(beckett_arrivals("sr"))[:70]
    changed = []
    for a in arrivals[10:]:
        c = a.chunk
        pcm = np.frombuffer(c.payload, "<i2")[::2].tobytes()  # the same time at 8 kHz
        changed.append(
            dataclasses.replace(
                a,
                chunk=dataclasses.replace(
                    c, sample_rate=8000, n_samples=c.n_samples // 2, payload=pcm
                ),
            )
        )
    key = ChannelKey("sr", 0)
    (res,) = core.process([ChannelBatch(key, None, arrivals[:10] + changed)])
    assert res.failed is None and len(res.rejected) == 60
    assert [ref for ref, _ in res.rejected] == list(range(10, 70))
    assert {e.reason for _, e in res.rejected} == {
        "sample rate changed from 16000 to 8000 mid-stream"
    }
    assert isinstance(res.state, ChannelState) and res.state.seg.stream_samples == 10 * CHUNK
    # the channel goes on at its own rate
    (res2,) = core.process(
        [ChannelBatch(key, res.state, _with_offsets(beckett_arrivals("sr"), 100)[10:])]
    )
    assert res2.rejected == [] and res2.ended and len(_finals(res2)) == BECKETT_UTTERANCES


# ------------------------------------------------------------------ 5. order in a batch


class _Log(list):  # type: ignore[type-arg]
    pass


class _OrderedTopic:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    async def send(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.log.append(("send", self.name))


class _OrderedTable(dict):  # type: ignore[type-arg]
    def __init__(self, log: _Log, name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def __setitem__(self, key: Any, value: Any) -> None:
        self.log.append(("write", self.name))
        super().__setitem__(key, value)


class _Producer:
    def __init__(self, log: _Log) -> None:
        self.log = log

    async def flush(self) -> None:
        self.log.append(("flush", ""))


class _Signal:
    def connect(self, fun: Any) -> Any:
        return fun


class _App:
    def __init__(self, log: _Log) -> None:
        self.log = log
        self.producer = _Producer(log)
        self.on_partitions_revoked = _Signal()

    def Table(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return _OrderedTable(self.log, name)

    def agent(self, *args: Any, **kwargs: Any) -> Any:
        return lambda fun: fun

    timer = agent

    def task(self, fun: Any) -> Any:
        return fun


def test_a_batch_writes_no_state_until_its_outputs_are_delivered(vad: SileroVad) -> None:
    """Before: each channel's changelog copy followed its own sends, unflushed: a crash in
    the middle of a batch could leave a state ahead of the outputs it implies (a lost
    final), or outputs of other channels behind."""
    log = _Log()
    app = _App(log)
    topics = StageTopics(Topics("t."), *(_OrderedTopic(log, n) for n in ("a", "u", "t", "e", "d")))  # type: ignore[arg-type]
    settings = Settings(segmenter_batch_max=200)
    stage = SegmenterStage(app, settings, topics, ThreadPoolExecutor(1))  # type: ignore[arg-type]
    stage.core = StreamSegmenter(vad, stage.seg_config, stage.jitter_config)
    chunks: list[AudioChunk] = []
    for sid in ("o1", "o2"):
        chunks += [a.chunk for a in beckett_arrivals(sid)[:60]]
    events = [_Event(_Message(c.encode(), c.key, 1, offset=i)) for i, c in enumerate(chunks)]
    asyncio.run(stage.handle(events))
    kinds = [k for k, _ in log]
    first_write = kinds.index("write")
    assert kinds.count("flush") == 1 and kinds.index("flush") == first_write - 1
    assert "send" not in kinds[first_write:]
    assert sum(1 for k, n in log if k == "send" and n == "u") > 4  # utterance updates went out
    assert [n for k, n in log[first_write:] if k == "write"][:2] == ["segmenter-channels"] * 2


def test_agent_refuses_a_reused_session_id_with_one_dead_letter_per_chunk(vad: SileroVad) -> None:
    log = _Log()
    app = _App(log)
    dl_topic = _LimitedTopic(1_000_000)
    utt_topic = _LimitedTopic(10_000_000)
    topics = StageTopics(
        Topics("t."),
        _OrderedTopic(log, "a"),
        utt_topic,
        _OrderedTopic(log, "t"),
        _OrderedTopic(log, "e"),
        dl_topic,
    )  # type: ignore[arg-type]
    stage = SegmenterStage(app, Settings(segmenter_batch_max=200), topics, ThreadPoolExecutor(1))  # type: ignore[arg-type]
    stage.core = StreamSegmenter(vad, stage.seg_config, stage.jitter_config)
    first = [a.chunk for a in beckett_arrivals("reuse")]
    events = [_Event(_Message(c.encode(), c.key, 1, offset=i)) for i, c in enumerate(first)]
    asyncio.run(stage.handle(events))
    finals_before = [m for m in map(UtteranceMessage.decode, utt_topic.sent) if m.kind == "final"]
    assert len(finals_before) == BECKETT_UTTERANCES and stage.channels == {}
    assert stage.ended["reuse#0"]["o"] == 99 and stage.ended["reuse#0"]["p"] == 1
    n = len(utt_topic.sent)
    again = [dataclasses.replace(c, captured_at_us=10**15 + c.seq) for c in first]
    second = [_Event(_Message(c.encode(), c.key, 1, offset=200 + i)) for i, c in enumerate(again)]
    replay = events[-5:]
    for k in range(0, len(second), 30):  # in several batches
        asyncio.run(stage.handle(second[k : k + 30] + (replay if k == 0 else [])))
    assert len(utt_topic.sent) == n  # nothing new downstream: no overwrite
    dls = [DeadLetter.decode(v) for v in dl_topic.sent]
    assert sorted(d.source_offset for d in dls) == list(range(200, 300))
    assert all("cannot be reused" in d.reason and d.session_id == "reuse" for d in dls)
    assert stage.channels == {} and "reuse" not in stage.sessions


def test_a_channel_its_session_metadata_does_not_declare_is_rejected() -> None:
    from streamscribe.processors.validate import admit
    from streamscribe.schemas.audio import SessionMeta

    c = beckett_arrivals("m")[0].chunk
    meta = SessionMeta(source="file", channels=1)
    admit(dataclasses.replace(c, channel=0, session_meta=meta))
    with pytest.raises(ValidationError) as err:
        admit(dataclasses.replace(c, channel=1000, session_meta=meta))
    assert err.value.reason == "channel 1000 does not exist: its session declares 1 channel(s)"


class _Crash(Exception):
    """Stands for the process dying (os._exit) in the middle of a batch."""


class _Kafka:
    """A producer where a send is delivered only by a flush, and a changelog write (a table
    set) is delivered at once: the worst order a crash can leave behind."""

    def __init__(self, crash_at: int | None) -> None:
        self.pending: list[tuple[str, bytes]] = []
        self.delivered: list[tuple[str, bytes]] = []
        self.crash_at = crash_at
        self.sends = 0

    async def flush(self) -> None:
        self.delivered += self.pending
        self.pending = []


class _KafkaTopic:
    def __init__(self, kafka: _Kafka, name: str) -> None:
        self.kafka, self.name = kafka, name

    async def send(self, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.kafka.sends += 1
        if self.kafka.crash_at is not None and self.kafka.sends == self.kafka.crash_at:
            self.kafka.pending = []  # the process dies: what was not delivered is gone
            raise _Crash
        self.kafka.pending.append((self.name, value))


class _KafkaApp(_App):
    def __init__(self, kafka: _Kafka) -> None:
        super().__init__(_Log())
        self.producer = kafka  # type: ignore[assignment]

    def Table(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return {}


def _kafka_stage(vad: SileroVad, kafka: _Kafka) -> SegmenterStage:
    names = ("a", "u", "t", "e", "d")
    topics = StageTopics(Topics("t."), *(_KafkaTopic(kafka, n) for n in names))  # type: ignore[arg-type]
    stage = SegmenterStage(_KafkaApp(kafka), Settings(), topics, ThreadPoolExecutor(1))  # type: ignore[arg-type]
    stage.core = StreamSegmenter(vad, stage.seg_config, stage.jitter_config, clock=lambda: 0)
    return stage


async def _commit(stage: SegmenterStage, events: list[_Event], kafka: _Kafka) -> None:
    """Handle a batch, then flush as faust does before it commits the batch's offsets."""
    await stage.handle(events)
    await kafka.flush()


def _finals_delivered(kafka: _Kafka) -> dict[tuple[str, int], tuple[int, int]]:
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for name, value in kafka.delivered:
        if name == "u":
            m = UtteranceMessage.decode(value)
            if m.kind == "final":
                span = (m.start_sample, m.end_sample)
                assert out.setdefault((m.session_id, m.utterance), span) == span
    return out


def test_a_crash_in_the_middle_of_a_batch_loses_no_final_and_duplicates_none(
    vad: SileroVad,
) -> None:
    """Two sessions end in one batch; the worker dies while sending the second one's
    messages. Replayed from what reached Kafka, every final is there once, as without the
    crash. Before: the first session's state (its end) was written while its finals were
    still unsent, and the replay dropped them as already handled."""
    chunks = [a.chunk for a in beckett_arrivals("c1")] + [a.chunk for a in beckett_arrivals("c2")]
    events = [_Event(_Message(c.encode(), c.key, 1, offset=i)) for i, c in enumerate(chunks)]
    clean = _Kafka(crash_at=None)
    asyncio.run(_commit(_kafka_stage(vad, clean), events, clean))
    reference = _finals_delivered(clean)
    assert len(reference) == 2 * BECKETT_UTTERANCES
    sends_per_session = clean.sends // 2
    kafka = _Kafka(crash_at=sends_per_session + 3)  # inside the second session's sends
    first = _kafka_stage(vad, kafka)
    with pytest.raises(_Crash):
        asyncio.run(first.handle(events))
    kafka.crash_at = None
    second = _kafka_stage(vad, kafka)  # a new process: only the tables survive
    second.channels.update(first.channels)
    second.sessions.update(first.sessions)
    second.ended.update(first.ended)
    asyncio.run(_commit(second, events, kafka))  # the batch was not acked: replayed
    assert _finals_delivered(kafka) == reference


def test_the_next_seq_at_a_forged_position_is_rejected_and_the_true_one_taken() -> None:
    jb = JitterBuffer()
    jb.push(_chunk(0, 0))
    with pytest.raises(ValidationError) as err:
        jb.push(_chunk(1, CHUNK + HOUR_16K))
    assert err.value.reason == (
        "position 57601600 of seq 1 contradicts the seq order: it is not where the stream"
        " stands (1600) although no seq is missing"
    )
    assert [i.position for i in jb.push(_chunk(1, CHUNK)) if isinstance(i, Chunk)] == [CHUNK]
