"""Benchmark: what a draft saves a decode (``MoonshineAsr.transcribe(audio, draft)``).

A line is decoded many times (partials, a speculation, the final); the recognizer passes
the tokens of its earlier decodes as a draft (``processors/drafts.py``), which the decoder
checks in one run (``asr_graph.prefill_decoder``) and only decodes one by one where it is
wrong. On pieces of 3-10 s of the three bundled recordings, in alternating rounds, the CPU
time of one ``transcribe`` (encoder included) with:

- ``none``: no draft (today's decode, the reference);
- ``own``: the decode's own tokens (a speculation whose silence held, or a final after a
  partial of the whole audio);
- ``prefix80``: the tokens of the first 80 % of the audio (a partial a little behind);
- ``halves``: the two halves decoded apart and joined (a partial's committed block and
  tail: the joint differs, so the decoder must find its way back into the draft);
- ``junk``: 30 random tokens (a wrong draft: what it costs).

Prints per kind the median CPU ratio to ``none``, the decoder runs and whether every
token equals ``none``'s.

Then **whole lines, as the recognizer decodes them**: every utterance of the three
recordings (the offline segmenter's spans) fed to a :class:`RecognizerLine` in 100 ms
parts, a partial decoded whenever one is due (the default policy: every 0.5 s of new
audio, the tail window cut past 2.5 s), then the final; each decode alone (as at light
load), through a :class:`DraftBook` as the worker does, or without drafts, alternating.
Reported: the CPU of all partials and of all finals in each arm, the share of tokens taken
from drafts, and how many finals differ from the decode without a draft.

Writes ``bench/results/drafts.json``; never asserts.
Run: ``.venv/bin/python bench/bench_drafts.py [--rounds 3]`` (about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamscribe.processors.asr import MoonshineAsr, bundled_recording, read_audio_16k
from streamscribe.processors.drafts import DraftBook
from streamscribe.processors.offline import segment_file
from streamscribe.processors.recognizer_line import PartialPolicy, RecognizerLine
from streamscribe.schemas.pcm import encode_payload

RATE = 16000
KINDS = ("none", "own", "prefix80", "halves", "junk")


def pieces() -> list[tuple[str, np.ndarray]]:
    out = []
    for name in ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav"):
        audio = read_audio_16k(bundled_recording(name))
        for a, b in ((0, 6), (6, 14), (14, 20), (20, 30)):
            seg = audio[a * RATE : b * RATE]
            if len(seg) >= 3 * RATE:
                out.append((f"{name.removesuffix('.wav')}[{a}:{b}s]", seg))
    return out


def utterances() -> list[tuple[str, np.ndarray]]:
    out = []
    for name in ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav"):
        path = bundled_recording(name)
        audio = read_audio_16k(path)
        for k, span in enumerate(segment_file(path)):
            out.append((f"{name}#{k}", audio[span.start_sample : span.end_sample]))
    return out


def run_line(
    model: MoonshineAsr, lid: str, audio: np.ndarray, book: DraftBook | None
) -> tuple[float, float, list[int]]:
    """CPU of the partials and of the final of one line, and the final's tokens."""
    line = RecognizerLine("agent", 0)
    policy = PartialPolicy()
    part_cpu = 0.0

    def decode(seg: np.ndarray) -> Any:
        draft = book.draft(lid, seg) if book is not None else None
        decoded = model.transcribe(seg, draft)
        if book is not None:
            book.decoded(lid, seg, draft or [], decoded)
        return decoded

    step = RATE // 10
    for part, start in enumerate(range(0, len(audio), step)):
        chunk = audio[start : start + step]
        line.append(part, start + len(chunk), encode_payload(chunk, "pcm_s16le"))
        if line.partial_due(policy):
            job = line.job(final=False, policy=policy)
            t = time.process_time()
            texts = [decode(seg).text for seg in job.segments]
            part_cpu += time.process_time() - t
            line.apply_partial(job, texts)
    job = line.job(final=True)
    t = time.process_time()
    final = decode(job.audio)
    final_cpu = time.process_time() - t
    if book is not None:
        book.forget(lid)
    return part_cpu, final_cpu, final.token_ids


