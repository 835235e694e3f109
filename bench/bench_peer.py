"""Peer baseline: moonshine-voice's own streaming transcriber on this machine.

Prints a table and writes ``bench/results/peer.json``; never asserts on a number.

The peer is ``moonshine_voice.transcriber.Transcriber`` (moonshine-voice 0.1.0, C++ core on
ONNX Runtime) with the wheel's bundled ``assets/tiny-en`` model (``ModelArch.TINY``, nothing
downloads). Each stream is ``Transcriber.create_stream(update_interval)``: ``start()``, then
``add_audio`` of 100 ms chunks of 16 kHz audio — the stream itself calls
``update_transcription`` (VAD + re-decode of the open line) each time another
``update_interval`` of stream time has arrived, on the calling thread — then ``stop()``,
which flushes the last line. Its listener events (``LineStarted`` / ``LineUpdated`` /
``LineTextChanged`` / ``LineCompleted``) are stamped with ``time.monotonic()``, which is the
same clock in every process.

Input: ``two_cities.wav`` (48 kHz) resampled to 16 kHz with librosa, since the peer wants
16 kHz; for durations longer than the file (44.4 s) the file is repeated.

Measured:

a. **as fast as possible** (one process, whole file, ``--asap-runs`` runs): real-time factor
   (wall / audio), CPU cores used (process CPU time over all threads / wall) and core-seconds
   per audio second;
b. **real-time pace, N concurrent streams** (one process per stream, ``--streams``, each
   ``--duration-s`` of audio): chunk ``k`` is handed over at ``t0 + (k + 1) * 0.1 s`` — when
   a live source would have it — with stream starts staggered evenly over one update
   interval. A stream *keeps up* when its last line completes within ``--keep-up-s`` of the
   audio end (wall); the feed lag (how late ``add_audio`` could take a chunk) shows whether
   the backlog stays bounded;
c. **end of speech -> line completed**: for each completed line, the wall time of its
   ``LineCompleted`` minus the wall time its end (``start_time + duration``, audio time)
   was handed over at real-time pace; mean / median / p95 over lines, per N;
d. **WER** of the joined completed lines of the whole file (from the as-fast-as-possible
   run; the stream is driven by stream time, so the text does not depend on pace) against
   ``tests/data/references.json`` after lowercasing and removing punctuation.

What the peer's API cannot do is reported, not worked around: ONNX Runtime's thread count
is not among the transcriber's options (its option parser accepts vad_*, transcription
interval, max_tokens_per_second, word timestamps, speakers, logging, ORT provider), so each
process runs ORT's default intra-op pools (per session, the calling thread plus one worker
thread per further core, which ORT pins to that core: CPU 1 here, in every process) rather
than 1 thread.

Run: ``.venv/bin/python bench/bench_peer.py`` (about 5 minutes on 2 cores);
longer: ``--streams 1 2 3 4 5 6 8 12 --duration-s 120 --asap-runs 5``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "peer.json"
REFERENCES = Path(__file__).parents[1] / "tests" / "data" / "references.json"
RATE = 16_000
RECORDING = "two_cities.wav"
MODEL_DIR = "tiny-en"
READY_TIMEOUT_S = 120.0
START_MARGIN_S = 0.5  # between "all streams loaded" and the first chunk's hand-over
BUSY_SAMPLE_S = 1.0  # idle look at the machine's load before each real-time run
DRAIN_LIMIT_S = 120.0  # a stream still running this long after its audio end is stopped


# --------------------------------------------------------------------------- one stream


@dataclass(frozen=True)
class StreamJob:
    """What one peer process does."""

    index: int
    audio: np.ndarray  # float32, 16 kHz mono
    chunk_ms: int
    update_interval_s: float
    realtime: bool
    offset_s: float = 0.0  # stagger of this stream's start after the common start


@dataclass
class LineRecord:
    """One completed line of the peer."""

    line_id: int
    start_s: float  # audio time
    end_s: float  # audio time: start_time + duration
    text: str
    completed_at: float  # monotonic
    peer_latency_ms: int  # the peer's own last_transcription_latency_ms


@dataclass
class StreamResult:
    """What one peer process measured (times are ``time.monotonic()``)."""

    index: int
    audio_s: float
    load_s: float
    threads_after_load: int
    threads_max: int
    thread_cpus: list[str]  # after load: allowed CPUs of each thread
    started_at: float = 0.0  # hand-over time of audio position 0
    fed_at: float = 0.0  # after the last add_audio returned
    stopped_at: float = 0.0  # after stop() returned
    cpu_s: float = 0.0  # process CPU time (all threads) from start to stop
    lag_max_s: float = 0.0  # latest any chunk could be handed over, vs its schedule
    lag_last_s: float = 0.0
    lag_p95_s: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    lines: list[LineRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _thread_cpus() -> list[str]:
    """``Cpus_allowed_list`` of every thread of this process (ORT pins its pool threads)."""
    cpus = []
    for task in sorted(os.listdir("/proc/self/task")):
        status = Path(f"/proc/self/task/{task}/status").read_text()
        cpus.append(status.split("Cpus_allowed_list:")[1].split()[0])
    return cpus


def run_stream(job: StreamJob, ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """Body of one peer process: load, wait for ``go``, feed the audio, report."""
    from moonshine_voice import ModelArch, get_model_path
    from moonshine_voice.transcriber import Error, LineCompleted, Transcriber

    t0 = time.monotonic()
    transcriber = Transcriber(str(get_model_path(MODEL_DIR)), ModelArch.TINY)
    stream = transcriber.create_stream(job.update_interval_s)
    load_s = time.monotonic() - t0
    res = StreamResult(
        job.index, len(job.audio) / RATE, load_s, _threads(), _threads(), _thread_cpus()
    )
    seen: set[int] = set()

    def listener(event: Any) -> None:
        now = time.monotonic()
        name = type(event).__name__
        res.events[name] = res.events.get(name, 0) + 1
        if isinstance(event, Error):
            res.errors.append(str(event.error))
        elif isinstance(event, LineCompleted) and event.line.line_id not in seen:
            line = event.line
            seen.add(line.line_id)
            res.lines.append(
                LineRecord(
                    line.line_id,
                    line.start_time,
                    line.start_time + line.duration,
                    line.text,
                    now,
                    line.last_transcription_latency_ms,
                )
            )

    stream.add_listener(listener)
    ready.put(job.index)
    go.wait()
    step = RATE * job.chunk_ms // 1000
    lags: list[float] = []
    stream.start()
    cpu0 = time.process_time()
    res.started_at = start_at.value + job.offset_s if job.realtime else time.monotonic()
    for k, pos in enumerate(range(0, len(job.audio), step)):
        due = res.started_at + min(pos + step, len(job.audio)) / RATE
        if job.realtime:
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            lags.append(max(0.0, time.monotonic() - due))
        stream.add_audio(job.audio[pos : pos + step].tolist(), RATE)
        if k % 50 == 0:
            res.threads_max = max(res.threads_max, _threads())
        if job.realtime and time.monotonic() - due > DRAIN_LIMIT_S:
            res.errors.append(f"stopped feeding: more than {DRAIN_LIMIT_S:.0f} s behind")
            break
    res.fed_at = time.monotonic()
    stream.stop()
    res.stopped_at = time.monotonic()
    res.cpu_s = time.process_time() - cpu0
    if lags:
        res.lag_max_s, res.lag_last_s = max(lags), lags[-1]
        res.lag_p95_s = float(np.percentile(lags, 95))
    stream.close()
    transcriber.close()
    results.put(asdict(res))


def run_streams(jobs: Sequence[StreamJob]) -> tuple[list[dict[str, Any]], float]:
    """Run every job in its own (spawned) process; returns their results and the start time."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=run_stream, args=(job, ready, go, start_at, results), daemon=True)
        for job in jobs
    ]
    for p in procs:
        p.start()
    for _ in jobs:
        ready.get(timeout=READY_TIMEOUT_S)
    start_at.value = time.monotonic() + START_MARGIN_S
    go.set()
    longest = max(len(j.audio) / RATE + j.offset_s for j in jobs)
    deadline = start_at.value + longest + DRAIN_LIMIT_S + 60
    out = []
    for _ in jobs:
        out.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join()
    return sorted(out, key=lambda r: r["index"]), start_at.value


