"""The recognizer's pure core without a broker: a line's parts in, decodes, transcripts and
table writes out (a fake ASR where the model is not the point, the real one on a recording)."""

from __future__ import annotations

import dataclasses
import doctest
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamscribe.core.errors import AsrError, ContractError
from streamscribe.core.settings import Settings
from streamscribe.processors import recognizer_core, recognizer_line
from streamscribe.processors.asr import (
    SAMPLE_RATE,
    Decoded,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)
from streamscribe.processors.decode_scheduler import DecodeOutcome
from streamscribe.processors.recognizer_core import (
    AUDIO_TABLE,
    LINES_TABLE,
    Decode,
    PartialPolicy,
    RecognizerConfig,
    RecognizerCore,
    TableWrite,
    Verdict,
    decode_message,
)
from streamscribe.processors.recognizer_line import RecognizerLine
from streamscribe.processors.text import normalized_words
from streamscribe.schemas.pcm import PCM_S16LE, decode_payload, encode_payload
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript
from streamscribe.schemas.utterances import KIND_FINAL, KIND_UPDATE, UtteranceMessage
from tests.wer import wer, word_errors

GROUP = "g"
PART = SAMPLE_RATE // 4  # 0.25 s of audio per part
START = 3 * SAMPLE_RATE  # the line starts 3 s into the stream
NOW_US = 1_700_000_000_000_000
STAMPS = {  # a line decided 10 µs before the core's clock: live, not behind
    "captured_at_us": NOW_US - 40,
    "broker_at_us": NOW_US - 30,
    "received_at_us": NOW_US - 20,
    "decided_at_us": NOW_US - 10,
}


def _config(interval_s: float = 0.5, growth: float = 0.3) -> RecognizerConfig:
    return RecognizerConfig(
        group_id=GROUP,
        policy=PartialPolicy(interval_samples=int(interval_s * SAMPLE_RATE), growth=growth),
        max_error_rate=0.2,
    )


def fake_asr(audio: np.ndarray) -> Decoded:
    """One word per full 0.25 s of audio, its sign telling the word: deterministic and
    growing, like a real hypothesis of a growing line."""
    words = [
        f"w{i}{'p' if audio[i * PART : (i + 1) * PART].sum() >= 0 else 'n'}"
        for i in range(audio.shape[0] // PART)
    ]
    return Decoded(" ".join(words), [], -0.1, 0.9, False, 0.0, 0.0, audio.shape[0] / SAMPLE_RATE)


def line_messages(
    audio: np.ndarray,
    *,
    session: str = "s",
    channel: int = 0,
    utterance: int = 0,
    part_samples: int = PART,
    origin: str | None = GROUP,
) -> list[UtteranceMessage]:
    """An utterance as the segmenter sends it: deltas of ``part_samples``, the last final."""
    cuts = list(range(0, audio.shape[0], part_samples))
    msgs = []
    for part, a in enumerate(cuts):
        b = min(a + part_samples, audio.shape[0])
        last = part == len(cuts) - 1
        msgs.append(
            UtteranceMessage(
                session_id=session,
                channel=channel,
                role="agent",
                utterance=utterance,
                kind=KIND_FINAL if last else KIND_UPDATE,
                part=part,
                start_sample=START,
                offset_sample=START + a,
                end_sample=START + b,
                payload=encode_payload(audio[a:b], PCM_S16LE),
                reason="silence" if last else None,
                summary_json='{"words": 3}' if last else None,
                origin=origin,
                **STAMPS,
            )
        )
    return msgs


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


@dataclass
class Harness:
    """Drives a core like the agent does, decoding at once; the tables are dicts."""

    config: RecognizerConfig = field(default_factory=_config)
    asr: Callable[[np.ndarray], Decoded] = fake_asr
    tables: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {LINES_TABLE: {}, AUDIO_TABLE: {}}
    )
    core: RecognizerCore = field(init=False)
    verdicts: list[str] = field(default_factory=list)
    now_us: int = NOW_US

    def __post_init__(self) -> None:
        self.core = self.restart()

    def restart(self) -> RecognizerCore:
        """A fresh core (a new worker) over the same tables."""
        self.core = RecognizerCore(
            self.config,
            self.tables[LINES_TABLE],
            self.tables[AUDIO_TABLE],
            clock=lambda: self.now_us,
        )
        return self.core

    def write(self, writes: Iterable[TableWrite]) -> None:
        for w in writes:
            if w.value is None:
                self.tables[w.table].pop(w.key, None)
            else:
                self.tables[w.table][w.key] = w.value

    def accept(self, msg: UtteranceMessage, partition: int = 0) -> Decode | None:
        step = self.core.accept(msg, partition)
        self.verdicts.append(step.verdict)
        self.write(step.writes)
        return step.decode

    def outcome(self, decode: Decode) -> DecodeOutcome:
        if decode.job.final:
            return DecodeOutcome(result=self.asr(decode.audio), start_us=20, end_us=21)
        result = [self.asr(seg) for seg in decode.job.segments]  # a partial: per segment
        return DecodeOutcome(result=result, start_us=20, end_us=21)

    def complete(
        self,
        decode: Decode,
        out: DecodeOutcome | None = None,
        source: tuple[int, int] | None = None,
    ) -> Any:
        out = out or self.outcome(decode)
        if not decode.final:
            return self.core.partial_event(decode, out)
        done = self.core.finish(decode, out, source)
        self.write(done.writes)
        return done

    def run(self, msgs: Iterable[UtteranceMessage], partition: int = 0) -> list[Any]:
        """Every transcript published (finals as :class:`Finished`), in order."""
        out = []
        for msg in msgs:
            decode = self.accept(msg, partition)
            if decode is not None:
                result = self.complete(decode)
                if result is not None:
                    out.append(result)
        return out


