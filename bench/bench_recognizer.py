"""Benchmark of the recognizer stage through a real faust worker: CPU per final and per partial.

Prints figures and writes them to ``bench/results/recognizer.json``; never asserts.

Black box, so the same script measures any version of the stage: the utterance messages
are built before the worker starts — the spans from ``streamscribe segment FILE --format
json`` (the offline segmenter core), the 16 kHz audio cut into ``--part-ms`` deltas, an
``update`` message per delta and a ``final`` at the end, exactly the contract of
``streamscribe.utterances`` — and produced to fresh topics as a backlog, ``--sessions``
copies of each recording, interleaved in stream-time order as if they were live together.
Then ``python -m streamscribe.cli worker --stages recognizer --from-earliest --group-id G``
(a subprocess, G = the messages' ``origin``) drains it, and its CPU (``/proc/<pid>/stat``
utime + stime, sampled every 0.1 s) is read at the first ``decode_start_us`` and at the
last ``published_at_us`` on the transcripts topic.

Two arms, a fresh worker and fresh topics each run, alternated ``--repeat`` times (the
figures are the medians: the box is shared):

1. ``finals_only``: ``STREAMSCRIBE_UPDATE_INTERVAL_S=1000`` (no partial is ever due):
   CPU ÷ finals = **CPU per final** (its decode plus the handling of every update message
   of the line);
2. ``with_partials``: the default settings: (CPU − CPU of arm 1) ÷ partials published =
   **CPU per partial** (scheduling, audio, decode, stabilise, publish; a partial decoded
   but not published because its final came first is paid for by the published ones).

The load average is recorded with every result.

Run (about 3 minutes on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_recognizer.py
    # --sessions 2 --label before --out bench/results/recognizer_before.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench modules

from bench_producer import (
    ROOT,
    TopicFollower,
    asset,
    bootstrap_address,
    broker_answers,
    drop_topics,
    fresh_topics,
    loadavg,
    machine,
    topics_with_prefix,
)
from bench_segmenter_stage import CpuSampler, launch_worker, wait_ready

from streamscribe.processors.asr import read_audio_16k
from streamscribe.schemas.pcm import encode_payload
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript
from streamscribe.schemas.utterances import KIND_FINAL, KIND_UPDATE, UtteranceMessage

RESULTS: Final = ROOT / "bench" / "results" / "recognizer.json"
FILES: Final = ("two_cities.wav", "beckett.wav")
RATE: Final = 16000
PARTIALS_OFF_S: Final = "1000"
ARMS: Final = {"finals_only": {"update_interval_s": PARTIALS_OFF_S}, "with_partials": {}}
SETTLE_S: Final = 0.3  # one more CPU sample after the last transcript


@dataclass(frozen=True)
class Span:
    file: str
    utterance: int
    start: int  # samples at 16 kHz
    end: int
    reason: str | None


def segment(files: Sequence[Path]) -> list[Span]:
    """Utterance spans from the offline segmenter (``streamscribe segment --format json``)."""
    cmd = [sys.executable, "-m", "streamscribe.cli", "segment", *map(str, files)]
    out = subprocess.run([*cmd, "--format", "json"], check=True, capture_output=True, text=True)
    spans = []
    for line in out.stdout.splitlines():
        doc = json.loads(line)
        spans.append(
            Span(
                Path(doc["file"]).name,
                int(doc["utterance"]),
                round(doc["start_ms"] * RATE / 1000),
                round(doc["end_ms"] * RATE / 1000),
                doc.get("reason"),
            )
        )
    return spans


def utterance_messages(
    session: str, audio: Any, spans: Sequence[Span], part: int, origin: str
) -> list[UtteranceMessage]:
    """One session's utterances as the segmenter sends them: deltas of ``part`` samples."""
    msgs = []
    stamp = time.time_ns() // 1000
    for span in spans:
        cuts = list(range(span.start, span.end, part))
        for i, a in enumerate(cuts):
            b = min(a + part, span.end)
            last = i == len(cuts) - 1
            msgs.append(
                UtteranceMessage(
                    session_id=session,
                    channel=0,
                    role="agent",
                    utterance=span.utterance,
                    kind=KIND_FINAL if last else KIND_UPDATE,
                    part=i,
                    start_sample=span.start,
                    offset_sample=a,
                    end_sample=b,
                    payload=encode_payload(audio[a:b], "pcm_s16le"),
                    captured_at_us=stamp,
                    broker_at_us=stamp,
                    received_at_us=stamp,
                    decided_at_us=stamp,
                    reason=span.reason if last else None,
                    origin=origin,
                )
            )
    return msgs