# --------------------------------------------------------------------------- figures


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float) -> float:
    """Cores the whole machine keeps busy over the next ``seconds`` (other tenants' load)."""
    busy0, total0 = cpu_busy()
    time.sleep(seconds)
    busy1, total1 = cpu_busy()
    return (busy1 - busy0) / max(total1 - total0, 1.0) * (os.cpu_count() or 1)


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "mean": float(statistics.fmean(values)),
        "median": float(statistics.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(max(values)),
    }


def load_audio(duration_s: float | None) -> np.ndarray:
    """two_cities.wav at 16 kHz, cut to (or repeated up to) ``duration_s``."""
    import librosa
    import soundfile as sf
    from moonshine_voice import get_assets_path

    data, rate = sf.read(str(get_assets_path() / RECORDING), dtype="float32", always_2d=True)
    audio = librosa.resample(data.mean(axis=1), orig_sr=rate, target_sr=RATE).astype(np.float32)
    if duration_s is None:
        return audio
    n = round(duration_s * RATE)
    return np.tile(audio, math.ceil(n / len(audio)))[:n].copy()


def latencies(result: dict[str, Any]) -> list[float]:
    """End of speech (handed over at real-time pace) -> LineCompleted, per line, seconds."""
    return [
        line["completed_at"] - (result["started_at"] + line["end_s"]) for line in result["lines"]
    ]


