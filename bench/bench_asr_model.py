"""Benchmark of the pure ASR core (Moonshine tiny-en on ONNX Runtime, CPU).

Prints figures and writes them to ``bench/results/asr_model.json``; never asserts.

Measures, on the real recordings shipped in ``moonshine-voice``:

1. latency of one 10 s utterance (median of several runs), real-time factor;
2. throughput of 2 threads sharing one instance vs sequential calls;
3. ``intra_op_num_threads`` 2 vs 1;
4. the cost of partial-transcript schemes over ``two_cities.wav`` in core-seconds per
   second of audio (finals only; re-decode the whole utterance so far every 0.5 s / 1 s;
   only the last 3 s every 0.5 s; only the last 2 s every 1 s), both for utterances split
   at pauses (what a VAD hands over) and for the whole 44 s file as one utterance;
5. WER of finals: whole file in one call vs split at pauses;
6. padded batching vs one call per utterance (transcripts and time).

Run: ``.venv/bin/python bench/bench_asr_model.py`` (about 2-4 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from streamscribe.processors.asr import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    SAMPLE_RATE,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.wer
from tests.wer import wer

RESULTS = Path(__file__).parent / "results" / "asr_model.json"
REFERENCES = Path(__file__).parents[1] / "tests" / "data" / "references.json"
LATENCY_RUNS = 7
THROUGHPUT_JOBS = 8
THROUGHPUT_RUNS = 3
SCHEME_RUNS = 3
# Pause detection for splitting two_cities into utterances (a crude stand-in for the VAD).
FRAME = SAMPLE_RATE // 10
SPEECH_DB = -50.0
MIN_PAUSE_FRAMES = 3
PAD_FRAMES = 1
MIN_UTTERANCE_FRAMES = 3


@dataclass(frozen=True)
class Scheme:
    """A partial-transcript scheme: every ``every_s`` decode the last ``window_s`` seconds
    (``None``: the whole utterance so far); every utterance also gets one final decode."""

    name: str
    every_s: float | None
    window_s: float | None


SCHEMES = (
    Scheme("finals_only", None, None),
    Scheme("whole_every_0.5s", 0.5, None),
    Scheme("whole_every_1s", 1.0, None),
    Scheme("last3s_every_0.5s", 0.5, 3.0),
    Scheme("last2s_every_1s", 1.0, 2.0),
)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def cpu_seconds(asr: MoonshineAsr, audio: np.ndarray) -> float:
    """Core-seconds of one call (intra_op=1 runs in the calling thread)."""
    start = time.thread_time()
    asr.transcribe(audio)
    return time.thread_time() - start


def latency(asr: MoonshineAsr, audio: np.ndarray) -> dict[str, float]:
    runs = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        result = asr.transcribe(audio)
        runs.append((time.perf_counter() - start, result.encode_s, result.decode_s))
    total = median([r[0] for r in runs])
    return {
        "audio_s": audio.shape[0] / SAMPLE_RATE,
        "tokens": len(result.token_ids),
        "total_s_median": total,
        "encode_s_median": median([r[1] for r in runs]),
        "decode_s_median": median([r[2] for r in runs]),
        "rtf": total / (audio.shape[0] / SAMPLE_RATE),
        "text": result.text,
    }


def throughput(asr: MoonshineAsr, audio: np.ndarray, threads: int) -> float:
    """Median wall seconds for THROUGHPUT_JOBS calls on ``threads`` threads."""
    walls = []
    for _ in range(THROUGHPUT_RUNS):
        start = time.perf_counter()
        if threads == 1:
            for _ in range(THROUGHPUT_JOBS):
                asr.transcribe(audio)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(asr.transcribe, [audio] * THROUGHPUT_JOBS))
        walls.append(time.perf_counter() - start)
    return median(walls)


def split_at_pauses(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) samples of speech runs separated by >= MIN_PAUSE_FRAMES of quiet."""
    n_frames = audio.shape[0] // FRAME
    frames = audio[: n_frames * FRAME].reshape(n_frames, FRAME)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    speech = np.flatnonzero(level > SPEECH_DB)
    runs: list[list[int]] = []
    for f in speech.tolist():
        if runs and f - runs[-1][1] <= MIN_PAUSE_FRAMES:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return [
        (max(0, a - PAD_FRAMES) * FRAME, min(n_frames, b + 1 + PAD_FRAMES) * FRAME)
        for a, b in runs
        if b + 1 - a >= MIN_UTTERANCE_FRAMES
    ]


