"""Replay of recorded calls faster than real time: how many times real time, finals only.

Prints figures and writes ``bench/results/replay.json``; never asserts.

Each arm: fresh topics and consumer group; one ``streamscribe worker --from-earliest``
(``--workers N`` per arm), ready before the load; then one load generator
``streamscribe produce FILES --sessions S --pace asap`` (the three bundled recordings,
session ``i`` plays file ``i % 3``). Measured: from the load generator's start to the
arrival (broker LogAppendTime) of the last final on the transcripts topic, so *speed* =
audio seconds / that wall time; finals and partials published (``--pace asap`` marks the
sessions not live, ``SessionMeta.live``: the recognizer publishes no partials, starts no
speculative finals, and decodes waiting finals in batches of up to
``STREAMSCRIBE_REPLAY_BATCH_MAX``); worker and load-generator CPU; every session ended;
the WER of each file's finals against the references (batched finals may differ from the
offline text in a near-tie token).

Run (about 2 minutes on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_replay.py
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

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
REFERENCES: Final = ROOT / "tests" / "data" / "references.json"
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


OPTIONS = {"b": "replay_batch_max", "g": "replay_gather_ms", "s": "segmenter_batch_max"}


def parse_arm(spec: str) -> tuple[int, bool, dict[str, str]]:
    """``N`` | ``split`` | ``splitK``, then the options ``:bB``
    (``STREAMSCRIBE_REPLAY_BATCH_MAX=B``) and ``:gMS`` (``STREAMSCRIBE_REPLAY_GATHER_MS=MS``):
    (processes, split, the workers' settings).
    ``N``: ``worker --workers N``; ``splitK``: K segmenter processes and one recognizer
    process.

    >>> parse_arm("split:b1"), parse_arm("2")
    ((1, True, {'replay_batch_max': '1'}), (2, False, {}))
    >>> parse_arm("split2:b4:g0")
    (2, True, {'replay_batch_max': '4', 'replay_gather_ms': '0'})
    """
    head, *options = spec.split(":")
    env = {}
    for option in options:
        if option[:1] not in OPTIONS or not option[1:]:
            raise ValueError(f"unknown arm option {option!r} in {spec!r} (b<N>, g<ms>, s<N>)")
        env[OPTIONS[option[:1]]] = option[1:]
    if head.startswith("split"):
        return int(head.removeprefix("split") or 1), True, env
    return int(head), False, env


def finals_wer(finals: dict[str, list[tuple[int, int, str]]], base: str) -> dict[str, float]:
    """WER of each file's sessions' finals (joined in time order) against the references
    (files without one are left out)."""
    from tests.wer import error_counts

    references = json.loads(REFERENCES.read_text(encoding="utf-8"))
    errors = {f: [0, 0] for f in FILES}
    for sid, lines in finals.items():
        name = FILES[int(sid.removeprefix(f"{base}-")) % len(FILES)]
        if name not in references:
            continue
        hyp = " ".join(text for _, _, text in sorted(lines))
        counts = error_counts(references[name], hyp)
        errors[name][0] += counts.errors
        errors[name][1] += counts.reference_words
    return {f: round(e / n, 4) for f, (e, n) in errors.items() if n}


def yardstick_cpu_s() -> float:
    """The box's speed now: CPU seconds of the bare model (one ORT thread) decoding 16
    slices of beckett.wav (2-9 s each) in two batches of 8, as a replay's finals are.
    The same work costs 20-50 % more or less from one hour to the next on this box;
    compare arms with this beside them."""
    import wave

    with wave.open(str(asset("beckett.wav")), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
    slices = [audio[: int(16000 * (2 + i % 8))].astype(np.float32) for i in range(16)]
    asr = _bare_model()
    c0 = time.process_time()
    for i in range(0, len(slices), 8):
        asr.transcribe_batch(slices[i : i + 8])
    return time.process_time() - c0


@functools.cache
def _bare_model() -> Any:
    from streamscribe.processors.asr import MoonshineAsr

    asr = MoonshineAsr.load(intra_threads=1)
    asr.warm_up()
    return asr


def run_arm(
    bootstrap: str,
    sessions: int,
    processes: int,
    work: Path,
    split: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One arm: ``processes`` worker processes of both stages, or (``split``) ``processes``
    segmenter processes, ``worker --stages segmenter``, and one ``worker --stages
    recognizer``, in one group (the co-partitioned topics' partitions spread over them by
    stage). ``env``: the workers' settings (``replay_batch_max`` and the like; the defaults
    otherwise)."""
    from tests.procs import Proc, streamscribe_cmd

    extra_env = dict(env or {})

    topics = fresh_topics(bootstrap, f"replay{'s' if split else processes}")
    group = f"bench-replay-{uuid.uuid4().hex[:8]}"
    base = f"r{uuid.uuid4().hex[:6]}"
    workers: dict[str, Any] = {}
    if split:
        names = ["recognizer"] + [
            "segmenter" if processes == 1 else f"segmenter{i}" for i in range(processes)
        ]
        for name in names:
            (work / name).mkdir(exist_ok=True)
            stage = name.rstrip("0123456789")
            workers[name] = launch_worker(bootstrap, topics, work / name, group, stage, **extra_env)
    else:
        extra = ("--workers", str(processes)) if processes > 1 else ()
        workers["worker"] = launch_worker(
            bootstrap, topics, work, group, STAGES, *extra, **extra_env
        )
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
                stage = STAGES if name == "worker" else name.rstrip("0123456789")
                wait_ready(w, stage, processes=1 if split else processes)
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
    texts: dict[str, list[tuple[int, int, str]]] = {}
    decodes: dict[tuple[Any, Any], int] = {}  # finals of one decoder run share its times
    for msg in read_records(bootstrap, topics.transcripts, timeout_s=300):
        t = decode_transcript(msg.value())
        if t.session_id not in ids:
            continue
        if isinstance(t, FinalTranscript):
            finals += 1
            last = max(last, msg.timestamp()[1])
            texts.setdefault(t.session_id, []).append((t.utterance, t.channel, t.text))
            span = (t.timestamps.get("decode_start_us"), t.timestamps.get("decode_end_us"))
            decodes[span] = decodes.get(span, 0) + 1
        else:
            partials += 1
    # the first chunk's broker append time (LogAppendTime): the producer's own start-up
    # (interpreter, imports, reading the files) left out
    first_audio = min(m.timestamp()[1] for m in read_records(bootstrap, topics.audio)) / 1000
    for prefix in (topics.prefix, f"{group}-"):
        drop_topics(bootstrap, topics_with_prefix(bootstrap, prefix))
    audio = audio_seconds(sessions)
    wall = last / 1000 - start
    worker_cpu = sum(cpu_by.values())
    return {
        "processes": processes + 1 if split else processes,
        "split_stages": split,
        "replay_batch_max": int(extra_env.get("replay_batch_max", 0)) or "default",
        "replay_gather_ms": extra_env.get("replay_gather_ms", "default"),
        "segmenter_batch_max": extra_env.get("segmenter_batch_max", "default"),
        "sessions": sessions,
        "audio_s": round(audio, 1),
        "all_sessions_ended": ended,
        "produce_s": round(produced - start, 2),
        "last_final_after_s": round(wall, 2),
        "times_real_time": round(audio / wall, 1),
        "first_audio_after_s": round(first_audio - start, 2),
        "times_real_time_from_first_audio": round(audio / (last / 1000 - first_audio), 1),
        "finals": finals,
        "finals_expected": expected_finals(sessions),
        "final_lines_seen": got,
        "partials": partials,
        # decoder runs by how many finals they decoded: {"1": finals alone, "8": ...}
        "final_decodes_by_batch_size": {
            str(k): v for k, v in sorted(Counter(decodes.values()).items())
        },
        "worker_cpu_s": round(worker_cpu, 1),
        "worker_cpu_s_by_process": {k: round(v, 1) for k, v in cpu_by.items()},
        "worker_cpu_s_per_audio_s": round(worker_cpu / audio, 4),
        "producer_cpu_s": round(producer_cpu, 1),
        "finals_wer_by_file": finals_wer(texts, base),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument(
        "--arms",
        nargs="+",
        default=["1", "split", "2"],
        help="N = worker --workers N (both stages); split = one process per stage, splitK ="
        " K segmenter processes and one recognizer;"
        " :bK = STREAMSCRIBE_REPLAY_BATCH_MAX=K (e.g. split:b1 = finals one by one),"
        " :gMS = STREAMSCRIBE_REPLAY_GATHER_MS=MS (1:g0 = no gathering),"
        " :sN = STREAMSCRIBE_SEGMENTER_BATCH_MAX=N",
    )
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: start one (streamscribe broker start) or --bootstrap")
        return 1
    out: dict[str, Any] = {"machine": machine(), "files": list(FILES), "arms": []}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for i, spec in enumerate(args.arms):
            n, split, env = parse_arm(spec)
            what = f"{n} segmenter + 1 recognizer processes" if split else f"--workers {n}"
            what += "".join(f", {k} {v}" for k, v in env.items())
            print(f"{args.sessions} sessions --pace asap, {what} ...", flush=True)
            work = Path(tmp) / f"{i}-{spec.replace(':', '-')}"
            work.mkdir()
            yardstick = yardstick_cpu_s()
            arm = run_arm(bootstrap, args.sessions, n, work, split=split, env=env)
            arm["yardstick_cpu_s"] = round(yardstick, 2)  # see yardstick_cpu_s
            out["arms"].append(arm)
            print(f"  {json.dumps(arm)}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