def lines(model: MoonshineAsr, rounds: int) -> dict[str, Any]:
    utts = utterances()
    cpu = {arm: {"partials": [], "finals": []} for arm in ("plain", "drafts")}
    differ = 0
    book = DraftBook()
    for r in range(rounds):
        totals = {arm: [0.0, 0.0] for arm in cpu}
        for lid, audio in utts:
            tokens = {}
            for arm in ("plain", "drafts") if r % 2 == 0 else ("drafts", "plain"):
                p, f, tokens[arm] = run_line(model, lid, audio, book if arm == "drafts" else None)
                totals[arm][0] += p
                totals[arm][1] += f
            differ += r == 0 and tokens["plain"] != tokens["drafts"]
        for arm, (p, f) in totals.items():
            cpu[arm]["partials"].append(p)
            cpu[arm]["finals"].append(f)
    med = {arm: {k: statistics.median(v) for k, v in d.items()} for arm, d in cpu.items()}
    stats = book.stats
    out = {
        "utterances": len(utts),
        "audio_s": round(sum(len(a) for _, a in utts) / RATE, 1),
        "cpu_s": {arm: {k: round(v, 3) for k, v in d.items()} for arm, d in med.items()},
        "ratio": {k: round(med["drafts"][k] / med["plain"][k], 3) for k in ("partials", "finals")},
        "ratio_all": round(sum(med["drafts"].values()) / sum(med["plain"].values()), 3),
        "decodes_with_draft": f"{stats.drafted} of {stats.decodes}",
        "tokens_from_drafts": round(stats.draft_tokens / max(1, stats.tokens), 3),
        "finals_differing": differ,
    }
    print(
        f"lines: {out['utterances']} utterances, {out['audio_s']} s; CPU plain / drafts: "
        f"partials {med['plain']['partials']:.2f} / {med['drafts']['partials']:.2f} s "
        f"(x{out['ratio']['partials']}), finals {med['plain']['finals']:.2f} / "
        f"{med['drafts']['finals']:.2f} s (x{out['ratio']['finals']}), all x{out['ratio_all']}; "
        f"decodes with a draft {out['decodes_with_draft']}, tokens from drafts "
        f"{out['tokens_from_drafts']:.0%}; finals differing from the plain decode: {differ}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "drafts.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = MoonshineAsr.load(intra_threads=1, drafts=True)
    load_s = time.perf_counter() - t0
    model.warm_up()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for label, seg in pieces():
        ref = model.transcribe(seg)
        half = len(seg) // 2
        drafts: dict[str, list[int] | None] = {
            "none": None,
            "own": ref.token_ids,
            "prefix80": model.transcribe(seg[: int(len(seg) * 0.8)]).token_ids,
            "halves": model.transcribe(seg[:half]).token_ids
            + model.transcribe(seg[half:]).token_ids,
            "junk": [int(t) for t in rng.integers(100, 30000, 30)],
        }
        cpu: dict[str, list[float]] = {k: [] for k in KINDS}
        result: dict[str, Any] = {}
        for _ in range(args.rounds):
            for kind in KINDS:
                start = time.process_time()
                result[kind] = model.transcribe(seg, drafts[kind])
                cpu[kind].append(time.process_time() - start)
        base = statistics.median(cpu["none"])
        row = {
            "piece": label,
            "audio_s": round(len(seg) / RATE, 2),
            "tokens": len(ref.token_ids),
            "none_cpu_ms": round(1000 * base, 1),
        }
        for kind in KINDS[1:]:
            row[kind] = {
                "ratio": round(statistics.median(cpu[kind]) / base, 3),
                "runs": result[kind].decoder_runs,
                "draft_tokens": result[kind].draft_tokens,
                "same_tokens": result[kind].token_ids == ref.token_ids,
            }
        rows.append(row)
        print(
            f"{label:24s} {row['tokens']:3d} tok none {row['none_cpu_ms']:6.1f} ms  "
            + "  ".join(f"{k} x{row[k]['ratio']:.2f} ({row[k]['runs']} runs)" for k in KINDS[1:]),
            flush=True,
        )
    summary = {
        kind: {
            "median_ratio": round(statistics.median(r[kind]["ratio"] for r in rows), 3),
            "all_tokens_same": all(r[kind]["same_tokens"] for r in rows),
        }
        for kind in KINDS[1:]
    }
    print("median CPU ratio to no draft:", {k: v["median_ratio"] for k, v in summary.items()})
    print("every token the same:", all(v["all_tokens_same"] for v in summary.values()))
    print(f"model load with the draft graphs: {load_s:.2f} s")
    line_figures = lines(model, args.rounds)
    out = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "rounds": args.rounds,
        "load_s": round(load_s, 2),
        "pieces": rows,
        "summary": summary,
        "lines": line_figures,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
