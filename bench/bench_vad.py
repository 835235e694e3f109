"""Benchmark of the segmenter cores: throughput, CPU cost, VAD batching, state size.

Prints figures and writes them to ``bench/results/vad.json``; never asserts. Run::

    .venv/bin/python bench/bench_vad.py

Measures, on the real recording ``two_cities.wav`` (44 s) from the moonshine-voice wheel:

- one channel through validate + resample + energy gate + VAD + endpointing (100 ms PCM16
  chunks), from a 48 kHz source and from its 16 kHz version: chunks/s and CPU seconds per
  second of audio;
- the Silero VAD call alone at batch sizes 1, 8 and 32: time per call and per frame;
- 8 and 32 channels through :meth:`Segmenters.step` (VAD batched) against the same channels
  pushed one by one: CPU seconds per second of audio per channel;
- the serialised channel state size (median between and inside utterances, max).

Each timing is the best of a few repeats (the machine is shared). Total runtime ~1-2 min.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from streamscribe.processors.reassembly import Chunk
from streamscribe.processors.segmenter import ChannelSegmenter, Segmenters, make_chunks
from streamscribe.processors.vad import FRAME_SAMPLES, SileroVad, VadState

RESULTS: Final = Path(__file__).resolve().parent / "results" / "vad.json"
REPEATS: Final = 3
BATCH_SIZES: Final = (1, 8, 32)
VAD_CALL_FRAMES: Final = 4096  # frames per batch-size measurement
CHANNEL_COUNTS: Final = (8, 32)
MULTI_CHANNEL_SECONDS: Final = 10  # audio per channel in the multi-channel runs


def _asset(name: str) -> Path:
    return Path(str(importlib.resources.files("moonshine_voice") / "assets" / name))


def _best(fn: Callable[[], Any]) -> tuple[float, float]:
    """Best (wall, cpu) seconds of ``REPEATS`` runs of ``fn``."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def bench_channel(vad: SileroVad, chunks: list[Chunk], audio_s: float) -> dict[str, float]:
    """One channel, chunk by chunk, through the whole core."""

    def run() -> None:
        seg = ChannelSegmenter(vad)
        for c in chunks:
            seg.push(c)

    wall, cpu = _best(run)
    return {
        "chunks": len(chunks),
        "audio_s": round(audio_s, 3),
        "chunks_per_s": round(len(chunks) / wall, 1),
        "realtime_factor": round(audio_s / wall, 1),
        "cpu_s_per_audio_s": round(cpu / audio_s, 5),
    }


def bench_vad_batches(vad: SileroVad, frames: np.ndarray) -> dict[str, dict[str, float]]:
    """The ONNX call alone at several batch sizes, on real speech frames."""
    out: dict[str, dict[str, float]] = {}
    for b in BATCH_SIZES:
        calls = VAD_CALL_FRAMES // b
        batch = [frames[(i * b + np.arange(b)) % len(frames)] for i in range(calls)]
        states = [VadState.initial() for _ in range(b)]

        def run(batch: list[np.ndarray] = batch, states: list[VadState] = states) -> None:
            st = states
            for fr in batch:
                st = vad.probs_batch(fr, st).states

        wall, cpu = _best(run)
        out[str(b)] = {
            "us_per_call": round(wall / calls * 1e6, 1),
            "us_per_frame": round(wall / (calls * b) * 1e6, 1),
            "cpu_us_per_frame": round(cpu / (calls * b) * 1e6, 1),
        }
    return out


