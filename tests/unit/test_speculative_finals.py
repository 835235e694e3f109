"""Speculative finals (issue 11, lever 1): the end-candidate update and its use.

Segmenter: the update flagged ``end_candidate`` ends exactly where the utterance ends if the
silence holds, and is emitted at the first frame whose end reaches the tentative end +
post-roll; boundaries and audio never change (speculation on vs off). Recognizer: the
final with an empty tail and the candidate's end takes the speculative decode's result (one
decode, not two); any other final is decoded as before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamscribe.core.settings import Settings
from streamscribe.processors.asr import Decoded, MoonshineAsr, read_audio_16k
from streamscribe.processors.decode_scheduler import DecodeScheduler
from streamscribe.processors.endpointer import Advance, Close, Endpointer
from streamscribe.processors.recognizer_core import RecognizerConfig, RecognizerCore
from streamscribe.processors.segmenter import (
    ChannelSegmenter,
    Event,
    SegmenterConfig,
    UtteranceFinal,
    UtteranceUpdate,
    make_chunks,
)
from streamscribe.processors.speculation import final_outcome, start_speculation
from streamscribe.processors.vad import FRAME_SAMPLES, SileroVad
from streamscribe.schemas.pcm import PCM_S16LE, encode_payload
from streamscribe.schemas.utterances import KIND_FINAL, KIND_UPDATE, UtteranceMessage

F = FRAME_SAMPLES
ON, OFF = SegmenterConfig(), SegmenterConfig(speculative_finals=False)
RATE = 16000


# ------------------------------------------------------------------ the endpointer


def decisions(probs: Sequence[float], config: SegmenterConfig) -> list[tuple[int, Any]]:
    """(frame index, decision) for every decision of a run of frame probabilities."""
    ep = Endpointer(config)
    return [(i, d) for i, p in enumerate(probs) for d in ep.step(p, 1e-3)]


def test_the_candidate_comes_at_the_first_frame_holding_the_post_roll() -> None:
    probs = [0.9] * 40 + [0.0] * 20
    got = decisions(probs, ON)
    first_silent = 40 * F
    end = first_silent + ON.post_roll
    cands = [(i, d) for i, d in got if isinstance(d, Advance) and d.end_candidate]
    assert len(cands) == 1
    frame, cand = cands[0]
    assert cand.end_sample == end
    assert frame * F < end <= (frame + 1) * F  # the first frame whose end reaches it
    ((close_frame, close),) = [(i, d) for i, d in got if isinstance(d, Close)]
    assert close_frame > frame + 4  # well before the silence decision
    assert (close.end_sample, close.offset_sample) == (end, end)  # an empty tail
    plain = decisions(probs, OFF)
    assert not any(isinstance(d, Advance) and d.end_candidate for _, d in plain)
    ((_, close_off),) = [(i, d) for i, d in plain if isinstance(d, Close)]
    assert close_off.end_sample == end and close_off.offset_sample < end


def test_speech_resuming_after_a_candidate_keeps_the_boundaries() -> None:
    # a 6-frame pause (< min_silence): a candidate, then speech goes on
    probs = [0.9] * 40 + [0.0] * 6 + [0.9] * 30 + [0.0] * 20
    on, off = decisions(probs, ON), decisions(probs, OFF)
    closes = [(d.start_sample, d.end_sample) for _, d in on if isinstance(d, Close)]
    assert closes == [(d.start_sample, d.end_sample) for _, d in off if isinstance(d, Close)]
    assert len(closes) == 1
    cands = [d.end_sample for _, d in on if isinstance(d, Advance) and d.end_candidate]
    assert cands == [40 * F + ON.post_roll, 76 * F + ON.post_roll]


def test_no_candidate_beyond_the_advance_horizon_of_the_length_limit() -> None:
    cfg = SegmenterConfig(max_utterance_s=3.0, split_window_s=1.0)
    horizon = cfg.max_utterance - cfg.split_window
    for pause_at in range(40, 100, 3):
        probs = [0.9] * pause_at + [0.0] * 5 + [0.9] * 100 + [0.0] * 20
        on = decisions(probs, cfg)
        off = decisions(probs, replace(cfg, speculative_finals=False))
        assert [
            (d.start_sample, d.end_sample, d.reason) for _, d in on if isinstance(d, Close)
        ] == [(d.start_sample, d.end_sample, d.reason) for _, d in off if isinstance(d, Close)]
        for _, d in on:
            if isinstance(d, Advance) and d.end_candidate and d.utterance == 0:
                assert d.end_sample <= d.start_sample + horizon


# ------------------------------------------------------- real recordings, on vs off


def utterance_audio(events: Sequence[Event]) -> tuple[list[tuple[int, int, str]], list[bytes]]:
    """Spans and the audio of every utterance (its updates + tail, concatenated)."""
    parts: dict[int, list[bytes]] = {}
    spans, audio = [], []
    for e in events:
        if isinstance(e, UtteranceUpdate):
            parts.setdefault(e.utterance, []).append(e.pcm16_delta)
        elif isinstance(e, UtteranceFinal):
            spans.append((e.start_sample, e.end_sample, e.reason))
            audio.append(b"".join(parts.pop(e.utterance, [])) + e.pcm16_tail)
    assert not parts
    return spans, audio


def segment(path: Path, vad: SileroVad, config: SegmenterConfig) -> list[Event]:
    x = read_audio_16k(path)
    seg = ChannelSegmenter(vad, config)
    events: list[Event] = []
    for chunk in make_chunks(x, RATE, 100):
        events += seg.push(chunk)
    return events


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.mark.parametrize("name", ["two_cities.wav", "beckett.wav"])
def test_speculation_leaves_every_utterance_byte_identical(
    name: str, assets: Path, vad: SileroVad
) -> None:
    on = segment(assets / name, vad, ON)
    off = segment(assets / name, vad, OFF)
    spans_on, audio_on = utterance_audio(on)
    spans_off, audio_off = utterance_audio(off)
    assert spans_on == spans_off and len(spans_on) >= 6
    assert audio_on == audio_off  # byte for byte
    cands = [e for e in on if isinstance(e, UtteranceUpdate) and e.end_candidate]
    finals = [e for e in on if isinstance(e, UtteranceFinal)]
    assert not any(isinstance(e, UtteranceUpdate) and e.end_candidate for e in off)
    # every final closed by silence had its candidate, ending exactly there: empty tail
    for f in finals:
        if f.reason == "silence":
            assert f.pcm16_tail == b""
            assert any(c.utterance == f.utterance and c.end_sample == f.end_sample for c in cands)
    assert len(cands) >= len([f for f in finals if f.reason == "silence"])


# ------------------------------------------------------------------ the recognizer

GROUP = "g"


def config() -> RecognizerConfig:
    return replace(RecognizerConfig.from_settings(Settings()), group_id=GROUP)


def messages(audio: np.ndarray, *, resume: bool) -> list[UtteranceMessage]:
    """An utterance as the segmenter sends it with speculation on: one interval update, the
    end candidate, then (``resume``) more speech or the final with an empty tail."""
    cuts = [0, RATE // 2, RATE]
    if resume:
        cuts.append(len(audio))
    msgs = []
    for part, (a, b) in enumerate(itertools.pairwise(cuts)):
        msgs.append(
            UtteranceMessage(
                "s", 0, "agent", 0, KIND_UPDATE, part, 0, a, b,
                encode_payload(audio[a:b], PCM_S16LE), origin=GROUP,
                end_candidate=b == RATE,
            )
        )  # fmt: skip
    end = cuts[-1]
    msgs.append(
        UtteranceMessage(
            "s", 0, "agent", 0, KIND_FINAL, len(msgs), 0, end, end, b"",
            reason="silence", origin=GROUP, decided_at_us=1,
        )
    )  # fmt: skip
    return msgs


class Counting:
    """A fake ASR counting its calls: the text says how many samples it heard."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, lid: str, audio: np.ndarray) -> Decoded:
        self.calls.append(len(audio))
        return Decoded(f"heard {len(audio)}", [], 0.0, 0.9, False, 0.0, 0.0, len(audio) / RATE)


