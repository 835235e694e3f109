"""Capacity benchmark of the whole pipeline (issue 6): one worker, N live sessions.

Prints figures and writes ``bench/results/pipeline.json`` and ``bench/results/pipeline.png``
(latency percentiles vs N); never asserts.

For each N in ``--sessions``: fresh topics and consumer group; one worker with both stages
(``python -m streamscribe.cli worker --stages segmenter,recognizer --from-earliest``,
partial updates every ``--update-interval`` s) and the load generator
(``streamscribe produce ... --sessions N --stagger S --pace realtime``), both subprocesses.
Session ``i`` plays ``two_cities.wav`` (48 kHz), ``beckett.wav`` (16 kHz) or
``endgame_nagg_nell.wav`` (24 kHz) from ``moonshine_voice/assets`` (``i % 3``), each
repeated and cut to ``--duration`` s so the load stays constant for the whole run.

Measured per N:

- **backlog flatness**: every ``--sample-s`` s, the consumer lag of the worker's group on
  the audio and utterances topics (high watermarks minus committed offsets, summed over
  partitions), also as seconds of input (lag ÷ the topic's produce rate). Over the window
  in which every session is live (after ``--warmup`` s), *flat* means the median lag of the
  last fifth is at most ``--flat-slack`` s above the median lag of the middle fifth;
- **end of speech -> final**, p50 / p95 over finals: (a) ``decided_at_us`` ->
  ``published_at_us`` (the SLA span ``eos_to_final`` of ``consumers/latency.py``), and
  (b) the utterance's end as captured at real-time pace -> ``published_at_us``: the
  session's start on the wall clock (from its first audio chunk read back:
  ``captured_at_us - (position + n_samples) / rate``) + ``end_ms``;
- **word spoken -> partial**, p50 / p95 over partials: the partial's ``end_ms`` mapped to
  the wall clock the same way -> ``published_at_us``;
- **CPU ratio**: the worker's CPU seconds (``/proc/<pid>/stat``, from the load start to
  the drained backlog) ÷ the CPU seconds of the bare model (``MoonshineAsr.transcribe``,
  one ORT thread, in this process) on the audio of the same finals, reassembled from the
  utterances topic (identical utterances — sessions playing the same file — are decoded
  once and counted each time);
- the machine: load average before / after, whole-box busy cores, worker and load
  generator cores (the box is shared: other tenants' load shows as the difference).

Summary: the largest N that stayed flat with p95 end of speech -> final <= ``--sla-ms``
(for span (a), and for span (b)), next to the peer's figures (moonshine-voice's own
streaming API, one process per stream, from ``bench/results/peer.json``; ``bench_peer.py``
is run first only when that file is missing).

Run (a quick look, about 4 minutes on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_pipeline.py \\
        --sessions 2 8 --duration 40
    # the issue's figure: --sessions 4 8 12 16 24 --duration 300
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench modules

import numpy as np
from bench_producer import (
    ROOT,
    bootstrap_address,
    broker_answers,
    drop_topics,
    fresh_topics,
    loadavg,
    machine,
    read_records,
    summary,
    tiled,
    topics_with_prefix,
)
from bench_segmenter_stage import (
    CpuSampler,
    EventWatcher,
    launch_worker,
    wait_ready,
)

from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.control import is_tick
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript
from streamscribe.schemas.utterances import KIND_FINAL, UtteranceMessage

RESULTS: Final = ROOT / "bench" / "results" / "pipeline.json"
PEER_RESULTS: Final = ROOT / "bench" / "results" / "peer.json"
FILES: Final = ("two_cities.wav", "beckett.wav", "endgame_nagg_nell.wav")
CONTINUOUS: Final = ("two_cities.wav", "endgame_nagg_nell.wav")  # little silence
LENGTH_BUCKETS_S: Final = (0.0, 5.0, 10.0, 15.0, 1e9)
STAGES: Final = "segmenter,recognizer"


# --------------------------------------------------------------------------- lag


class LagSampler:
    """Samples the group's lag on some topics every ``period_s`` s in a thread."""

    def __init__(self, bootstrap: str, group: str, topics: dict[str, str], period_s: float):
        self.bootstrap, self.group, self.topics, self.period_s = bootstrap, group, topics, period_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag", daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        # Same group id, never subscribes: it only reads the group's committed offsets.
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        try:
            while not self._stop.is_set():
                with contextlib.suppress(Exception):  # a missed sample is only a gap
                    self.samples.append(self.sample(c))
                self._stop.wait(self.period_s)
        finally:
            c.close()

    def sample(self, c: Any) -> dict[str, Any]:
        from confluent_kafka import TopicPartition

        row: dict[str, Any] = {"t": time.time()}
        for label, topic in self.topics.items():
            parts = c.list_topics(topic, timeout=5).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in parts]
            committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=5)}
            lag = high_total = 0
            for tp in tps:
                low, high = c.get_watermark_offsets(tp, timeout=5, cached=False)
                done = committed.get(tp.partition, -1)
                lag += high - (done if done >= 0 else low)
                high_total += high
            row[label] = {"lag": lag, "high": high_total}
        return row

    def lag_now(self, label: str) -> int | None:
        return self.samples[-1][label]["lag"] if self.samples else None