def produce(bootstrap: str, topic: str, msgs: Sequence[UtteranceMessage]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "message.max.bytes": 2_500_000})
    for m in msgs:
        while True:
            try:
                p.produce(topic, key=m.key, value=m.encode())
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("utterance messages not delivered")


class TranscriptWatcher(TopicFollower):
    """Follows the transcripts topic from the beginning in a thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic, decode_transcript)

    def wait_finals(self, n: int, timeout_s: float) -> bool:
        def enough(events: list[Any]) -> bool:
            return len({e.line_id for e in events if isinstance(e, FinalTranscript)}) >= n

        return self.wait_for(enough, timeout_s)


def run_arm(
    name: str,
    bootstrap: str,
    work: Path,
    sessions: dict[str, tuple[Any, list[Span]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    topics: Topics = fresh_topics(bootstrap, "rec")
    group = f"bench-rec-{uuid.uuid4().hex[:8]}"
    part = round(args.part_ms * RATE / 1000)
    msgs = [
        m
        for sid, (audio, spans) in sessions.items()
        for m in utterance_messages(sid, audio, spans, part, group)
    ]
    msgs.sort(key=lambda m: m.end_sample)  # the sessions interleaved, as if live together
    n_finals = sum(m.kind == KIND_FINAL for m in msgs)
    audio_s = sum((s.end - s.start) / RATE for _, spans in sessions.values() for s in spans)
    produce(bootstrap, topics.utterances, msgs)
    print(f"{name}: {len(msgs)} messages, {n_finals} lines, {audio_s:.1f} s of speech", flush=True)
    load_before = loadavg()
    try:
        with TranscriptWatcher(bootstrap, topics.transcripts) as watcher:
            proc = launch_worker(bootstrap, topics, work, group, "recognizer", **ARMS[name])
            try:
                with CpuSampler({"worker": proc.pid}) as cpu:
                    wait_ready(proc, "recognizer")
                    done = watcher.wait_finals(n_finals, args.timeout)
                    time.sleep(SETTLE_S)
                events = watcher.snapshot()
            finally:
                log_tail = proc.log_text()[-2000:]
                proc.stop()
    finally:
        drop_topics(bootstrap, [*topics_with_prefix(bootstrap, topics.prefix)])
        drop_topics(bootstrap, topics_with_prefix(bootstrap, f"{group}-"))
    finals = {e.line_id: e for e in events if isinstance(e, FinalTranscript)}
    partials = [e for e in events if not isinstance(e, FinalTranscript)]
    if not done or not events:
        return {"complete": False, "finals": len(finals), "log_tail": log_tail}
    t0 = min(e.timestamps["decode_start_us"] for e in events) / 1e6
    t1 = max(e.timestamps["published_at_us"] for e in events) / 1e6
    cpu_s = cpu.at("worker", t1) - cpu.at("worker", t0)
    return {
        "complete": True,
        "messages": len(msgs),
        "finals": len(finals),
        "partials": len(partials),
        # audio the published partials decoded: under a backlog a faster loop hands the
        # scheduler longer coalesced partials, so CPU per partial alone can mislead
        "partial_audio_s": round(sum(e.end_ms - e.start_ms for e in partials) / 1000, 2),
        "speech_s": round(audio_s, 2),
        "wall_s": round(t1 - t0, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_per_speech_s": round(cpu_s / audio_s, 4),
        "errors": sum(1 for f in finals.values() if f.error),
        "final_texts": {k: finals[k].text for k in sorted(finals)[:3]},
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def run(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    files = [asset(f) for f in args.files]
    spans = segment(files)
    tag = uuid.uuid4().hex[:6]
    sessions: dict[str, tuple[Any, list[Span]]] = {}
    for path in files:
        audio = read_audio_16k(path)
        own = [s for s in spans if s.file == path.name]
        for i in range(args.sessions):
            sessions[f"{path.stem}-{tag}-{i}"] = (audio, own)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
    for _ in range(args.repeat):  # the arms alternate, so a change in load hits both
        for name in ARMS:
            runs[name].append(run_arm(name, bootstrap, work, sessions, args))
    out: dict[str, Any] = {
        "label": args.label,
        "code": str(ROOT),
        "files": list(args.files),
        "sessions_per_file": args.sessions,
        "part_ms": args.part_ms,
        "repeat": args.repeat,
        "machine": machine(),
        "arms": {name: median_run(r) for name, r in runs.items()},
        "runs": runs,
    }
    a, b = out["arms"]["finals_only"], out["arms"]["with_partials"]
    if a.get("complete") and b.get("complete"):
        out["cpu_ms_per_final"] = round(1000 * a["cpu_s"] / a["finals"], 2)
        extra = b["partials"] - a["partials"]
        out["cpu_ms_per_partial"] = (
            round(1000 * (b["cpu_s"] - a["cpu_s"]) / extra, 2) if extra > 0 else None
        )
        audio = b["partial_audio_s"] - a["partial_audio_s"]
        out["cpu_ms_per_partial_audio_s"] = (
            round(1000 * (b["cpu_s"] - a["cpu_s"]) / audio, 2) if audio > 0 else None
        )
    return out


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The medians of the complete runs of one arm (CPU, wall, partials)."""
    done = [r for r in runs if r.get("complete")]
    if not done:
        return {"complete": False, "finals": max((r.get("finals", 0) for r in runs), default=0)}
    keys = ("cpu_s", "wall_s", "partials", "partial_audio_s", "cpu_per_speech_s")
    med = {k: statistics.median(r[k] for r in done) for k in keys}
    return {
        "complete": True,
        "runs": len(done),
        "finals": done[0]["finals"],
        "speech_s": done[0]["speech_s"],
        **med,
        "cpu_s_all": [r["cpu_s"] for r in done],
        "loadavg_before": done[0]["loadavg_before"],
    }