def scheme_calls(utterance: np.ndarray, scheme: Scheme) -> list[np.ndarray]:
    """The audio of every decode the scheme runs for one utterance (partials + final)."""
    calls = []
    if scheme.every_s is not None:
        step = int(scheme.every_s * SAMPLE_RATE)
        for end in range(step, utterance.shape[0], step):
            start = (
                0 if scheme.window_s is None else max(0, end - int(scheme.window_s * SAMPLE_RATE))
            )
            calls.append(utterance[start:end])
    calls.append(utterance)
    return calls


def scheme_cost(
    asr: MoonshineAsr, utterances: list[np.ndarray], scheme: Scheme, runs: int
) -> dict[str, Any]:
    audio_s = sum(u.shape[0] for u in utterances) / SAMPLE_RATE
    calls = [c for u in utterances for c in scheme_calls(u, scheme)]
    totals, per_call = [], []
    for _ in range(runs):
        costs = [cpu_seconds(asr, c) for c in calls]
        totals.append(sum(costs))
        per_call.extend(costs)
    total = median(totals)
    return {
        "decodes": len(calls),
        "core_s_median": total,
        "core_s_per_audio_s": total / audio_s,
        "per_decode_ms_median": 1000 * median(per_call),
        "per_decode_ms_max": 1000 * max(per_call),
    }