async def drive(core: RecognizerCore, msgs: Sequence[UtteranceMessage], decode: Any) -> list[Any]:
    """What the agent does with each message: speculations started, finals awaited."""
    sched = DecodeScheduler(decode, ThreadPoolExecutor(2), workers=2)
    await sched.start()
    finals = []
    try:
        for msg in msgs:
            step = core.accept(msg, 0)
            if step.discarded:
                sched.cancel_speculative(msg.line_id)
            d = step.decode
            if d is None:
                continue
            if d.speculative:
                start_speculation(sched, d)
                await asyncio.sleep(0.05)  # the segmenter still waits out the silence
            elif d.final:
                finals.append(core.finish(d, await final_outcome(sched, d)))
    finally:
        await sched.stop()
    return finals


def test_the_final_takes_the_speculative_decode() -> None:
    asr = Counting()
    core = RecognizerCore(config(), {}, {})
    audio = np.full(2 * RATE, 0.1, np.float32)
    (done,) = asyncio.run(drive(core, messages(audio, resume=False), asr))
    assert asr.calls == [RATE]  # one decode for the final, not two
    assert done.event.raw_text == f"heard {RATE}" and done.event.end_ms == 1000.0
    assert core.stats.speculative_finals == 1
    ts = done.event.timestamps
    assert ts["decode_start_us"] <= ts["decode_end_us"] <= ts["published_at_us"]