def print_result(out: dict[str, Any]) -> None:
    print(f"\nrecognizer stage ({out['label']}, {out['code']})")
    for name, arm in out["arms"].items():
        if not arm.get("complete"):
            print(f"  {name}: INCOMPLETE ({arm.get('finals')} finals)")
            continue
        print(
            f"  {name:14s} finals {arm['finals']:4d}  partials {arm['partials']:5.0f} "
            f"({arm['partial_audio_s']:.1f} s of audio)  "
            f"CPU {arm['cpu_s']:7.2f} s {arm['cpu_s_all']}  wall {arm['wall_s']:6.1f} s  "
            f"CPU/speech-s {arm['cpu_per_speech_s']:.4f}  load {arm['loadavg_before']}"
        )
    print(f"  CPU per final   : {out.get('cpu_ms_per_final')} ms")
    print(f"  CPU per partial : {out.get('cpu_ms_per_partial')} ms")
    print(f"  CPU per second of partial audio: {out.get('cpu_ms_per_partial_audio_s')} ms")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--files", nargs="+", default=list(FILES))
    ap.add_argument("--sessions", type=int, default=6, help="copies of each file")
    ap.add_argument("--part-ms", type=float, default=500.0, help="audio per update message")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each arm (medians)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=None, help="keep the worker logs here")
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no Kafka broker at {bootstrap}; start one (streamscribe broker start)")
        return 1
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        out = run(args, bootstrap, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-recognizer-") as tmp:
            out = run(args, bootstrap, Path(tmp))
    print_result(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