def flatness(
    samples: list[dict[str, Any]], t0: float, t1: float, label: str, slack_s: float
) -> dict[str, Any]:
    """Lag in the middle vs the end of the steady window [t0, t1] (see the module doc)."""
    win = [s for s in samples if t0 <= s["t"] <= t1]
    if len(win) < 5:
        return {"flat": None, "note": f"only {len(win)} samples in the steady window"}
    span = win[-1]["t"] - win[0]["t"]
    rate = (win[-1][label]["high"] - win[0][label]["high"]) / span if span > 0 else 0.0

    def med(lo: float, hi: float) -> float:
        pick = [
            s[label]["lag"] for s in win if t0 + lo * (t1 - t0) <= s["t"] <= t0 + hi * (t1 - t0)
        ]
        return float(statistics.median(pick)) if pick else float("nan")

    mid, end = med(0.4, 0.6), med(0.8, 1.0)
    mid_s, end_s = (mid / rate, end / rate) if rate > 0 else (float("nan"), float("nan"))
    return {
        "flat": bool(end_s - mid_s <= slack_s) if rate > 0 else None,
        "lag_mid": mid,
        "lag_end": end,
        "lag_max": max(s[label]["lag"] for s in win),
        "lag_mid_s": round(mid_s, 2),
        "lag_end_s": round(end_s, 2),
        "rate_msgs_per_s": round(rate, 1),
        "samples": len(win),
    }


# --------------------------------------------------------------------------- read-back


def session_starts(bootstrap: str, topic: str, sessions: set[str]) -> dict[str, float]:
    """Epoch µs of each session's audio position 0 at real-time pace (from any one chunk)."""
    starts: dict[str, float] = {}

    def take(msg: Any) -> bool:
        value = msg.value()
        if not is_tick(value):
            c = AudioChunk.decode(value)
            if c.session_id in sessions and c.session_id not in starts:
                starts[c.session_id] = c.captured_at_us - (c.position + c.n_samples) * 1e6 / (
                    c.sample_rate
                )
        return len(starts) == len(sessions)

    for _ in read_records(bootstrap, topic, stop=take):
        pass
    return starts


class ChunkClock:
    """When the edge captured each chunk: (session, channel) -> sorted positions and times."""

    def __init__(self, bootstrap: str, topic: str, sessions: set[str]) -> None:
        rows: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)
        self.rate: dict[tuple[str, int], int] = {}
        for msg in read_records(bootstrap, topic, timeout_s=600):
            value = msg.value()
            if is_tick(value):
                continue
            c = AudioChunk.decode(value)
            if c.session_id in sessions and c.n_samples:
                rows[(c.session_id, c.channel)].append((c.position, c.n_samples, c.captured_at_us))
                self.rate[(c.session_id, c.channel)] = c.sample_rate
        self.table: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for key, r in rows.items():
            r.sort()
            a = np.asarray(r, dtype=np.int64)
            self.table[key] = (a[:, 0], a[:, 1], a[:, 2])

    def captured_us(self, session: str, channel: int, ms: float) -> int | None:
        """Capture time of the chunk holding the stream sample just before ``ms``."""
        key = (session, channel)
        if key not in self.table:
            return None
        pos, n, cap = self.table[key]
        sample = max(0, round(ms * self.rate[key] / 1000) - 1)
        i = int(np.searchsorted(pos, sample, side="right")) - 1
        if i < 0 or sample >= pos[i] + n[i]:
            return None
        return int(cap[i])