def asap(audio: np.ndarray, args: argparse.Namespace, reference: str) -> dict[str, Any]:
    runs = []
    for _ in range(args.asap_runs):
        job = StreamJob(0, audio, args.chunk_ms, args.update_interval_s, realtime=False)
        (r,), _ = run_streams([job])
        wall = r["stopped_at"] - r["started_at"]
        text = " ".join(line["text"] for line in r["lines"])
        runs.append(
            {
                "wall_s": wall,
                "cpu_s": r["cpu_s"],
                "rtf": wall / r["audio_s"],
                "cpu_cores": r["cpu_s"] / wall,
                "core_s_per_audio_s": r["cpu_s"] / r["audio_s"],
                "load_s": r["load_s"],
                "threads_after_load": r["threads_after_load"],
                "threads_max": r["threads_max"],
                "thread_cpus_after_load": r["thread_cpus"],
                "lines": len(r["lines"]),
                "events": r["events"],
                "errors": r["errors"],
                "text": text,
            }
        )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.wer
    from tests.wer import error_counts

    best = min(runs, key=lambda x: x["rtf"])
    errors = error_counts(reference, best["text"])
    return {
        "audio_s": len(audio) / RATE,
        "runs": runs,
        "rtf_median": statistics.median(x["rtf"] for x in runs),
        "cpu_cores_median": statistics.median(x["cpu_cores"] for x in runs),
        "core_s_per_audio_s_median": statistics.median(x["core_s_per_audio_s"] for x in runs),
        "texts_identical_across_runs": len({x["text"] for x in runs}) == 1,
        "wer": {
            "wer": errors.wer,
            "substitutions": errors.substitutions,
            "deletions": errors.deletions,
            "insertions": errors.insertions,
            "reference_words": errors.reference_words,
            "text": best["text"],
        },
    }


