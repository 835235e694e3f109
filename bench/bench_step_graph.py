"""Benchmark: decoder steps through the merged decoder's ``If`` vs its with-cache step graph.

``MoonshineAsr.load(step_graph=True)`` (the default) runs every decoder step after the
first on the with-cache branch as a graph of its own (``processors/asr_graph.py``);
``step_graph=False`` runs the merged decoder, whose ``If`` also copies the whole
cross-attention cache out on every step. Both models are loaded in this one process and
measured in alternating rounds on the same audio, so the box's speed (which varies by a
factor of two between days here) cancels out of the ratio:

1. pieces of 1.5, 3, 6 and 10 s of the bundled recordings, one ``transcribe`` each:
   CPU seconds per audio second and ms per decoder step, median of the rounds;
2. the offline path (``transcribe_file``: segmentation, then one final per utterance) on
   the three bundled recordings: CPU seconds, and whether the utterances are identical;
3. what it costs: the time to build the step graph from the ORT file at load.

Prints the figures and writes ``bench/results/step_graph.json``; never asserts.
Run: ``.venv/bin/python bench/bench_step_graph.py [--rounds 5]`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from streamscribe.processors.asr import (
    SAMPLE_RATE,
    ModelFiles,
    MoonshineAsr,
    bundled_recording,
    read_audio_16k,
)
from streamscribe.processors.asr_graph import cache_step_decoder
from streamscribe.processors.offline import transcribe_file

RESULTS = Path(__file__).parent / "results" / "step_graph.json"
RECORDINGS = ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav")
LENGTHS_S = (1.5, 3.0, 6.0, 10.0)


def pieces(audios: Sequence[np.ndarray], length_s: float) -> list[np.ndarray]:
    n = int(length_s * SAMPLE_RATE)
    return [a[i : i + n] for a in audios for i in range(0, len(a) - n, n)]


def run_pieces(asr: MoonshineAsr, clips: list[np.ndarray]) -> dict[str, Any]:
    t0 = time.process_time()
    decoded = [asr.transcribe(c) for c in clips]
    cpu = time.process_time() - t0
    steps = sum(len(d.token_ids) + 1 for d in decoded)
    return {
        "cpu_s": cpu,
        "decode_s": sum(d.decode_s for d in decoded),
        "encode_s": sum(d.encode_s for d in decoded),
        "steps": steps,
        "tokens": [d.token_ids for d in decoded],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    t0 = time.perf_counter()
    cache_step_decoder(ModelFiles.bundled().decoder)
    build_s = time.perf_counter() - t0
    arms = {
        "merged": MoonshineAsr.load(intra_threads=1, step_graph=False),
        "step_graph": MoonshineAsr.load(intra_threads=1, step_graph=True),
    }
    for asr in arms.values():
        asr.warm_up()
    audios = [read_audio_16k(bundled_recording(name)) for name in RECORDINGS]
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "loadavg": os.getloadavg(),
        },
        "rounds": args.rounds,
        "build_step_graph_s": round(build_s, 2),
        "pieces": {},
    }
    print(f"step graph built from the ORT file in {build_s:.2f} s")
    for length in LENGTHS_S:
        clips = pieces(audios, length)
        audio_s = len(clips) * length
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, asr in arms.items():
                rows[name].append(run_pieces(asr, clips))
        entry: dict[str, Any] = {"clips": len(clips), "audio_s": audio_s}
        for name, runs in rows.items():
            entry[name] = {
                "cpu_s_per_audio_s": round(
                    statistics.median(r["cpu_s"] for r in runs) / audio_s, 5
                ),
                "ms_per_step": round(
                    1000 * statistics.median(r["decode_s"] / r["steps"] for r in runs), 3
                ),
                "encode_ms_per_clip": round(
                    1000 * statistics.median(r["encode_s"] for r in runs) / len(clips), 2
                ),
            }
        entry["same_tokens"] = rows["merged"][0]["tokens"] == rows["step_graph"][0]["tokens"]
        entry["cpu_ratio"] = round(
            entry["step_graph"]["cpu_s_per_audio_s"] / entry["merged"]["cpu_s_per_audio_s"], 3
        )
        entry["step_ratio"] = round(
            entry["step_graph"]["ms_per_step"] / entry["merged"]["ms_per_step"], 3
        )
        out["pieces"][f"{length:g}s"] = entry
        print(
            f"{length:4g} s x {len(clips):3d}: merged {entry['merged']['cpu_s_per_audio_s']:.4f}"
            f" core-s/s ({entry['merged']['ms_per_step']:.2f} ms a step), step graph "
            f"{entry['step_graph']['cpu_s_per_audio_s']:.4f} "
            f"({entry['step_graph']['ms_per_step']:.2f} ms); CPU x{entry['cpu_ratio']:.3f}, "
            f"a step x{entry['step_ratio']:.3f}; same tokens: {entry['same_tokens']}"
        )

    offline: dict[str, Any] = {name: [] for name in arms}
    texts: dict[str, Any] = {}
    for _ in range(max(1, args.rounds // 2)):
        for name, asr in arms.items():
            t0 = time.process_time()
            results = [
                u.to_dict()
                for r in RECORDINGS
                for u in transcribe_file(bundled_recording(r), asr=asr)
            ]
            offline[name].append(time.process_time() - t0)
            texts[name] = results
    out["offline"] = {
        "recordings": list(RECORDINGS),
        "utterances": len(texts["merged"]),
        "merged_cpu_s": round(statistics.median(offline["merged"]), 2),
        "step_graph_cpu_s": round(statistics.median(offline["step_graph"]), 2),
        "identical_utterances": texts["merged"] == texts["step_graph"],
    }
    o = out["offline"]
    print(
        f"offline transcribe_file of {len(RECORDINGS)} recordings ({o['utterances']} utterances,"
        f" segmentation included): merged {o['merged_cpu_s']} CPU-s, step graph "
        f"{o['step_graph_cpu_s']} CPU-s; identical: {o['identical_utterances']}"
    )
    out["bench_wall_s"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({out['bench_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