def batched_greedy(asr: MoonshineAsr, clips: list[np.ndarray], max_tokens: int = 96) -> list[str]:
    """Zero-padded batch decode with attention masks (experiment; not part of the core)."""
    enc, dec, tok = asr._encoder, asr._decoder, asr._tokenizer
    layout = asr._layout
    batch, longest = len(clips), max(c.shape[0] for c in clips)
    x = np.zeros((batch, longest), dtype=np.float32)
    mask = np.zeros((batch, longest), dtype=np.int64)
    for i, clip in enumerate(clips):
        x[i, : clip.shape[0]], mask[i, : clip.shape[0]] = clip, 1
    (hidden,) = enc.run(["last_hidden_state"], {"input_values": x, "attention_mask": mask})
    empty = np.zeros((batch, layout.num_heads, 0, layout.head_dim), dtype=np.float32)
    feed: dict[str, Any] = dict.fromkeys(layout.past_names, empty)
    feed |= {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}
    tokens = np.full((batch, 1), BOS_TOKEN_ID, dtype=np.int64)
    out_ids: list[list[int]] = [[] for _ in clips]
    done = np.zeros(batch, dtype=bool)
    names = [*asr._first_outputs]
    for step in range(max_tokens):
        feed["use_cache_branch"] = np.array([step > 0])
        feed["input_ids"] = tokens
        outputs = dec.run(names, feed)
        nxt = outputs[0][:, -1].argmax(axis=-1)
        for i in range(batch):
            if not done[i]:
                done[i] = nxt[i] == EOS_TOKEN_ID
                if not done[i]:
                    out_ids[i].append(int(nxt[i]))
        if done.all():
            break
        for name, value in zip(names[1:], outputs[1:], strict=True):
            feed["past_key_values." + name.removeprefix("present.")] = value
        names = [*asr._step_outputs]
        tokens = np.where(done, EOS_TOKEN_ID, nxt)[:, None].astype(np.int64)
    return [" ".join(tok.decode(ids, skip_special_tokens=True).split()) for ids in out_ids]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    started = time.perf_counter()
    references = json.loads(REFERENCES.read_text(encoding="utf-8"))
    two_cities = read_audio_16k(bundled_recording("two_cities.wav"))
    ten_s = two_cities[SAMPLE_RATE // 2 : SAMPLE_RATE // 2 + 10 * SAMPLE_RATE]
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    asr2 = MoonshineAsr.load(intra_threads=2)
    asr2.warm_up()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
        }
    }

    out["latency_10s_intra1"] = latency(asr, ten_s)
    out["latency_10s_intra2"] = latency(asr2, ten_s)
    lat1, lat2 = out["latency_10s_intra1"], out["latency_10s_intra2"]
    print(
        f"10 s speech, intra=1: total {lat1['total_s_median'] * 1000:.0f} ms "
        f"(encode {lat1['encode_s_median'] * 1000:.0f} ms, decode "
        f"{lat1['decode_s_median'] * 1000:.0f} ms, {lat1['tokens']} tokens), "
        f"RTF {lat1['rtf']:.4f}"
    )
    print(
        f"10 s speech, intra=2: total {lat2['total_s_median'] * 1000:.0f} ms, RTF "
        f"{lat2['rtf']:.4f}; speed-up x{lat1['total_s_median'] / lat2['total_s_median']:.2f}"
    )

    seq = throughput(asr, ten_s, threads=1)
    par = throughput(asr, ten_s, threads=2)
    par_intra2 = throughput(asr2, ten_s, threads=2)
    out["throughput_10s"] = {
        "jobs": THROUGHPUT_JOBS,
        "sequential_intra1_s": seq,
        "two_threads_intra1_s": par,
        "two_threads_intra2_s": par_intra2,
        "ratio_two_threads_vs_sequential": seq / par,
        "ratio_two_threads_intra2_vs_sequential": seq / par_intra2,
    }
    print(
        f"throughput, {THROUGHPUT_JOBS} x 10 s: sequential {seq:.2f} s, 2 threads on one "
        f"instance {par:.2f} s (x{seq / par:.2f}), 2 threads with intra=2 {par_intra2:.2f} s "
        f"(x{seq / par_intra2:.2f})"
    )

    spans = split_at_pauses(two_cities)
    utterances = [two_cities[a:b] for a, b in spans]
    whole, whole_s = timed(lambda: asr.transcribe(two_cities))
    finals = [asr.transcribe(u).text for u in utterances]
    reference = references["two_cities.wav"]
    out["two_cities_wer"] = {
        "whole_file_one_call": wer(reference, whole.text),
        "whole_file_s": whole_s,
        "split_at_pauses": wer(reference, " ".join(finals)),
        "utterances": len(utterances),
        "utterance_s": [round((b - a) / SAMPLE_RATE, 2) for a, b in spans],
        "whole_text": whole.text,
        "split_texts": finals,
    }
    print(
        f"two_cities WER: whole 44 s in one call {out['two_cities_wer']['whole_file_one_call']:.3f}"
        f" ({whole_s:.2f} s); split at pauses into {len(utterances)} utterances "
        f"{out['two_cities_wer']['split_at_pauses']:.3f}"
    )

    out["partial_schemes_split"] = {}
    out["partial_schemes_one_utterance"] = {}
    print("partial schemes, core-s per s of audio (median):")
    for scheme in SCHEMES:
        split = scheme_cost(asr, utterances, scheme, SCHEME_RUNS)
        single = scheme_cost(asr, [two_cities], scheme, 1)
        out["partial_schemes_split"][scheme.name] = split | asdict(scheme)
        out["partial_schemes_one_utterance"][scheme.name] = single | asdict(scheme)
        print(
            f"  {scheme.name:<18} split at pauses {split['core_s_per_audio_s']:.4f} "
            f"({split['decodes']} decodes, median {split['per_decode_ms_median']:.0f} ms); "
            f"whole 44 s as one utterance {single['core_s_per_audio_s']:.4f} "
            f"({single['decodes']} decodes, max {single['per_decode_ms_max']:.0f} ms)"
        )

    singles, single_s = timed(lambda: [asr.transcribe(u).text for u in utterances])
    half = len(utterances) // 2
    batched, batched_s = timed(
        lambda: batched_greedy(asr, utterances[:half]) + batched_greedy(asr, utterances[half:])
    )
    same = sum(a == b for a, b in zip(singles, batched, strict=True))
    out["padded_batching"] = {
        "utterances": len(utterances),
        "batches": 2,
        "identical_transcripts": same,
        "single_calls_s": single_s,
        "batched_s": batched_s,
        "differences": [[a, b] for a, b in zip(singles, batched, strict=True) if a != b],
    }
    print(
        f"padded batching: {same}/{len(utterances)} transcripts identical; "
        f"one call each {single_s:.2f} s vs 2 batches {batched_s:.2f} s"
    )

    out["bench_wall_s"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS} ({out['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