def _events(results: list[Any]) -> list[PartialTranscript | FinalTranscript]:
    return [r if isinstance(r, PartialTranscript) else r.event for r in results]


# --------------------------------------------------------------------- parts


def test_replayed_parts_are_dropped_and_late_parts_after_done_ignored() -> None:
    h = Harness()
    msgs = line_messages(noise(2.0))
    first = h.run(msgs[:5])
    writes_before = {t: dict(v) for t, v in h.tables.items()}
    assert h.run(msgs[2:5]) == []  # a replay after a crash: already applied
    assert h.verdicts[-3:] == [Verdict.DUPLICATE] * 3
    assert h.tables == writes_before
    rest = h.run(msgs[5:])
    assert isinstance(rest[-1].event, FinalTranscript)
    once = Harness().run(msgs)
    assert _events(first + rest) == _events(once)
    # after the final: a replayed part (any) is late, from the done marker in the table
    assert h.run(msgs[1:2]) == [] and h.verdicts[-1] == Verdict.LATE
    assert h.core.stats.duplicates == 4 and len(h.core) == 0
    assert h.tables[AUDIO_TABLE] == {}  # the parts are deleted with the final
    assert h.tables[LINES_TABLE]["s/0/0"]["done"] is True


def test_each_part_stored_once_and_converted_once() -> None:
    h = Harness()
    audio = noise(1.5)
    msgs = line_messages(audio)
    for msg in msgs[:-1]:
        h.accept(msg)
    assert sorted(h.tables[AUDIO_TABLE]) == [f"s/0/0#{i}" for i in range(len(msgs) - 1)]
    line = h.core.line("s/0/0")
    assert line is not None
    joined = b"".join(m.payload for m in msgs[:-1])
    expected = decode_payload(joined, PCM_S16LE)
    assert np.array_equal(line.audio, expected)  # bit-identical to converting the whole
    assert line.audio.dtype == np.float32


def test_a_decode_job_keeps_its_audio_while_the_line_grows() -> None:
    h = Harness()
    msgs = line_messages(noise(4.0))
    jobs = [d for d in (h.accept(m) for m in msgs[:-1]) if d is not None]
    assert len(jobs) >= 3
    for job in jobs:
        assert sum(len(seg) for seg in job.job.segments) == job.job.samples - job.job.anchor
        assert all(seg.base is not None for seg in job.job.segments)  # views, not copies
    line = h.core.line("s/0/0")
    assert line is not None
    for job in jobs:
        joined = np.concatenate(job.job.segments)
        assert np.array_equal(joined, line.audio[job.job.anchor : job.job.samples])


def test_missing_parts_flag_the_final_degraded() -> None:
    msgs = line_messages(noise(2.0))
    h = Harness()
    results = h.run([m for m in msgs if m.part != 3])
    final = results[-1].event
    assert final.degraded is True
    assert all(not p.degraded for p in _events(results[:-1]))
    assert h.core.stats.duplicates == 0
    # the missing quarter second is not in the decoded audio, the stream times are kept
    assert final.end_ms == msgs[-1].end_sample * 1000 / SAMPLE_RATE
    assert len(final.text.split()) == len(msgs) - 1
    intact = Harness().run(msgs)[-1].event
    assert intact.degraded is False


# ------------------------------------------------------------------ partials


def test_partial_due_follows_the_policy() -> None:
    h = Harness(config=_config(interval_s=0.5, growth=0.3))
    msgs = line_messages(noise(6.0))
    due = [m.end_sample - START for m in msgs[:-1] if h.accept(m) is not None]
    assert due[:4] == [8000, 16000, 24000, 32000]  # every 0.5 s at first
    policy = h.config.policy
    decoded = 0
    for n in due:
        assert policy.due(decoded, n)
        decoded = n
    assert len(due) < len(msgs) // 2  # then geometric: fewer decodes than updates
    assert Harness(config=_config(interval_s=1000)).run(msgs[:-1]) == []  # partials off