def bench_many(vad: SileroVad, chunks: list[Chunk], n_channels: int) -> dict[str, float]:
    """``n_channels`` sessions of the same audio (offset by a chunk) batched vs one by one."""
    per_channel = [chunks[i % 7 :] for i in range(n_channels)]
    steps = min(len(c) for c in per_channel)
    audio_s = n_channels * sum(c.n_samples for c in per_channel[0][:steps]) / chunks[0].sample_rate

    def renumber(c: Chunk, seq: int, pos: int) -> Chunk:
        return Chunk(seq, pos, c.n_samples, c.sample_rate, c.payload, c.encoding)

    streams = []
    for chans in per_channel:
        pos, items = 0, []
        for i, c in enumerate(chans[:steps]):
            items.append(renumber(c, i, pos))
            pos += c.n_samples
        streams.append(items)

    def batched() -> None:
        segs = [ChannelSegmenter(vad) for _ in streams]
        shared = Segmenters(vad)
        for step in range(steps):
            shared.step(segs, [s[step] for s in streams])

    def alone() -> None:
        for s in streams:
            seg = ChannelSegmenter(vad)
            for c in s:
                seg.push(c)

    wb, cb = _best(batched)
    wa, ca = _best(alone)
    return {
        "channels": n_channels,
        "audio_s_total": round(audio_s, 2),
        "batched_cpu_s_per_audio_s": round(cb / audio_s, 5),
        "unbatched_cpu_s_per_audio_s": round(ca / audio_s, 5),
        "batched_realtime_channels": round(audio_s / wb, 1),
        "unbatched_realtime_channels": round(audio_s / wa, 1),
        "speedup": round(wa / wb, 2),
    }


def bench_state(vad: SileroVad, chunks: list[Chunk]) -> dict[str, float]:
    """Serialised state size after each chunk, split by whether an utterance is open."""
    seg = ChannelSegmenter(vad)
    idle, speech = [], []
    for c in chunks:
        seg.push(c)
        if seg.ended:
            break
        (speech if seg.in_speech else idle).append(len(seg.to_bytes()))
    t0 = time.perf_counter()
    for _ in range(200):
        blob = seg.to_bytes()
    t1 = time.perf_counter()
    for _ in range(200):
        ChannelSegmenter.from_bytes(blob, vad)
    t2 = time.perf_counter()
    return {
        "bytes_median_between_utterances": statistics.median(idle),
        "bytes_median_in_utterance": statistics.median(speech),
        "bytes_max": max(idle + speech),
        "to_bytes_us": round((t1 - t0) / 200 * 1e6, 1),
        "from_bytes_us": round((t2 - t1) / 200 * 1e6, 1),
    }


def main() -> None:
    """Run every measurement, print it, write ``bench/results/vad.json``."""
    t_start = time.perf_counter()
    vad = SileroVad(intra_op_threads=1)
    x48, sr = sf.read(str(_asset("two_cities.wav")), dtype="float32")
    x16 = resample_poly(x48.astype(np.float64), 1, 3).astype(np.float32)
    audio_s = len(x48) / sr
    chunks48 = make_chunks(x48, sr, 100)
    chunks16 = make_chunks(x16, 16000, 100)

    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "ort_threads": 1,
        },
        "file": "moonshine_voice/assets/two_cities.wav",
    }
    results["channel_48k"] = bench_channel(vad, chunks48, audio_s)
    print("one channel, 48 kHz source:", results["channel_48k"])
    results["channel_16k"] = bench_channel(vad, chunks16, audio_s)
    print("one channel, 16 kHz source:", results["channel_16k"])

    frames = x16[: len(x16) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    results["vad_batch"] = bench_vad_batches(vad, frames)
    for b, r in results["vad_batch"].items():
        print(f"VAD batch {b:>2}: {r}")

    n_multi = MULTI_CHANNEL_SECONDS * 10 + 7
    results["many_channels"] = [bench_many(vad, chunks16[:n_multi], n) for n in CHANNEL_COUNTS]
    for r in results["many_channels"]:
        print("Segmenters.step:", r)

    results["state"] = bench_state(vad, chunks48)
    print("state:", results["state"])
    results["runtime_s"] = round(time.perf_counter() - t_start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS} in {results['runtime_s']} s")


if __name__ == "__main__":
    main()