def test_new_audio_after_the_candidate_is_decoded_afresh() -> None:
    asr = Counting()
    core = RecognizerCore(config(), {}, {})
    audio = np.full(2 * RATE, 0.1, np.float32)
    (done,) = asyncio.run(drive(core, messages(audio, resume=True), asr))
    assert asr.calls[-1] == 2 * RATE and RATE not in asr.calls[-1:]
    assert done.event.raw_text == f"heard {2 * RATE}"
    assert core.stats.speculative_finals == 0


def test_a_failed_speculation_falls_back_to_a_fresh_decode() -> None:
    asr = Counting()
    failures = iter([True, True])  # the speculation and its one retry

    def flaky(lid: str, audio: np.ndarray) -> Decoded:
        if next(failures, False):
            raise RuntimeError("boom")
        return asr(lid, audio)

    core = RecognizerCore(config(), {}, {})
    audio = np.full(2 * RATE, 0.1, np.float32)
    (done,) = asyncio.run(drive(core, messages(audio, resume=False), flaky))
    assert asr.calls == [RATE] and done.event.error is None
    assert done.event.raw_text == f"heard {RATE}" and core.stats.speculative_finals == 0


def test_speculation_off_decodes_the_final_as_before() -> None:
    asr = Counting()
    core = RecognizerCore(replace(config(), speculative_finals=False), {}, {})
    audio = np.full(2 * RATE, 0.1, np.float32)
    (done,) = asyncio.run(drive(core, messages(audio, resume=False), asr))
    assert asr.calls == [RATE] and core.stats.speculative_finals == 0
    assert done.event.raw_text == f"heard {RATE}"


def test_final_text_with_speculation_equals_without_on_a_real_recording(
    assets: Path, vad: SileroVad
) -> None:
    model = MoonshineAsr.load(intra_threads=1)
    texts = {}
    for flag in (True, False):
        events = segment(assets / "beckett.wav", vad, replace(ON, speculative_finals=flag))
        msgs, parts = [], {}
        for e in events:
            if isinstance(e, UtteranceUpdate | UtteranceFinal):
                part = parts.get(e.utterance, 0)
                parts[e.utterance] = part + 1
                final = isinstance(e, UtteranceFinal)
                msgs.append(
                    UtteranceMessage(
                        "s", 0, "agent", e.utterance, KIND_FINAL if final else KIND_UPDATE,
                        part, e.start_sample, e.offset_sample, e.end_sample,
                        e.pcm16_tail if final else e.pcm16_delta,  # type: ignore[union-attr]
                        origin=GROUP, reason=e.reason if final else None,  # type: ignore[union-attr]
                        end_candidate=not final and e.end_candidate,  # type: ignore[union-attr]
                    )
                )  # fmt: skip
        calls: list[int] = []

        def transcribe(lid: str, audio: np.ndarray, calls: list[int] = calls) -> Decoded:
            calls.append(len(audio))
            return model.transcribe(audio)

        core = RecognizerCore(replace(config(), speculative_finals=flag), {}, {})
        finals = asyncio.run(drive(core, msgs, transcribe))
        texts[flag] = [f.event.text for f in finals]
        if flag:
            assert core.stats.speculative_finals == len(finals) == 6
    assert texts[True] == texts[False] and all(texts[True])