def outside_figures(
    clock: ChunkClock, finals: list[tuple[Any, int]], partials: list[tuple[Any, int]]
) -> dict[str, Any]:
    """The issue's outside measurement; ``(event, arrival epoch µs)`` pairs.

    End of speech -> final: the final's arrival on the transcripts topic (its broker
    LogAppendTime) minus the capture time of the audio chunk holding the utterance's last
    sample (``end_ms``), silence wait included. Partial interval: between consecutive
    partials of one line (arrival times), for lines longer than 1.5 s; also the wait from
    the capture of the line's first 1.5 s to its first partial.
    """
    lat: list[float] = []
    by_len: dict[str, list[float]] = defaultdict(list)
    long_lines: dict[tuple[str, int, int], Any] = {}
    for f, arrival in finals:
        cap = clock.captured_us(f.session_id, f.channel, f.end_ms)
        if cap is None:
            continue
        ms = (arrival - cap) / 1000
        lat.append(ms)
        length = (f.end_ms - f.start_ms) / 1000
        lo = max(b for b in LENGTH_BUCKETS_S if b <= length)
        hi = min(b for b in LENGTH_BUCKETS_S if b > length)
        by_len[f"{lo:g}-{hi:g}s" if hi < 1e9 else f">{lo:g}s"].append(ms)
        if length > 1.5:
            long_lines[(f.session_id, f.channel, f.utterance)] = f
    arrivals: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for p, arrival in partials:
        arrivals[(p.session_id, p.channel, p.utterance)].append(arrival)
    intervals: list[float] = []
    first_wait: list[float] = []
    per_line_p95: list[float] = []
    without = 0
    for key, f in long_lines.items():
        times = sorted(arrivals.get(key, []))
        if not times:
            without += 1
            continue
        gaps = list(np.diff(times) / 1000)
        intervals.extend(gaps)
        if gaps:
            per_line_p95.append(float(np.percentile(gaps, 95)))
        cap = clock.captured_us(f.session_id, f.channel, f.start_ms + 1500)
        if cap is not None:
            first_wait.append((times[0] - cap) / 1000)
    # how close a line's last partial came to its final (the final's words over the same
    # stretch: its first as many words as the partial has), word error rate in per cent
    from streamscribe.processors.text import normalized_words
    from tests.wer import word_errors

    last_partial: dict[tuple[str, int, int], Any] = {}
    for p, _arrival in sorted(partials, key=lambda pa: pa[1]):
        last_partial[(p.session_id, p.channel, p.utterance)] = p
    errors = words = 0
    for f, _ in finals:
        p = last_partial.get((f.session_id, f.channel, f.utterance))
        if p is None:
            continue
        heard = normalized_words(p.text)
        final_words = normalized_words(f.text)[: len(heard)]
        if final_words:
            errors += word_errors(" ".join(final_words), " ".join(heard))
            words += len(final_words)
    return {
        "speech_end_to_final_arrival_ms": summary(lat),
        "last_partial_vs_final_wer_pct": round(100 * errors / words, 1) if words else None,
        "by_utterance_length_ms": {k: summary(v) for k, v in sorted(by_len.items())},
        "partial_interval_ms": summary(intervals),
        "first_partial_after_1_5s_ms": summary(first_wait),
        "lines_over_1_5s": len(long_lines),
        "lines_over_1_5s_without_partial": without,
    }


def stage_processes(pid: int) -> dict[str, int]:
    """The stage processes a split worker ``pid`` runs: ``{stages: pid}`` read from the
    children's command lines (``--stages segmenter`` / ``--stages recognizer``); empty when
    the worker runs its stages in its own process."""
    out: dict[str, int] = {}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--stages" in argv[:-1]:
            out[argv[argv.index("--stages") + 1]] = int(child)
    return out


def local_broker_pid() -> int | None:
    """Pid of a Kafka broker running on this machine (``kafka.Kafka`` in its command line),
    so its CPU is measured beside the worker's; None when the broker is elsewhere."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline:
            return int(proc.name)
    return None


def worker_processes(worker_args: Sequence[str]) -> int:
    """N of ``--workers N`` (or ``--workers=N``) among the worker's arguments, else 1."""
    for i, arg in enumerate(worker_args):
        if arg.startswith("--workers="):
            return int(arg.split("=", 1)[1])
        if arg == "--workers" and i + 1 < len(worker_args):
            return int(worker_args[i + 1])
    return 1


def failover_figures(
    clock: ChunkClock, finals: list[tuple[Any, int]], marks: dict[str, float]
) -> dict[str, Any]:
    """Kill one of two workers: the delay its sessions' finals suffered, and completeness.

    Latency as in :func:`outside_figures`; *extra delay* = the worst latency of a final
    that arrived after the kill minus the median of those that arrived before it. (Until
    2026-12-03 the split was by speech end, which left out the lines worst hit: those whose
    speech ended just before the kill and whose final the killed worker still owed.)
    Complete: per channel,
    the utterance numbers with a final are 0..max with none missing; duplicates (the same
    line published twice, which at-least-once allows and the sink stores once) counted.
    """
    kill_us = marks["killed"] * 1e6
    before, after = [], []
    late: list[tuple[float, Any, int, int]] = []
    lines: dict[tuple[str, int], set[int]] = defaultdict(set)
    seen: Counter[tuple[str, int, int]] = Counter()
    for f, arrival in finals:
        seen[(f.session_id, f.channel, f.utterance)] += 1
        lines[(f.session_id, f.channel)].add(f.utterance)
        cap = clock.captured_us(f.session_id, f.channel, f.end_ms)
        if cap is not None:
            (after if arrival >= kill_us else before).append((arrival - cap) / 1000)
            if arrival >= kill_us:
                late.append((arrival - cap, f, cap, arrival))
    missing = sum(max(u) + 1 - len(u) for u in lines.values())
    usual = float(np.median(before)) if before else float("nan")
    worst = max(after) if after else float("nan")
    return {
        "before_kill_ms": summary(before),
        "after_kill_ms": summary(after),
        "worst_extra_delay_ms": round(worst - usual, 1),
        "lines_missing": missing,
        "lines_published_twice": sum(1 for c in seen.values() if c > 1),
        # the five latest finals after the kill: when their speech ended and when they
        # arrived, in ms from the kill (where the delay came from)
        "worst_lines": [
            {
                "line": f"{f.session_id}/{f.channel}/{f.utterance}",
                "latency_ms": round(lat / 1000, 1),
                "speech_end_from_kill_ms": round((cap - kill_us) / 1000, 1),
                "arrival_from_kill_ms": round((arrival - kill_us) / 1000, 1),
            }
            for lat, f, cap, arrival in sorted(late, key=lambda x: -x[0])[:5]
        ],
    }


