"""The CPU budget of N live calls on this box: what the model needs against what is left.

Prints figures and writes them to ``bench/results/capacity.json``; never asserts.

1. **The model, today.** The utterances the worker's own segmenter cuts from
   ``two_cities.wav`` and ``endgame_nagg_nell.wav`` (``offline.segment_file``: the streaming
   core, default settings), decoded by the bare model (one ORT thread, ``thread_time``) as a
   line's decodes would be under each scheme: the final only, and a partial every second
   over the last 1 / 1.5 / 2.5 s (2.5 s is ``partial_window_s``) plus the final. Core-seconds
   per second of speech, median of ``--runs``.
2. **What the rest of the pipeline took**, read from a pipeline benchmark's JSON
   (``--pipeline``, default ``results/pipeline_capacity_n48.json``: ``bench_pipeline.py
   --continuous --worker-env split_stages=true``): the segmenter process, the broker and
   the load generator, in cores, at that run's N, and the share of speech in the load.
3. **The budget** for N = 32, 40, 48: the model's cores (N x speech share x core-s per
   speech second) + the rest (scaled by N from the run) against the box's cores.

Run: ``.venv/bin/python bench/bench_capacity.py [--pipeline FILE] [--runs 3]`` (~2 min).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamscribe.processors.asr import SAMPLE_RATE, MoonshineAsr, bundled_recording
from streamscribe.processors.offline import segment_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench modules
from bench_asr_model import Scheme, scheme_calls

RESULTS = Path(__file__).parent / "results" / "capacity.json"
DEFAULT_PIPELINE = Path(__file__).parent / "results" / "pipeline_capacity_n48.json"
FILES = ("two_cities.wav", "endgame_nagg_nell.wav")
SCHEMES = (
    Scheme("finals_only", None, None),
    Scheme("last1s_every_1s", 1.0, 1.0),
    Scheme("last1.5s_every_1s", 1.0, 1.5),
    Scheme("last2.5s_every_1s", 1.0, 2.5),
)
SESSIONS = (32, 40, 48)


def utterances() -> list[np.ndarray]:
    """Every utterance of the files as the worker's segmenter cuts them, at 16 kHz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    out = []
    for name in FILES:
        path = bundled_recording(name)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = data[:, 0]
        if rate != SAMPLE_RATE:
            audio = resample_poly(audio.astype(np.float64), SAMPLE_RATE, rate).astype(np.float32)
        for span in segment_file(path):
            d = span.to_dict()
            a, b = int(d["start_ms"] * 16), int(d["end_ms"] * 16)
            out.append(audio[a:b])
    return out


def scheme_cost(asr: MoonshineAsr, utts: list[np.ndarray], scheme: Scheme, runs: int) -> dict:
    speech_s = sum(len(u) for u in utts) / SAMPLE_RATE
    calls = [c for u in utts for c in scheme_calls(u, scheme)]
    totals = []
    for _ in range(runs):
        t0 = time.thread_time()
        for c in calls:
            asr.transcribe(c)
        totals.append(time.thread_time() - t0)
    total = statistics.median(totals)
    return {
        "decodes": len(calls),
        "speech_s": round(speech_s, 1),
        "core_s_per_speech_s": round(total / speech_s, 4),
        "runs_core_s": [round(t, 2) for t in totals],
    }


def pipeline_rest(path: Path) -> dict[str, Any] | None:
    """The non-model cores of a pipeline run (its first point), or None without the file."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    p = doc["points"][0]
    cpu = p["cpu"]
    stages = cpu.get("stage_cores") or {}
    return {
        "file": str(path.relative_to(Path(__file__).parents[1])),
        "sessions": p["sessions"],
        "speech_share": p["speech_share"],
        "segmenter_cores": stages.get("segmenter"),
        "recognizer_cores": stages.get("recognizer"),
        "broker_cores": cpu.get("broker_cores"),
        "producer_cores": cpu.get("producer_cores"),
        "box_busy_cores": cpu.get("box_busy_cores"),
        "end_of_speech_to_final_p95_ms": p["outside"]["speech_end_to_final_arrival_ms"]["p95"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    started = time.perf_counter()
    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    utts = utterances()
    lengths = sorted(len(u) / SAMPLE_RATE for u in utts)
    print(
        f"{len(utts)} utterances, {sum(lengths):.1f} s of speech, median "
        f"{statistics.median(lengths):.2f} s"
    )
    costs = {}
    for scheme in SCHEMES:
        costs[scheme.name] = scheme_cost(asr, utts, scheme, args.runs)
        c = costs[scheme.name]
        print(f"  {scheme.name:<18} {c['core_s_per_speech_s']:.4f} core-s per speech s "
              f"({c['decodes']} decodes)")  # fmt: skip
    rest = pipeline_rest(args.pipeline)
    cores = os.cpu_count() or 1
    budget = []
    if rest is not None and rest["segmenter_cores"] is not None:
        n0 = rest["sessions"]
        other = rest["segmenter_cores"] + (rest["broker_cores"] or 0) + rest["producer_cores"]
        print(
            f"rest of the pipeline at N={n0} ({rest['file']}): segmenter "
            f"{rest['segmenter_cores']}, broker {rest['broker_cores']}, load generator "
            f"{rest['producer_cores']} cores; speech share {rest['speech_share']}"
        )
        for n in SESSIONS:
            row: dict[str, Any] = {"sessions": n, "rest_cores": round(other * n / n0, 2)}
            for name, c in costs.items():
                model = n * rest["speech_share"] * c["core_s_per_speech_s"]
                row[name] = {
                    "model_cores": round(model, 2),
                    "total_cores": round(model + row["rest_cores"], 2),
                    "share_of_box": round((model + row["rest_cores"]) / cores, 2),
                }
            budget.append(row)
            print(
                f"  N={n}: rest {row['rest_cores']} cores; total with "
                + ", ".join(
                    f"{k} {v['total_cores']}" for k, v in row.items() if isinstance(v, dict)
                )
                + f" of {cores} cores"
            )
    out = {
        "machine": {"cpus": cores, "platform": platform.platform(), "loadavg": os.getloadavg()},
        "utterances": len(utts),
        "speech_s": round(sum(lengths), 1),
        "model": costs,
        "pipeline": rest,
        "budget": budget,
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS} ({out['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