def test_partials_are_stable_and_the_final_replaces_them() -> None:
    h = Harness()
    msgs = line_messages(noise(3.0))
    events = _events(h.run(msgs))
    partials, final = events[:-1], events[-1]
    assert partials and all(isinstance(p, PartialTranscript) for p in partials)
    # a revision is the number of the line's parts a partial saw (the final: all of them)
    parts_seen = [round(p.end_ms * SAMPLE_RATE / 1000 - START) // PART for p in partials]
    assert [p.revision for p in partials] == parts_seen
    for a, b in itertools.pairwise(partials):
        assert b.revision > a.revision
        assert b.stable_text.startswith(a.stable_text) and b.text.startswith(a.stable_text)
        assert b.end_ms > a.end_ms
    assert partials[-1].stable_text  # the fake ASR agrees with itself: words became stable
    assert partials[0].start_ms == START * 1000 / SAMPLE_RATE
    assert partials[0].end_ms == (START + 8000) * 1000 / SAMPLE_RATE
    assert final.revision == len(msgs) > partials[-1].revision


def test_final_fields() -> None:
    audio = noise(2.0, seed=3)
    msgs = line_messages(audio, session="call-7", channel=1, utterance=4)
    results = Harness().run(msgs)
    final = results[-1].event
    assert results[-1].dead_letter is None
    assert isinstance(final, FinalTranscript)
    assert (final.session_id, final.channel, final.utterance, final.role) == (
        "call-7",
        1,
        4,
        "agent",
    )
    assert final.start_ms == 3000.0 and final.end_ms == 5000.0
    assert final.raw_text == fake_asr(audio).text and final.confidence == 0.9
    assert final.text == "W" + final.raw_text[1:]  # post-processed: sentence case
    assert final.error is None and final.reason == "silence" and final.summary == {"words": 3}
    assert final.revision == len(msgs)  # the number of the line's parts: above every partial
    assert final.timestamps == {
        **STAMPS,
        "decode_start_us": 20,
        "decode_end_us": 21,
        "published_at_us": NOW_US,
    }


def _finish_line(h: Harness, msgs: list[UtteranceMessage], offset: int) -> None:
    """Run a line's messages; its final as if read at ``offset`` of partition 0."""
    for msg in msgs[:-1]:
        h.accept(msg)
    final = h.accept(msgs[-1])
    assert final is not None and final.final
    h.complete(final, source=(0, offset))


def test_done_markers_go_once_committed_and_superseded_or_old() -> None:
    ttl = 60_000_000
    h = Harness(config=replace(_config(), done_ttl_us=ttl))
    first, second = (
        line_messages(noise(1.0), utterance=0),
        line_messages(noise(1.0, 1), utterance=1),
    )
    _finish_line(h, first, offset=10)
    _finish_line(h, second, offset=20)
    lines = h.tables[LINES_TABLE]
    assert sorted(lines) == ["s/0/0", "s/0/1"]  # the final no longer deletes the one before
    assert lines["s/0/0"]["source"] == [0, 10] and lines["s/0/0"]["done_at_us"] == NOW_US

    def retired(committed: dict[int, int]) -> list[tuple[int, str]]:
        return h.core.retired(list(lines.items()), committed)

    assert retired({0: 21}) == []  # partition 0 is not this worker's (yet)
    h.core.assigned({0, 1})
    assert retired({}) == [] and retired({0: 10}) == []  # offset 10 not committed yet
    assert retired({0: 11}) == [(0, "s/0/0")]  # committed, and the next line exists
    assert retired({0: 21}) == [(0, "s/0/0")]  # the channel's last line waits for the ttl
    h.now_us = NOW_US + ttl - 1
    assert retired({0: 21}) == [(0, "s/0/0")]
    h.now_us = NOW_US + ttl
    assert retired({0: 21}) == [(0, "s/0/0"), (0, "s/0/1")]
    assert retired({0: 20}) == [(0, "s/0/0")]  # ... and for its own offset's commit
    h.core.evict({0})  # revoked: another worker owns the markers now
    assert retired({0: 21}) == []
    h.core.assigned({0})
    # a marker written before markers carried their source is kept
    lines["old/0/0"] = RecognizerLine.done_doc("agent", 0)
    assert (0, "old/0/0") not in retired({0: 10**9})


def test_a_replay_after_the_marker_went_is_transcribed_again_identically() -> None:
    """The ttl only matters for a copy of a line replayed after it: such a copy (from the
    segmenter's own replay) holds the line from its first part, so it gives the same final."""
    h = Harness()
    msgs = line_messages(noise(2.0))
    _finish_line(h, msgs, offset=5)
    before = h.tables[LINES_TABLE]["s/0/0"]
    h.core.assigned({0})
    h.now_us += h.config.done_ttl_us
    assert h.core.retired(list(h.tables[LINES_TABLE].items()), {0: 6}) == [(0, "s/0/0")]
    del h.tables[LINES_TABLE]["s/0/0"]
    again = h.run(msgs)
    assert again[-1].event.text == Harness().run(msgs)[-1].event.text
    assert before["done"] and h.tables[LINES_TABLE]["s/0/0"]["done"]


# --------------------------------------------------------------------- errors


def test_decode_error_gives_a_final_with_error_and_a_dead_letter() -> None:
    h = Harness()
    msgs = line_messages(noise(2.0))
    partials = h.run(msgs[:-1])
    stable = partials[-1].stable_text
    assert stable
    decode = h.accept(msgs[-1])
    assert decode is not None and decode.final
    done = h.complete(decode, DecodeOutcome(error=AsrError("model broke"), start_us=20, end_us=21))
    assert done.event.error == "AsrError: model broke"
    assert done.event.text == stable and done.event.confidence is None
    assert done.dead_letter == "line s/0/0: AsrError: model broke"
    assert h.core.stats.errors == 1 and h.core.budget.outcomes == [False]
    assert h.tables[AUDIO_TABLE] == {}  # finished all the same: the session goes on
    failed_partial = h.core.partial_event(decode, DecodeOutcome(error=AsrError("x")))
    assert failed_partial is None


def test_error_budget_is_fed_by_finals() -> None:
    h = Harness()
    for utt in range(12):
        decode = None
        for msg in line_messages(noise(0.5, seed=utt), utterance=utt):
            decode = h.accept(msg)
        assert decode is not None and decode.final
        h.complete(decode, DecodeOutcome(error=AsrError("down")) if utt % 2 else None)
    assert h.core.budget.outcomes.count(False) == 6
    assert h.core.budget.exceeded()  # 50 % > 20 %


def test_foreign_origin_is_ignored_own_and_unset_are_taken() -> None:
    h = Harness()
    foreign = line_messages(noise(1.0), origin="other-group")
    assert h.run(foreign) == []
    assert h.verdicts == [Verdict.FOREIGN] * len(foreign) and h.tables[AUDIO_TABLE] == {}
    assert h.core.stats.foreign == len(foreign)
    assert h.run(line_messages(noise(1.0), origin=None))[-1].event.error is None
    assert h.run(line_messages(noise(1.0), utterance=1))[-1].event.utterance == 1


def test_the_key_must_be_the_session_id() -> None:
    msg = line_messages(noise(0.5))[0]
    assert decode_message(msg.encode(), b"s") == msg
    with pytest.raises(ContractError, match="not the session id"):
        decode_message(msg.encode(), b"t")
    with pytest.raises(ContractError, match="not the session id"):
        decode_message(msg.encode(), None)
    with pytest.raises(ContractError):
        decode_message(b"\x00junk", b"s")


# ------------------------------------------------------------- state in tables


def test_restoring_from_the_changelog_copy_gives_identical_outputs() -> None:
    """A new core over the tables (a restart) at any point where no decode is in flight
    publishes exactly what the uninterrupted core publishes."""
    msgs = line_messages(noise(5.0, seed=5))
    whole = _events(Harness().run(msgs))
    quiet = []  # message indexes after which no decode was in flight
    probe = Harness()
    for i, msg in enumerate(msgs[:-1]):
        decode = probe.accept(msg)
        if decode is None:
            quiet.append(i)
        else:
            probe.complete(decode)
    assert len(quiet) >= 5
    for i in quiet:
        h = Harness()
        before = h.run(msgs[: i + 1])
        h.restart()
        assert len(h.core) == 0
        after = h.run(msgs[i + 1 :])
        assert _events(before + after) == whole, i


def test_restart_then_replay_from_the_last_commit() -> None:
    """After a crash faust replays from the last commit: parts already in the tables are
    duplicates, the outputs equal a run without the crash."""
    msgs = line_messages(noise(3.0, seed=2))
    whole = _events(Harness().run(msgs))
    h = Harness()
    before = h.run(msgs[:8])
    assert h.accept(msgs[8]) is None  # no decode in flight when it crashes
    h.restart()
    after = h.run(msgs[3:])  # committed up to part 2
    assert h.verdicts[9:15] == [Verdict.DUPLICATE] * 6
    assert _events(before + after) == whole


def test_revoked_partition_is_dropped_and_rebuilt_from_the_tables() -> None:
    h = Harness()
    a = line_messages(noise(3.0, seed=1), session="a")
    b = line_messages(noise(3.0, seed=2), session="b")
    h.run(a[:5], partition=1)
    out_b = h.run(b[:5], partition=2)
    pending = None
    for msg in a[5:]:  # a partial of line a is decoding when its partition goes away
        pending = h.accept(msg, partition=1)
        if pending is not None:
            break
    assert pending is not None and not pending.final
    assert h.core.evict({1}) == ["a/0/0"]
    assert h.core.line("a/0/0") is None and h.core.line("b/0/0") is not None
    assert h.core.partial_event(pending, h.outcome(pending)) is None  # not ours any more
    consumed = 5 + a[5:].index(pending.msg) + 1
    rest_a = h.run(a[consumed:], partition=1)  # the partition came back: rebuilt on a miss
    rest_b = h.run(b[5:], partition=2)
    assert _events(out_b + rest_b) == _events(Harness().run(b))
    # line a lost only the partial that was in flight; its final is the same
    final_a = _events(Harness().run(a))[-1]
    assert replace(rest_a[-1].event, revision=0) == replace(final_a, revision=0)
    assert len(h.core) == 0


def test_a_partition_that_comes_back_keeps_its_lines_stable_prefix() -> None:
    """Revoked and assigned back with nobody writing the line meanwhile (the usual
    rebalance): the dropped line is taken back with the partials it published since its
    last table copy, so the outputs equal a run without the rebalance."""
    msgs = line_messages(noise(4.0, seed=4))
    whole = _events(Harness().run(msgs))
    h = Harness()
    before = h.run(msgs[:8])
    assert before[-1].end_ms == (START + 8 * PART) * 1000 / SAMPLE_RATE  # part 7's partial,
    line = h.core.line("s/0/0")  # applied after its table copy was written
    assert h.core.evict({0}) == ["s/0/0"] and len(h.core) == 0
    h.core.assigned({0, 3})
    after = h.run(msgs[8:])
    assert _events(before + after) == whole
    assert h.verdicts[8] == Verdict.ACCEPT and line is not None and line.done


def test_a_final_decoding_at_a_revoke_is_decoded_again_when_its_message_comes_back() -> None:
    """Revoked while its final decodes, assigned back, the final's message read again: the
    line is rebuilt from its table copy and the final decoded again. (Parked with the final
    taken, the line called the message a duplicate: acked at once, while the first decode,
    whose ack the new generation ignores, might never publish: a final lost.)"""
    msgs = line_messages(noise(2.0, seed=5))
    h = Harness()
    h.run(msgs[:-1])
    first = h.accept(msgs[-1])
    assert first is not None and first.final  # decoding; not finished, not acked
    assert h.core.evict({0}) == ["s/0/0"] and h.core.parked == 0
    h.core.assigned({0})
    again = h.accept(msgs[-1])
    assert h.verdicts[-1] == Verdict.ACCEPT and again is not None and again.final
    final = h.complete(again).event
    assert final == _events(Harness().run(msgs))[-1]


def test_a_line_written_elsewhere_meanwhile_is_rebuilt_from_the_tables() -> None:
    msgs = line_messages(noise(4.0, seed=4))
    h = Harness()
    h.run(msgs[:6])
    h.core.evict({0})
    other = Harness(tables=h.tables)  # another worker had the partition for a while
    other.run(msgs[6:9])
    h.core.assigned({0})
    rest = h.run(msgs[9:])
    assert _events(rest) == _events(other.run(msgs[9:]))  # the tables' line, not the old one
    h.core.evict({0})
    h.core.assigned({1})  # went elsewhere: nothing parked is kept
    assert h.core.parked == 0


def test_docstring_examples_run() -> None:
    from streamscribe.processors import speculation

    for module, minimum in ((recognizer_core, 8), (recognizer_line, 8), (speculation, 1)):
        failures, tried = doctest.testmod(module)
        assert tried >= minimum and failures == 0


def test_config_from_settings() -> None:
    s = Settings().with_overrides(
        update_interval_s=0.25, partial_growth=0.5, asr_fail_lines="x/*,,y/0/1"
    )
    config = RecognizerConfig.from_settings(s)
    assert config.policy.interval_samples == 4000 and config.policy.growth == 0.5
    assert config.fail_patterns == ("x/*", "y/0/1") and config.group_id == s.group_id


# ------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def model() -> MoonshineAsr:
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    return asr


def test_beckett_through_the_core_with_the_real_model(
    model: MoonshineAsr, references: dict[str, str]
) -> None:
    audio = read_audio_16k(bundled_recording("beckett.wav"))
    h = Harness(asr=model.transcribe)
    events = _events(h.run(line_messages(audio, part_samples=SAMPLE_RATE // 2)))
    partials, final = events[:-1], events[-1]
    assert final.text == model.transcribe(audio).text  # the core's buffer is the audio
    assert word_errors(references["beckett.wav"], final.text) <= 1, final.text
    assert wer(references["beckett.wav"], final.text) <= 0.1
    assert len(partials) >= 5
    for a, b in itertools.pairwise(partials):
        assert b.stable_text.startswith(a.stable_text) and b.text.startswith(a.stable_text)
    stable = normalized_words(partials[-1].stable_text)
    assert len(stable) >= 5 and stable == normalized_words(final.text)[: len(stable)]


def test_two_cities_piece_through_the_core_with_the_real_model(
    model: MoonshineAsr, references: dict[str, str]
) -> None:
    # 0.9 s .. 10.5 s: both cuts in pauses; the piece holds the first 30 reference words
    audio = read_audio_16k(bundled_recording("two_cities.wav"))
    piece = audio[int(0.9 * SAMPLE_RATE) : int(10.5 * SAMPLE_RATE)]
    reference = " ".join(normalized_words(references["two_cities.wav"])[:30])
    final = Harness(asr=model.transcribe).run(line_messages(piece))[-1].event
    assert wer(reference, final.text) <= 0.15, final.text
    assert 0.5 < (final.confidence or 0) <= 1.0


# ------------------------------------------------------------- the agent's wiring


def test_the_agent_drops_the_lines_of_a_revoked_partition(tmp_path: Path) -> None:
    """faust's ``on_partitions_revoked`` signal reaches the core (no broker is contacted)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from faust.types import TP

    from streamscribe.processors.faust_app import StageTopics, make_app
    from streamscribe.processors.recognizer_agent import RecognizerStage

    settings = Settings().with_overrides(worker_data_dir=tmp_path, group_id=GROUP)
    app = make_app(settings)
    topics = StageTopics.declare(app, settings)
    stage = RecognizerStage(app, settings, topics, ThreadPoolExecutor(1))
    for session, partition in (("a", 1), ("b", 2)):
        step = stage.core.accept(line_messages(noise(1.0), session=session)[0], partition)
        assert step.verdict == Verdict.ACCEPT
    revoked = {TP(topics.names.utterances, 1), TP(topics.names.audio, 2)}
    asyncio.run(app.on_partitions_revoked.send(revoked))
    assert stage.core.line("a/0/0") is None and stage.core.line("b/0/0") is not None
    assert stage.core.parked == 1
    asyncio.run(app.on_partitions_assigned.send({TP(topics.names.utterances, 2)}))
    assert stage.core.parked == 0  # partition 1 went to another worker


def test_tail_window_partials_of_a_long_line_with_the_real_model(
    model: MoonshineAsr, references: dict[str, str]
) -> None:
    """Partials decode only the line's tail window (cut at quiet frames and committed), so
    each costs a bounded amount of audio however long the line; their text still follows
    the speech, and the final decodes the whole line."""
    audio = read_audio_16k(bundled_recording("two_cities.wav"))
    piece = audio[int(0.9 * SAMPLE_RATE) : int(10.5 * SAMPLE_RATE)]
    reference = normalized_words(references["two_cities.wav"])[:30]
    h = Harness(config=_config(growth=0.0), asr=model.transcribe)
    policy = h.config.policy
    decoded, partials = [], []
    for msg in line_messages(piece):
        decode = h.accept(msg)
        if decode is None:
            continue
        if not decode.final:
            decoded.append(sum(len(seg) for seg in decode.job.segments))
        result = h.complete(decode)
        if result is not None and not decode.final:
            partials.append(result)
    final = result.event
    line_s = len(piece) / SAMPLE_RATE
    assert len(partials) == len(decoded) >= int(line_s / 0.5) - 1  # one every interval
    # bounded: under the window plus one interval, though the line is 9.6 s long
    assert max(decoded) < policy.window_samples + policy.interval_samples
    assert sum(decoded) < 0.4 * (line_s / 0.5) * len(piece)  # vs re-decoding it all
    last = partials[-1]
    assert last.text.startswith(last.stable_text)
    heard = normalized_words(last.text)
    assert wer(" ".join(reference[: len(heard)]), " ".join(heard)) <= 0.3, last.text
    assert wer(" ".join(reference), final.text) <= 0.15, final.text


def test_updates_captured_too_long_ago_get_no_partial_and_no_speculation() -> None:
    """Behind (overload, or a replay faster than real time): the update's audio is kept but
    nothing is decoded for it; once updates are fresh again partials resume at once, and
    the final is decoded as always."""
    import dataclasses

    h = Harness()
    msgs = line_messages(noise(3.0))
    late = NOW_US - h.config.max_lag_us - 1
    behind = [dataclasses.replace(m, captured_at_us=late) for m in msgs[:6]]
    behind[-1] = dataclasses.replace(behind[-1], end_candidate=True)
    assert [h.accept(m) for m in behind] == [None] * 6
    assert h.core.stats.behind == 6 and h.core.stats.speculations == 0
    fresh = h.accept(msgs[6])  # 1.75 s of audio, live again: a partial of all of it
    assert fresh is not None and not fresh.final
    assert sum(len(s) for s in fresh.job.segments) == 7 * PART
    results = h.run(msgs[7:])
    assert results[-1].event.raw_text == fake_asr(np.concatenate([noise(3.0)])).text
    assert h.core.stats.behind == 6


def test_a_session_not_watched_live_gets_finals_only_and_its_final_may_be_batched() -> None:
    """``live`` false (a recording replayed as fast as it is read): fresh updates get no
    partial and no speculation; the final is decoded as always and marked batchable (a
    live line's final never is)."""
    import dataclasses

    h = Harness()
    msgs = [dataclasses.replace(m, live=False) for m in line_messages(noise(3.0))]
    msgs[5] = dataclasses.replace(msgs[5], end_candidate=True)
    updates = msgs[:-1]
    assert [h.accept(m) for m in updates] == [None] * len(updates)
    assert h.core.stats.not_live == len(updates) and h.core.stats.behind == 0
    assert h.core.stats.speculations == 0 and h.core.stats.partials == 0
    final = h.accept(msgs[-1])
    assert final is not None and final.final and final.batchable
    result = h.complete(final)
    assert result.event.raw_text == fake_asr(noise(3.0)).text
    live = Harness()
    live_msgs = line_messages(noise(3.0), session="live")
    decodes = [live.accept(m) for m in live_msgs]
    assert any(d is not None and not d.final for d in decodes)  # partials
    assert decodes[-1] is not None and decodes[-1].final and not decodes[-1].batchable


def test_a_line_not_watched_live_is_held_in_memory_and_rebuilt_from_the_topic() -> None:
    """Not live: no part goes to the tables (the audio stays on the topic); every update is
    ``held`` (the agent acks it with the line's final), the final writes only its done
    marker. A new core (a worker after a SIGKILL: nothing of the line in the tables) given
    the same messages again from the first part rebuilds the line and the same final, and
    after that final every message of the line is late. A live line still stores each part
    and deletes them with its final."""

    h = Harness()
    msgs = [dataclasses.replace(m, live=False) for m in line_messages(noise(3.0))]
    steps = [h.core.accept(m, 0) for m in msgs[:-1]]
    assert all(s.held and s.writes == () and s.decode is None for s in steps)
    h.restart()  # crashed before the final: the topic gives every message again
    assert h.tables == {LINES_TABLE: {}, AUDIO_TABLE: {}}
    assert [h.accept(m) for m in msgs[:-1]] == [None] * (len(msgs) - 1)
    final_step = h.core.accept(msgs[-1], 0)
    assert not final_step.held and final_step.writes == ()
    assert final_step.decode is not None and final_step.decode.final
    done = h.complete(final_step.decode, source=(0, 41))
    assert done.event.raw_text == fake_asr(noise(3.0)).text
    assert [(w.table, w.value is None) for w in done.writes] == [(LINES_TABLE, False)]
    assert h.tables[AUDIO_TABLE] == {} and list(h.tables[LINES_TABLE]) == [msgs[0].line_id]
    assert {h.core.accept(m, 0).verdict for m in msgs} == {Verdict.LATE}

    live = Harness()
    live_msgs = line_messages(noise(3.0), session="live")
    live_steps = [live.core.accept(m, 0) for m in live_msgs[:-1]]
    assert not any(s.held for s in live_steps)
    for s in live_steps:
        live.write(s.writes)
    assert len(live.tables[AUDIO_TABLE]) == len(live_msgs) - 1
    last = live.core.accept(live_msgs[-1], 0)
    live.write(last.writes)
    assert last.decode is not None
    finished = live.complete(last.decode)
    tombstones = [w for w in finished.writes if w.table == AUDIO_TABLE and w.value is None]
    assert len(tombstones) == len(live_msgs) and live.tables[AUDIO_TABLE] == {}


def test_partials_and_finals_are_post_processed_and_keep_the_model_text() -> None:
    """The published text is cleaned and sentence-cased (redacted when configured, here
    cards); the model's own words stay in raw_text; stable_text stays a prefix."""
    from streamscribe.processors.postprocess import PostProcessor

    def asr(audio: np.ndarray) -> Decoded:
        words = [
            "in",
            "short,,",
            "the",
            "period",
            ".",
            "we",
            "had",
            "card",
            "4111",
            "1111",
            "1111",
            "1111",
            "ok",
        ]
        n = min(len(words), max(1, audio.shape[0] // PART))
        return Decoded(" ".join(words[:n]), [], -0.1, 0.9, False, 0.0, 0.0, 0.5)

    config = dataclasses.replace(_config(growth=0.0), post=PostProcessor(redact="cards"))
    results = Harness(config=config, asr=asr).run(line_messages(noise(3.5)))
    partials, final = _events(results[:-1]), results[-1].event
    assert partials and all(p.text.startswith(p.stable_text) for p in partials)
    assert partials[0].raw_text == "in short,," and partials[0].text == "In short,"
    assert final.raw_text == "in short,, the period . we had card 4111 1111 1111 1111 ok"
    assert final.text == "In short, the period. We had card [REDACTED:card] ok"


def test_a_crash_between_a_finals_writes_loses_nothing() -> None:
    """The agent makes a final's writes durable in order: the done marker (lines table),
    then the audio deletions (recognizer_agent ``_final``). A crash after the marker and
    before the deletions leaves audio behind: the replayed final is late and deletes it.
    A crash before the marker replays the final with all its audio: the same final again."""
    msgs = line_messages(noise(2.0))
    once = Harness().run(msgs)[-1].event

    # the marker is durable, the deletions are not: the final comes again, after a restart
    h = Harness()
    h.run(msgs[:-1])
    decode = h.accept(msgs[-1])
    assert decode is not None and decode.final
    done = h.core.finish(decode, h.outcome(decode))
    h.write(w for w in done.writes if w.table == LINES_TABLE)  # the crash comes here
    assert len(h.tables[AUDIO_TABLE]) == len(msgs)
    h.restart()
    assert h.run(msgs[-1:]) == [] and h.verdicts[-1] == Verdict.LATE
    assert h.tables[AUDIO_TABLE] == {}  # the leftover audio of the done line is gone
    assert h.tables[LINES_TABLE]["s/0/0"]["done"] is True

    # nothing of the final's writes is durable: the replay decodes the same final
    h = Harness()
    h.run(msgs[:-1])
    assert h.accept(msgs[-1]) is not None  # decoded, published, then the crash
    h.restart()
    again = h.run(msgs[-1:])
    assert _events(again) == [once]


def test_a_final_decoded_again_after_a_crash_is_the_same_event() -> None:
    """Published, then a crash before its done marker: the replay decodes the final again
    from a line rebuilt from its table copy, which lacks the partial published after that
    copy. The second copy must be the same event, revision included (the chaos suite saw
    revisions 2 and 1 for one line while the revision counted published partials)."""
    msgs = line_messages(noise(3.0))
    h = Harness()
    partials = h.run(msgs[:-1])
    assert partials and partials[-1].end_ms == msgs[-2].end_ms  # after the last copy
    decode = h.accept(msgs[-1])
    assert decode is not None and decode.final
    first = h.core.finish(decode, h.outcome(decode)).event  # published; then the crash
    h.restart()
    again = h.run(msgs[-1:])
    assert _events(again) == [first]
    assert first.revision == len(msgs)


def test_a_part_lost_with_a_crash_is_taken_again_from_the_replay() -> None:
    """The line's copy can reach the changelog while the part it counts did not (two
    topics, one SIGKILL): the restored line resumes before that part, so its replayed
    message is accepted, not dropped as a duplicate. A part that never came (a gap) is
    listed in the copy and stays missing."""
    msgs = line_messages(noise(2.0))
    [crash_free] = [e for e in _events(Harness().run(msgs)) if isinstance(e, FinalTranscript)]
    h = Harness()
    h.run(msgs[:4])
    del h.tables[AUDIO_TABLE]["s/0/0#3"]  # the crash: part 3's write was lost
    h.restart()
    replayed = _events(h.run(msgs[3:]))  # the replay: everything after the last commit
    assert h.verdicts[-len(msgs[3:])] == Verdict.ACCEPT  # part 3 taken again
    [final] = [e for e in replayed if isinstance(e, FinalTranscript)]
    assert (final.text, final.degraded) == (crash_free.text, False)

    # a gap: part 2 never came; the copy lists it, a restart keeps it missing
    g = Harness()
    g.run([msgs[0], msgs[1], msgs[3]])
    assert g.tables[LINES_TABLE]["s/0/0"]["missing"] == [2]
    g.restart()
    [gapped] = [e for e in _events(g.run(msgs[4:])) if isinstance(e, FinalTranscript)]
    assert g.verdicts[-len(msgs[4:])] == Verdict.ACCEPT and gapped.degraded