def final_audio(bootstrap: str, topic: str) -> dict[tuple[str, int, int], bytes]:
    """PCM16 of every utterance that has a final, reassembled from its parts."""
    parts: dict[tuple[str, int, int], dict[int, bytes]] = defaultdict(dict)
    finished: set[tuple[str, int, int]] = set()
    for msg in read_records(bootstrap, topic, timeout_s=600):
        m = UtteranceMessage.decode(msg.value())
        key = (m.session_id, m.channel, m.utterance)
        parts[key].setdefault(m.part, m.payload)
        if m.kind == KIND_FINAL:
            finished.add(key)
    return {k: b"".join(p[i] for i in sorted(p)) for k, p in parts.items() if k in finished}


class BareModel:
    """The ASR core alone, one ORT thread; CPU seconds per distinct utterance audio (cached)."""

    def __init__(self) -> None:
        from streamscribe.processors.asr import MoonshineAsr

        self.asr = MoonshineAsr.load(intra_threads=1)
        self.asr.warm_up()
        self.cpu_by_sha: dict[str, float] = {}

    def cpu_s(self, pcm16: bytes) -> float:
        sha = hashlib.sha256(pcm16).hexdigest()
        if sha not in self.cpu_by_sha:
            audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
            c0 = time.process_time()
            self.asr.transcribe(audio)
            self.cpu_by_sha[sha] = time.process_time() - c0
        return self.cpu_by_sha[sha]


# --------------------------------------------------------------------------- one N