def realtime(audio: np.ndarray, n: int, args: argparse.Namespace) -> dict[str, Any]:
    jobs = [
        StreamJob(
            i, audio, args.chunk_ms, args.update_interval_s, True, i * args.update_interval_s / n
        )
        for i in range(n)
    ]
    before = busy_cores(BUSY_SAMPLE_S)
    busy0, total0 = cpu_busy()
    results, _ = run_streams(jobs)
    busy1, total1 = cpu_busy()
    per_stream = []
    all_latencies: list[float] = []
    for r in results:
        audio_end = r["started_at"] + r["audio_s"]
        last_done = max((line["completed_at"] for line in r["lines"]), default=r["stopped_at"])
        lat = latencies(r)
        all_latencies.extend(lat)
        per_stream.append(
            {
                "index": r["index"],
                "final_line_after_audio_end_s": last_done - audio_end,
                "stop_after_audio_end_s": r["stopped_at"] - audio_end,
                "lag_max_s": r["lag_max_s"],
                "lag_p95_s": r["lag_p95_s"],
                "lag_last_s": r["lag_last_s"],
                "cpu_s": r["cpu_s"],
                "core_s_per_audio_s": r["cpu_s"] / r["audio_s"],
                "threads_max": r["threads_max"],
                "thread_cpus_after_load": r["thread_cpus"],
                "lines": len(r["lines"]),
                "latency_s": stats(lat),
                "peer_reported_latency_ms": stats([x["peer_latency_ms"] for x in r["lines"]]),
                "errors": r["errors"],
            }
        )
    final = [s["final_line_after_audio_end_s"] for s in per_stream]
    cpus = os.cpu_count() or 1
    span = max(r["stopped_at"] for r in results) - min(r["started_at"] for r in results)
    return {
        "streams": n,
        "audio_s_per_stream": len(audio) / RATE,
        "keeps_up": all(x <= args.keep_up_s for x in final),
        "streams_keeping_up": sum(x <= args.keep_up_s for x in final),
        "final_line_after_audio_end_s_max": max(final),
        "lag_max_s": max(s["lag_max_s"] for s in per_stream),
        "lag_last_s_max": max(s["lag_last_s"] for s in per_stream),
        "latency_s": stats(all_latencies),
        "peer_cpu_cores": sum(r["cpu_s"] for r in results) / span,
        "machine_busy_cores": (busy1 - busy0) / (total1 - total0) * cpus,
        "machine_busy_cores_before": before,
        "per_stream": per_stream,
    }


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_tables(out: dict[str, Any]) -> None:
    a = out["asap"]
    print(f"\n(a) as fast as possible, 1 stream, {a['audio_s']:.1f} s of audio")
    print(f"{'run':>3} {'wall s':>7} {'RTF':>6} {'cpu cores':>9} {'core-s/s':>8} {'threads':>7}")
    for i, r in enumerate(a["runs"]):
        print(
            f"{i:>3} {r['wall_s']:>7.2f} {r['rtf']:>6.3f} {r['cpu_cores']:>9.2f} "
            f"{r['core_s_per_audio_s']:>8.3f} {r['threads_max']:>7}"
        )
    w = a["wer"]
    print(
        f"(d) WER {w['wer']:.3f} ({w['substitutions']} S, {w['deletions']} D, "
        f"{w['insertions']} I / {w['reference_words']} words); "
        f"texts identical across runs: {a['texts_identical_across_runs']}"
    )
    print(
        f"\n(b, c) real time, {out['config']['chunk_ms']} ms chunks, "
        f"updates every {out['config']['update_interval_s']} s, keeps up = last line "
        f"<= {out['config']['keep_up_s']} s after audio end"
    )
    print(
        f"{'N':>3} {'audio s':>7} {'keeps up':>8} {'last line +s':>12} {'lag max s':>9} "
        f"{'lat mean':>8} {'lat med':>7} {'lat p95':>7} {'peer cores':>10} {'box busy':>8} "
        f"{'before':>6}"
    )
    for r in out["realtime"]:
        lat = r["latency_s"]
        print(
            f"{r['streams']:>3} {r['audio_s_per_stream']:>7.1f} "
            f"{r['streams_keeping_up']:>4}/{r['streams']:<3} "
            f"{r['final_line_after_audio_end_s_max']:>12.2f} {r['lag_max_s']:>9.2f} "
            f"{fmt(lat['mean']):>8} {fmt(lat['median']):>7} {fmt(lat['p95']):>7} "
            f"{r['peer_cpu_cores']:>10.2f} {r['machine_busy_cores']:>8.2f} "
            f"{r['machine_busy_cores_before']:>6.2f}"
        )
    print("\ncannot do / caveats:")
    for note in out["limits"]:
        print(f"  - {note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--duration-s", type=float, default=30.0, help="audio per real-time stream")
    parser.add_argument("--asap-runs", type=int, default=3)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--update-interval-s", type=float, default=0.5)
    parser.add_argument("--keep-up-s", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import moonshine_voice

    reference = json.loads(REFERENCES.read_text(encoding="utf-8"))[RECORDING]
    whole = load_audio(None)
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "peer": {
            "package": f"moonshine-voice {moonshine_voice.__version__}",
            "api": "moonshine_voice.transcriber.Transcriber.create_stream / Stream.add_audio",
            "model": f"wheel assets/{MODEL_DIR}, ModelArch.TINY",
        },
        "config": {
            "recording": RECORDING,
            "resampled_to_hz": RATE,
            "chunk_ms": args.chunk_ms,
            "update_interval_s": args.update_interval_s,
            "realtime_duration_s": args.duration_s,
            "streams": args.streams,
            "keep_up_s": args.keep_up_s,
            "stagger": "stream i starts i * update_interval / N after the common start",
            "process_per_stream": True,
        },
        "limits": [
            "ORT intra-op thread count is not configurable through the peer's API (not a "
            "transcriber option), so 'one ORT thread per stream' could not be set: every "
            "process runs ORT's default pools (one per session: the caller + one worker per "
            "extra physical core), and ORT pins each worker thread to a core "
            "(thread_cpus_after_load), the same core in every process",
            "end of speech is the peer's own line end (start_time + duration), which its VAD "
            "decides; completion is only checked at each update (every update_interval of "
            "stream time)",
            "shared noisy machine: 'machine_busy_cores' (table: box busy) is the whole box's "
            "CPU use during each real-time run, peer's included; 'machine_busy_cores_before' "
            "(table: before) is the box's use in the second before the run (other tenants)",
        ],
    }
    print(f"peer: {out['peer']['package']}, {out['peer']['model']}; {os.cpu_count()} CPUs")
    out["asap"] = asap(whole, args, reference)
    piece = load_audio(args.duration_s)
    out["realtime"] = []
    for n in args.streams:
        print(f"real time: {n} stream(s) x {args.duration_s:.0f} s ...", flush=True)
        out["realtime"].append(realtime(piece, n, args))
    out["bench_wall_s"] = time.perf_counter() - started
    print_tables(out)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output} ({out['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
