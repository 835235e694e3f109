"""Replay of recorded calls faster than real time: how many times real time, finals only.

Prints figures and writes ``bench/results/replay.json``; never asserts.

Each arm: fresh topics and consumer group; one ``streamscribe worker --from-earliest``
(``--workers N`` per arm), ready before the load; then one load generator
``streamscribe produce FILES --sessions S --pace asap`` (the three bundled recordings,
session ``i`` plays file ``i % 3``). Measured: from the load generator's start to the
arrival (broker LogAppendTime) of the last final on the transcripts topic, so *speed* =
audio seconds / that wall time; finals and partials published (a replay is behind real
time from its first chunk, so the recognizer publishes no partials and starts no
speculative finals: ``partial_max_lag_s``); worker and load-generator CPU; every session
ended.

Run (about 2 minutes on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_replay.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench modules

from bench_producer import (
    ROOT,
    asset,
    bootstrap_address,
    broker_answers,
    drop_topics,
    fresh_topics,
    machine,
    read_records,
    topics_with_prefix,
)
from bench_segmenter_stage import CpuSampler, EventWatcher, launch_worker, wait_ready

from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript

RESULTS: Final = ROOT / "bench" / "results" / "replay.json"
FILES: Final = ("beckett.wav", "two_cities.wav", "endgame_nagg_nell.wav")
STAGES: Final = "segmenter,recognizer"


def audio_seconds(sessions: int) -> float:
    import soundfile as sf

    lengths = [sf.info(str(asset(f))).duration for f in FILES]
    return sum(lengths[i % len(FILES)] for i in range(sessions))


def expected_finals(sessions: int) -> int:
    """The finals of ``sessions`` sessions: the offline segmenter's lines per file."""
    from streamscribe.processors.segmenter import segment_file

    per_file = [len(segment_file(asset(f))) for f in FILES]
    return sum(per_file[i % len(FILES)] for i in range(sessions))


def wait_finals(
    bootstrap: str, topic: str, ids: set[str], expected: int, timeout_s: float = 180.0
) -> int:
    """Until ``expected`` distinct final lines of ``ids`` are on ``topic`` (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = set()
        for msg in read_records(bootstrap, topic, timeout_s=60):
            t = decode_transcript(msg.value())
            if t.session_id in ids and isinstance(t, FinalTranscript):
                lines.add((t.session_id, t.channel, t.utterance))
        if len(lines) >= expected or time.monotonic() > deadline:
            return len(lines)
        time.sleep(1.0)


def run_arm(
    bootstrap: str, sessions: int, processes: int, work: Path, split: bool = False
) -> dict[str, Any]:
    """One arm: ``processes`` worker processes of both stages, or (``split``) one process
    per stage, ``worker --stages segmenter`` and ``worker --stages recognizer`` in one group
    (the co-partitioned topics' partitions spread over them by stage)."""
    from tests.procs import Proc, streamscribe_cmd

    topics = fresh_topics(bootstrap, f"replay{'s' if split else processes}")
    group = f"bench-replay-{uuid.uuid4().hex[:8]}"
    base = f"r{uuid.uuid4().hex[:6]}"
    workers: dict[str, Any] = {}
    if split:
        for stage in ("recognizer", "segmenter"):
            (work / stage).mkdir(exist_ok=True)
            workers[stage] = launch_worker(bootstrap, topics, work / stage, group, stage)
    else:
        extra = ("--workers", str(processes)) if processes > 1 else ()
        workers["worker"] = launch_worker(bootstrap, topics, work, group, STAGES, *extra)
    files = [str(asset(f)) for f in FILES]
    cmd = streamscribe_cmd(
        "produce", *files, "--sessions", str(sessions), "--pace", "asap", "--session-id", base
    )
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix}
    ids = {f"{base}-{i:03d}" for i in range(sessions)}
    try:
        with (
            CpuSampler({k: w.pid for k, w in workers.items()}, period_s=0.25) as cpu,
            EventWatcher(bootstrap, topics.events) as events,
        ):
            for name, w in workers.items():
                wait_ready(w, STAGES if name == "worker" else name, processes=processes)
            time.sleep(5)  # partitions assigned, model warm
            start = time.time()
            producer = Proc(cmd, work / f"producer-{group}.log", env=env)
            cpu.add("producer", producer.pid)
            producer.popen.wait(timeout=600)
            produced = time.time()
            producer_cpu = cpu.samples["producer"][-1][1] if cpu.samples["producer"] else 0.0
            producer.stop()
            ended = events.wait_ended(ids, timeout_s=600)
            # the last finals follow the end events (a recognizer of its own may be behind)
            got = wait_finals(bootstrap, topics.transcripts, ids, expected_finals(sessions))
            now = time.time()
            cpu_by = {k: cpu.at(k, now) - cpu.at(k, start) for k in workers}
    finally:
        for w in workers.values():
            w.stop()
    finals, partials, last = 0, 0, 0
    for msg in read_records(bootstrap, topics.transcripts, timeout_s=300):
        t = decode_transcript(msg.value())
        if t.session_id not in ids:
            continue
        if isinstance(t, FinalTranscript):
            finals += 1
            last = max(last, msg.timestamp()[1])
        else:
            partials += 1
    for prefix in (topics.prefix, f"{group}-"):
        drop_topics(bootstrap, topics_with_prefix(bootstrap, prefix))
    audio = audio_seconds(sessions)
    wall = last / 1000 - start
    worker_cpu = sum(cpu_by.values())
    return {
        "processes": 2 if split else processes,
        "split_stages": split,
        "sessions": sessions,
        "audio_s": round(audio, 1),
        "all_sessions_ended": ended,
        "produce_s": round(produced - start, 2),
        "last_final_after_s": round(wall, 2),
        "times_real_time": round(audio / wall, 1),
        "finals": finals,
        "finals_expected": expected_finals(sessions),
        "final_lines_seen": got,
        "partials": partials,
        "worker_cpu_s": round(worker_cpu, 1),
        "worker_cpu_s_by_process": {k: round(v, 1) for k, v in cpu_by.items()},
        "worker_cpu_s_per_audio_s": round(worker_cpu / audio, 4),
        "producer_cpu_s": round(producer_cpu, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument(
        "--arms",
        nargs="+",
        default=["1", "split", "2"],
        help="N = worker --workers N (both stages); split = one process per stage",
    )
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: start one (streamscribe broker start) or --bootstrap")
        return 1
    out: dict[str, Any] = {"machine": machine(), "files": list(FILES), "arms": []}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for spec in args.arms:
            split = spec == "split"
            n = 1 if split else int(spec)
            what = "one process per stage" if split else f"worker --workers {n}"
            print(f"{args.sessions} sessions --pace asap, {what} ...", flush=True)
            work = Path(tmp) / spec
            work.mkdir()
            arm = run_arm(bootstrap, args.sessions, n, work, split=split)
            out["arms"].append(arm)
            print(f"  {json.dumps(arm)}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