def run_point(
    n: int,
    args: argparse.Namespace,
    bootstrap: str,
    work: Path,
    files: list[Path],
    bare: BareModel,
) -> dict[str, Any]:
    from tests.procs import Proc, streamscribe_cmd

    topics = fresh_topics(bootstrap, f"pipe{n}")
    group = f"bench-pipe-{uuid.uuid4().hex[:8]}"
    base = f"p{uuid.uuid4().hex[:6]}"
    sessions = {f"{base}-{i:03d}" for i in range(n)}
    load_before = loadavg()
    # --split-stages: the recognizer in this worker, the segmenter in a second process (its
    # the same group, different subscriptions); the stages meet on the utterances topic.
    stages = "recognizer" if args.split_stages else STAGES
    worker = launch_worker(
        bootstrap,
        topics,
        work,
        group,
        stages,
        *args.worker_args,
        update_interval_s=str(args.update_interval),
        **dict(kv.split("=", 1) for kv in args.worker_env),
    )
    second = None
    if args.split_stages:
        (work / "seg").mkdir(exist_ok=True)
        second = launch_worker(
            bootstrap,
            topics,
            work / "seg",
            group,  # the same group: the recognizer takes only its own group's utterances
            "segmenter",
            *args.worker_args,
            update_interval_s=str(args.update_interval),
            **dict(kv.split("=", 1) for kv in args.worker_env),
        )
    elif args.kill_at is not None:  # a second worker of the same group, SIGKILLed mid-run
        (work / "second").mkdir(exist_ok=True)
        second = launch_worker(
            bootstrap,
            topics,
            work / "second",
            group,
            STAGES,
            *args.worker_args,
            update_interval_s=str(args.update_interval),
            **dict(kv.split("=", 1) for kv in args.worker_env),
        )
    producer = None
    marks: dict[str, float] = {}
    lag_topics = {"audio": topics.audio, "utterances": topics.utterances}
    produce_cmd = streamscribe_cmd(
        "produce", *map(str, files), "--sessions", str(n), "--stagger", str(args.stagger),
        "--pace", "realtime", "--session-id", base,
    )  # fmt: skip
    produce_env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix}
    try:
        with (
            CpuSampler({"worker": worker.pid}, period_s=0.25) as cpu,
            EventWatcher(bootstrap, topics.events) as events,
            LagSampler(bootstrap, group, lag_topics, args.sample_s) as lag,
        ):
            processes = worker_processes(args.worker_args)
            # --worker-env split_stages=true: each worker is a process per stage
            per_stage = "split_stages=true" in args.worker_env
            wait_ready(worker, stages, processes=processes, per_stage=per_stage)
            if second is not None:
                wait_ready(
                    second,
                    "segmenter" if args.split_stages else STAGES,
                    processes=processes,
                    per_stage=per_stage,
                )
                cpu.add("second", second.pid)
            if (broker_pid := local_broker_pid()) is not None:
                cpu.add("broker", broker_pid)
            for stage_name, stage_pid in stage_processes(worker.pid).items():
                cpu.add(f"stage:{stage_name}", stage_pid)  # the split worker's stage processes
            marks["ready"] = time.time()
            time.sleep(args.settle)  # partitions assigned; idle CPU measured meanwhile
            marks["load_start"] = time.time()
            producer = Proc(produce_cmd, work / f"producer-{n}.log", env=produce_env)
            cpu.add("producer", producer.pid)
            limit = args.duration + n * args.stagger + 120
            if second is not None and args.kill_at is not None:
                time.sleep(args.kill_at)
                second.kill9()
                marks["killed"] = time.time()
                print(
                    f"  SIGKILLed the second worker {args.kill_at:g} s into the load"
                    f" ({time.strftime('%H:%M:%S', time.localtime(marks['killed']))}"
                    f".{int(marks['killed'] % 1 * 1000):03d})",
                    flush=True,
                )
            try:
                producer.popen.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                print(f"  load generator still running after {limit:.0f} s; stopped")
            marks["load_end"] = time.time()
            producer_cpu = cpu.samples["producer"][-1][1] if cpu.samples["producer"] else 0.0
            producer.stop()
            print(f"  load done; draining (up to {args.drain_timeout:.0f} s) ...", flush=True)
            deadline = time.monotonic() + args.drain_timeout
            drained = False
            while time.monotonic() < deadline:
                if sessions <= events.ended() and lag.lag_now("utterances") == 0:
                    drained = True
                    break
                time.sleep(0.5)
            time.sleep(0.5)
            marks["drained"] = time.time()
            lag_samples = list(lag.samples)
    finally:
        if producer is not None:
            producer.stop()
        worker_log = worker.log_text()
        worker.stop()
        if second is not None:
            second.stop()
    load_after = loadavg()
    idle_rate = (cpu.at("worker", marks["load_start"]) - cpu.at("worker", marks["ready"])) / max(
        marks["load_start"] - marks["ready"], 1e-9
    )
    worker_cpu = cpu.at("worker", marks["drained"]) - cpu.at("worker", marks["load_start"])
    if args.split_stages:  # both stage processes are the worker
        worker_cpu += cpu.at("second", marks["drained"]) - cpu.at("second", marks["load_start"])
    wall = marks["drained"] - marks["load_start"]
    load_wall = max(marks["load_end"] - marks["load_start"], 1e-9)
    box = (cpu.at("box", marks["drained"]) - cpu.at("box", marks["load_start"])) / wall
    stage_cores = {
        name.split(":", 1)[1]: round(
            (cpu.at(name, marks["drained"]) - cpu.at(name, marks["load_start"])) / wall, 3
        )
        for name in cpu.samples
        if name.startswith("stage:")
    }
    broker_cores = None
    if cpu.samples.get("broker"):
        broker_cpu = cpu.at("broker", marks["drained"]) - cpu.at("broker", marks["load_start"])
        broker_cores = round(broker_cpu / wall, 3)

    print("  reading back transcripts and utterances ...", flush=True)
    starts = session_starts(bootstrap, topics.audio, sessions)
    partials, finals = [], []
    arrived_f: list[tuple[Any, int]] = []
    arrived_p: list[tuple[Any, int]] = []
    for msg in read_records(bootstrap, topics.transcripts, timeout_s=300):
        t = decode_transcript(msg.value())
        if t.session_id in sessions:
            arrival = msg.timestamp()[1] * 1000  # LogAppendTime: arrival on the topic
            if isinstance(t, FinalTranscript):
                finals.append(t)
                arrived_f.append((t, arrival))
            else:
                partials.append(t)
                arrived_p.append((t, arrival))
    clock = ChunkClock(bootstrap, topics.audio, sessions)
    outside = outside_figures(clock, arrived_f, arrived_p)
    failover = None if "killed" not in marks else failover_figures(clock, arrived_f, marks)
    speech_s = sum((f.end_ms - f.start_ms) / 1000 for f in finals)
    eos_decided, eos_speech, eos_speech_silence, word_partial, partial_decided = [], [], [], [], []
    for f in finals:
        ts = f.timestamps
        if "decided_at_us" in ts and "published_at_us" in ts:
            eos_decided.append((ts["published_at_us"] - ts["decided_at_us"]) / 1000)
        if f.session_id in starts and "published_at_us" in ts:
            ms = (ts["published_at_us"] - (starts[f.session_id] + f.end_ms * 1000)) / 1000
            eos_speech.append(ms)
            if f.reason == "silence":
                eos_speech_silence.append(ms)
    for p in partials:
        ts = p.timestamps
        if p.session_id in starts and "published_at_us" in ts:
            word_partial.append(
                (ts["published_at_us"] - (starts[p.session_id] + p.end_ms * 1000)) / 1000
            )
        if "decided_at_us" in ts and "published_at_us" in ts:
            partial_decided.append((ts["published_at_us"] - ts["decided_at_us"]) / 1000)

    print("  bare model on the same finals ...", flush=True)
    audio = final_audio(bootstrap, topics.utterances)
    bare_cpu = 0.0
    final_audio_s = 0.0
    for key, pcm in audio.items():
        if key[0] in sessions:
            bare_cpu += bare.cpu_s(pcm)
            final_audio_s += len(pcm) / 2 / 16000
    if not args.keep_topics:
        for prefix in (topics.prefix, f"{group}-"):
            drop_topics(bootstrap, topics_with_prefix(bootstrap, prefix))

    t_steady0 = marks["load_start"] + n * args.stagger + args.warmup
    t_steady1 = marks["load_start"] + args.duration
    flat = {
        label: flatness(lag_samples, t_steady0, t_steady1, label, args.flat_slack)
        for label in ("audio", "utterances")
    }
    verdicts = [f["flat"] for f in flat.values()]
    flat_all = None if None in verdicts else all(verdicts)
    audio_s = n * args.duration
    return {
        "sessions": n,
        "duration_s": args.duration,
        "audio_s": audio_s,
        "drained": drained,
        "drain_s": round(marks["drained"] - marks["load_end"], 1),
        "flat": flat_all,
        "lag": flat,
        "finals": len(finals),
        "finals_by_reason": dict(Counter(f.reason for f in finals)),
        "finals_with_error": sum(1 for f in finals if f.error),
        "partials": len(partials),
        "speech_share": round(speech_s / audio_s, 3),
        "outside": outside,
        "failover": failover,
        "latency_ms": {
            "eos_decided_to_final": summary(eos_decided),
            "speech_end_to_final": summary(eos_speech),
            "speech_end_to_final_silence_only": summary(eos_speech_silence),
            "word_to_partial": summary(word_partial),
            "partial_decided_to_published": summary(partial_decided),
        },
        "cpu": {
            "worker_cpu_s": round(worker_cpu, 2),
            "worker_cores": round(worker_cpu / wall, 3),
            "worker_idle_cores": round(idle_rate, 3),
            "worker_cpu_s_per_audio_s": round(worker_cpu / audio_s, 4),
            "bare_model_cpu_s": round(bare_cpu, 2),
            "bare_model_audio_s": round(final_audio_s, 1),
            "bare_model_distinct_utterances": len(bare.cpu_by_sha),
            "cpu_ratio": round(worker_cpu / bare_cpu, 2) if bare_cpu else None,
            "producer_cpu_s": round(producer_cpu, 2),
            "producer_cores": round(producer_cpu / load_wall, 3),
            "box_busy_cores": round(box, 2),
            "broker_cores": broker_cores,
            # the first worker's stage processes (split stages): cores each, same window
            "stage_cores": stage_cores or None,
        },
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "lag_samples": [{**s, "t": round(s["t"] - marks["load_start"], 1)} for s in lag_samples],
        "worker_log_tail": None if drained else worker_log[-3000:],
    }


# --------------------------------------------------------------------------- peer, plot, table


def peer_baseline(run_if_missing: bool) -> dict[str, Any] | None:
    if not PEER_RESULTS.exists():
        if not run_if_missing:
            return None
        print("bench/results/peer.json missing: running bench/bench_peer.py first ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_peer.py")], check=False)
        if not PEER_RESULTS.exists():
            return None
    peer = json.loads(PEER_RESULTS.read_text())
    rows = []
    for r in peer.get("realtime", []):
        lat = r["latency_s"]
        rows.append(
            {
                "streams": r["streams"],
                "speech_end_to_line_completed_p50_ms": _ms(lat.get("median")),
                "speech_end_to_line_completed_p95_ms": _ms(lat.get("p95")),
                "keeps_up": r["keeps_up"],
                "cpu_cores": round(r.get("peer_cpu_cores", float("nan")), 2),
            }
        )
    keeping = [r["streams"] for r in rows if r["keeps_up"]]
    return {
        "source": "bench/results/peer.json (bench/bench_peer.py: moonshine-voice Transcriber "
        "streams, one process per stream, audio end handed over at real-time pace -> "
        "LineCompleted)",
        "package": peer.get("peer", {}).get("package"),
        "duration_s": peer.get("config", {}).get("realtime_duration_s"),
        "loadavg_at_start": peer.get("machine", {}).get("loadavg_at_start"),
        "asap_core_s_per_audio_s": peer.get("asap", {}).get("core_s_per_audio_s_median"),
        "largest_streams_keeping_up": max(keeping) if keeping else None,
        "realtime": rows,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def capacity(points: list[dict[str, Any]], span: str, sla_ms: float) -> int | None:
    ok = [
        p["sessions"]
        for p in points
        if p["flat"]
        and p["latency_ms"][span]["p95"] is not None
        and p["latency_ms"][span]["p95"] <= sla_ms
    ]
    return max(ok) if ok else None


def plot(out: dict[str, Any], path: Path) -> None:
    """p50/p95 end of speech -> final (outside) and partial interval vs N; the peer's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = out["points"]
    ns = [p["sessions"] for p in pts]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.5))
    for q, style in (("p50", "-o"), ("p95", "--o")):
        ys = [p["outside"]["speech_end_to_final_arrival_ms"][q] for p in pts]
        ax.plot(ns, [np.nan if y is None else y for y in ys], style, color="tab:green",
                label=f"streamscribe: speech end -> final arrival {q}")  # fmt: skip
        ys = [p["outside"]["partial_interval_ms"][q] for p in pts]
        bx.plot(ns, [np.nan if y is None else y for y in ys], style, color="tab:orange",
                label=f"streamscribe: interval between a line's partials {q}")  # fmt: skip
    peer = out.get("peer")
    if peer:
        pn = [r["streams"] for r in peer["realtime"]]
        for q, style in (("p50", "-s"), ("p95", "--s")):
            ys = [r[f"speech_end_to_line_completed_{q}_ms"] for r in peer["realtime"]]
            ax.plot(pn, [np.nan if y is None else y for y in ys], style, color="tab:gray",
                    label=f"peer (moonshine-voice): speech end -> line completed {q}")  # fmt: skip
    ax.axhline(out["config"]["sla_ms"], color="tab:red", lw=1,
               label=f"goal {out['config']['sla_ms']:.0f} ms")  # fmt: skip
    bx.axhline(1000, color="tab:red", lw=1, label="goal 1000 ms (p95)")
    for p in pts:
        if p["flat"] is False:
            ax.axvline(p["sessions"], color="tab:red", lw=0.5, ls=":")
    ax.set_yscale("log")
    for axis in (ax, bx):
        axis.set_xlabel("concurrent real-time sessions of continuous speech")
        axis.set_ylabel("ms")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="upper left")
        axis.set_xticks(ns)
    title = f"end of speech -> final, {out['config']['duration_s']:.0f} s runs, "
    ax.set_title(title + f"{out['machine']['cpus']} CPUs (dotted: lag not flat)", fontsize=9)
    bx.set_title("partials: interval between consecutive partials of a line", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(out: dict[str, Any]) -> None:
    print(f"\n{'N':>3} {'flat':>5} {'lag a/u s (mid->end)':>22} {'EOS dec p50/p95':>16} "
          f"{'speech end p50/p95':>19} {'word->part p50/p95':>19} {'CPU ratio':>9} "
          f"{'wk cores':>8} {'box':>5} {'load1':>6}")  # fmt: skip
    for p in out["points"]:
        lat, c = p["latency_ms"], p["cpu"]
        pq = {k: f"{v['p50']}/{v['p95']}" for k, v in lat.items()}
        lags = " ".join(
            f"{p['lag'][t].get('lag_mid_s')}->{p['lag'][t].get('lag_end_s')}"
            for t in ("audio", "utterances")
        )
        print(
            f"{p['sessions']:>3} {p['flat']!s:>5} {lags:>22} {pq['eos_decided_to_final']:>16} "
            f"{pq['speech_end_to_final']:>19} {pq['word_to_partial']:>19} "
            f"{c['cpu_ratio']!s:>9} {c['worker_cores']:>8} "
            f"{c['box_busy_cores']:>5} {p['loadavg_before'][0]:>6}"
        )
    s = out["summary"]
    print(
        f"\nlargest flat N with p95 <= {out['config']['sla_ms']:.0f} ms: "
        f"EOS decided -> final: {s['capacity_eos_decided']}; "
        f"speech end -> final: {s['capacity_speech_end']}"
    )
    peer = out.get("peer")
    if peer:
        print(
            f"peer ({peer['package']}, {peer['duration_s']} s streams): largest N keeping up "
            f"{peer['largest_streams_keeping_up']}; speech end -> line completed p50/p95 ms:"
        )
        for r in peer["realtime"]:
            print(
                f"  N={r['streams']:>2}: {r['speech_end_to_line_completed_p50_ms']}/"
                f"{r['speech_end_to_line_completed_p95_ms']} keeps up {r['keeps_up']}, "
                f"{r['cpu_cores']} cores"
            )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="broker (default KAFKA_BOOTSTRAP_SERVERS / local)")
    ap.add_argument("--sessions", type=int, nargs="+", default=[4, 8, 16, 24])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of audio per session")
    ap.add_argument("--stagger", type=float, default=0.25, help="seconds between session starts")
    ap.add_argument("--update-interval", type=float, default=0.5, help="partial updates, s")
    ap.add_argument("--sample-s", type=float, default=2.0, help="lag sampling period")
    ap.add_argument("--warmup", type=float, default=5.0, help="s after the last session starts")
    ap.add_argument("--settle", type=float, default=5.0, help="idle s between ready and load")
    ap.add_argument("--flat-slack", type=float, default=1.0, help="allowed lag growth, s")
    ap.add_argument("--drain-timeout", type=float, default=90.0)
    ap.add_argument("--sla-ms", type=float, default=450.0)
    ap.add_argument("--no-peer", action="store_true", help="do not run bench_peer.py if missing")
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--files", nargs="+", default=list(FILES), help="bundled assets to play")
    ap.add_argument("--continuous", action="store_true",
                    help=f"continuous speech: --files {' '.join(CONTINUOUS)}")  # fmt: skip
    ap.add_argument("--split-stages", action="store_true",
                    help="segmenter and recognizer in two worker processes")  # fmt: skip
    ap.add_argument("--worker-arg", dest="worker_args", action="append", default=[],
                    help="streamscribe worker argument, e.g. --worker-arg=--workers=2")  # fmt: skip
    ap.add_argument("--worker-env", action="append", default=[], metavar="FIELD=VALUE",
                    help="worker setting STREAMSCRIBE_FIELD, e.g. partial_growth=0.5")  # fmt: skip
    ap.add_argument("--kill-at", type=float, help="run two workers; SIGKILL one S s into the load")
    ap.add_argument(
        "--work-dir",
        type=Path,
        help="keep the workers' and producer's logs here (default: a"
        " temporary folder, removed at the end)",
    )
    args = ap.parse_args(argv)
    if args.continuous:
        args.files = list(CONTINUOUS)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: start one (streamscribe broker start) or --bootstrap")
        return 1
    started = time.monotonic()
    out: dict[str, Any] = {
        "machine": machine(),
        "bootstrap": bootstrap,
        "config": {
            "files": list(args.files),
            "worker_args": args.worker_args,
            "worker_env": args.worker_env,
            "kill_second_worker_at_s": args.kill_at,
            "sessions": args.sessions,
            "duration_s": args.duration,
            "stagger_s": args.stagger,
            "update_interval_s": args.update_interval,
            "sample_s": args.sample_s,
            "warmup_s": args.warmup,
            "flat_slack_s": args.flat_slack,
            "sla_ms": args.sla_ms,
            "pace": "realtime",
            "worker": (
                "two processes, --stages segmenter and --stages recognizer"
                if args.split_stages
                else f"one process, --stages {STAGES}"
            )
            + ", settings defaults otherwise",
        },
        "peer": peer_baseline(not args.no_peer),
        "points": [],
    }
    print("loading the bare model ...", flush=True)
    bare = BareModel()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipe-")))
        else:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        files = [tiled(f, args.duration, work) for f in args.files]
        for n in args.sessions:
            print(f"N={n}: {n} sessions x {args.duration:g} s at real time ...", flush=True)
            out["points"].append(run_point(n, args, bootstrap, work, files, bare))
            p = out["points"][-1]
            o = p["outside"]
            print(
                f"  flat {p['flat']}, speech share {p['speech_share']}, outside speech end -> "
                f"final {o['speech_end_to_final_arrival_ms']}, partial interval "
                f"{o['partial_interval_ms']}, lines>1.5s without partial "
                f"{o['lines_over_1_5s_without_partial']}/{o['lines_over_1_5s']}, by length "
                f"{ {k: (v['p50'], v['p95']) for k, v in o['by_utterance_length_ms'].items()} }, "
                f"worker cores {p['cpu']['worker_cores']} (stages {p['cpu']['stage_cores']}, "
                f"broker {p['cpu']['broker_cores']}), lag {p['lag']['audio'].get('lag_end_s')}"
                f"/{p['lag']['utterances'].get('lag_end_s')} s",
                flush=True,
            )
            if p["failover"]:
                print(f"  failover: {p['failover']}", flush=True)
    out["summary"] = {
        "capacity_eos_decided": capacity(out["points"], "eos_decided_to_final", args.sla_ms),
        "capacity_speech_end": capacity(out["points"], "speech_end_to_final", args.sla_ms),
        "peer_largest_keeping_up": (out["peer"] or {}).get("largest_streams_keeping_up"),
    }
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    print_tables(out)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    png = args.output.with_suffix(".png")
    plot(out, png)
    print(f"\nwrote {args.output} and {png} ({out['bench_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
