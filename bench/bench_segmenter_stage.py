"""Benchmark of the segmenter stage through a real faust worker (``--stages segmenter``).

Prints figures and writes them to ``bench/results/segmenter_stage.json``; never asserts.

Set-up: fresh topics; a backlog is produced as fast as possible — ``--sessions`` sessions of
``two_cities.wav`` (48 kHz, 44.4 s: the resample path is exercised) plus one session of
the same file repeated ``--long-repeat`` times — then one worker
(``python -m streamscribe.cli worker --stages segmenter --from-earliest``, a subprocess
like the integration tests start) drains it.

Measured:

1. **throughput**: chunks/s one worker sustains through reassembly + validation + resample
   + VAD + table writes + sends, from the first ``session_start`` to the last
   ``session_end`` on the events topic (their ``wall_us``, stamped by the worker); the
   worker's CPU (``/proc/<pid>/stat`` utime + stime, sampled every 0.1 s and interpolated
   at those two instants) ÷ seconds of audio = **CPU per real-time session** (cores one
   live session costs the stage);
2. **Kafka bytes per second of audio**, per session, from the topics read back: the sum of
   value sizes on the utterances topic, and on the worker's changelog topics
   ``<group>-segmenter-channels-changelog`` / ``<group>-segmenter-sessions-changelog``
   (a changelog record is attributed to the session its key names), for the 1x sessions
   and for the ``--long-repeat``x session. Equal bytes per audio second for both means the
   bytes grow linearly with the audio, not quadratically.

VAD batched vs unbatched (the core alone) is measured by ``bench/bench_vad.py``; its
figures are copied from ``bench/results/vad.json`` into this result when present.

The machine is shared: the load average is recorded with every result.

Also the home of the worker helpers ``bench_pipeline.py`` imports (:class:`CpuSampler`,
:func:`proc_cpu_s`, :func:`launch_worker`).

Run (about 1 minute on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_segmenter_stage.py
    # larger backlog: --sessions 32 --long-repeat 8
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
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
    edge_settings,
    fresh_topics,
    loadavg,
    machine,
    read_records,
    tiled,
    topics_with_prefix,
)

from streamscribe.producers.file_producer import ProduceJob, run_produce
from streamscribe.schemas.events import SessionEvent
from streamscribe.schemas.topics import Topics

RESULTS: Final = ROOT / "bench" / "results" / "segmenter_stage.json"
VAD_RESULTS: Final = ROOT / "bench" / "results" / "vad.json"
RECORDING: Final = "two_cities.wav"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
WORKER_READY: Final = "[^Worker]: Ready"
ASR_READY: Final = "ASR model loaded"
ENDED: Final = ("session_end", "idle_timeout")


# --------------------------------------------------------------------------- worker helpers


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process and its live children
    (``worker --workers N`` runs N children), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(OSError, ValueError):
            total += proc_cpu_s(int(child))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class CpuSampler:
    """Samples ``(epoch s, CPU s)`` of some processes every ``period_s`` in a thread.

    ``"box"`` is the whole machine's busy core-seconds (/proc/stat), sampled alongside.
    """

    def __init__(self, pids: dict[str, int], period_s: float = 0.1) -> None:
        self.pids = dict(pids)
        self.period_s = period_s
        self.samples: dict[str, list[tuple[float, float]]] = {k: [] for k in [*pids, "box"]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def add(self, name: str, pid: int) -> None:
        self.samples.setdefault(name, [])
        self.pids[name] = pid

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples["box"].append((time.time(), machine_busy()[0] / CLK_TCK))
            for name, pid in list(self.pids.items()):
                # not started yet / gone: keep the last sample
                with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                    self.samples[name].append((time.time(), proc_cpu_s(pid)))
            self._stop.wait(self.period_s)

    def at(self, name: str, epoch_s: float) -> float:
        """CPU seconds of ``name`` at ``epoch_s`` (linear between samples)."""
        pts = self.samples[name]
        if not pts:
            return 0.0
        if epoch_s <= pts[0][0]:
            return pts[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(pts):
            if t0 <= epoch_s <= t1:
                return c0 + (c1 - c0) * (epoch_s - t0) / max(t1 - t0, 1e-9)
        return pts[-1][1]


def launch_worker(
    bootstrap: str,
    topics: Topics,
    work: Path,
    group: str,
    stages: str,
    *args: str,
    **extra: str,
) -> Any:
    """Start ``streamscribe worker`` as a subprocess (own process group, log in ``work``).

    Returns a ``tests.procs.Proc``; the caller waits for readiness and always ``stop()``s it.
    """
    from tests.integration.pipeline import worker_env
    from tests.procs import Proc, streamscribe_cmd

    cmd = streamscribe_cmd(
        "worker", "--group-id", group, "--from-earliest", "--stages", stages, *args
    )
    env = worker_env(bootstrap, topics, work / f"data-{group}", **extra)
    return Proc(cmd, work / f"worker-{group}.log", env=env)


def wait_ready(
    proc: Any, stages: str, timeout_s: float = 180.0, processes: int = 1, per_stage: bool = False
) -> None:
    """Until the log shows ``processes`` workers ready (``worker --workers N`` logs N);
    ``per_stage``: each of them a process per stage (``STREAMSCRIBE_SPLIT_STAGES=true``),
    each logging faust's Ready."""
    deadline = time.monotonic() + timeout_s
    stage_count = len(stages.split(",")) if per_stage else 1
    needles = [(WORKER_READY, processes * stage_count)]
    if "recognizer" in stages:
        needles.append((ASR_READY, processes))
    for needle, count in needles:
        while proc.log_text().count(needle) < count:
            proc.wait_for_log(needle, max(deadline - time.monotonic(), 0.1))
            if proc.log_text().count(needle) < count:
                time.sleep(0.2)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} x {needle!r} not seen in {timeout_s} s")


class EventWatcher(TopicFollower):
    """Follows the events topic from the beginning in a thread; keeps every SessionEvent."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic, SessionEvent.decode)

    def ended(self) -> set[str]:
        return {e.session_id for e in self.snapshot() if e.kind in ENDED}

    def wait_ended(self, sessions: set[str], timeout_s: float) -> bool:
        return self.wait_for(lambda _: sessions <= self.ended(), timeout_s)


# --------------------------------------------------------------------------- measurement


def bytes_by_session(
    bootstrap: str, topic: str, sessions: Sequence[str]
) -> tuple[dict[str, list[int]], int]:
    """Per session: [value bytes, messages] of records whose key names it; and the total."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    by_len = sorted(sessions, key=len, reverse=True)  # longest first: no prefix confusion
    for msg in read_records(bootstrap, topic):
        size = len(msg.value() or b"")
        total += size
        key = (msg.key() or b"").decode("utf-8", "replace")
        sid = next((s for s in by_len if s in key), None)
        if sid is not None:
            per[sid][0] += size
            per[sid][1] += 1
    return dict(per), total


def vad_reference() -> dict[str, Any] | None:
    if not VAD_RESULTS.exists():
        return None
    vad = json.loads(VAD_RESULTS.read_text())
    return {
        "source": "bench/results/vad.json (bench/bench_vad.py)",
        "vad_batch_us_per_frame": {k: v["us_per_frame"] for k, v in vad["vad_batch"].items()},
        "many_channels": vad.get("many_channels"),
    }


def run(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    import soundfile as sf

    topics = fresh_topics(bootstrap, "seg")
    group = f"bench-seg-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    short = asset(RECORDING)
    long = tiled(RECORDING, 0, work, repeat=args.long_repeat)
    short_s, long_s = sf.info(str(short)).duration, sf.info(str(long)).duration
    cleanup = [topics.prefix, f"{group}-"]
    try:
        print(f"backlog: {args.sessions} x {short_s:.1f} s + 1 x {long_s:.1f} s ...", flush=True)
        reports = [
            run_produce(
                ProduceJob(files=[str(short)], sessions=args.sessions, session_id=f"s{tag}"),
                edge_settings(bootstrap, topics.audio),
                progress=None,
            ),
            run_produce(
                ProduceJob(files=[str(long)], session_id=f"L{tag}"),
                edge_settings(bootstrap, topics.audio),
                progress=None,
            ),
        ]
        short_ids, long_id = reports[0].sessions, reports[1].sessions[0]
        chunks = sum(r.delivery.delivered for r in reports)
        audio_s = args.sessions * short_s + long_s
        load_before = loadavg()
        with EventWatcher(bootstrap, topics.events) as watcher:
            proc = launch_worker(bootstrap, topics, work, group, "segmenter")
            try:
                with CpuSampler({"worker": proc.pid}) as cpu:
                    wait_ready(proc, "segmenter")
                    done = watcher.wait_ended({*short_ids, long_id}, args.timeout)
                    time.sleep(0.3)  # one more CPU sample after the last event
                events = watcher.snapshot()
            finally:
                log_tail = proc.log_text()[-2000:]
                proc.stop()
        starts = [e.wall_us for e in events if e.kind == "session_start"]
        ends = [e.wall_us for e in events if e.kind in ENDED]
        t0, t1 = min(starts) / 1e6, max(ends) / 1e6
        span = t1 - t0
        worker_cpu = cpu.at("worker", t1) - cpu.at("worker", t0)
        box = cpu.at("box", t1) - cpu.at("box", t0)
        print("reading back utterances and changelogs ...", flush=True)
        out_bytes: dict[str, Any] = {}
        ids = [*short_ids, long_id]
        for label, topic in (
            ("audio", topics.audio),
            ("utterances", topics.utterances),
            ("channels_changelog", f"{group}-segmenter-channels-changelog"),
            ("sessions_changelog", f"{group}-segmenter-sessions-changelog"),
        ):
            per, total = bytes_by_session(bootstrap, topic, ids)
            s_bps = [per.get(s, [0, 0])[0] / short_s for s in short_ids]
            s_msgs = [per.get(s, [0, 0])[1] for s in short_ids]
            long_b, long_m = per.get(long_id, [0, 0])
            out_bytes[label] = {
                "topic": topic,
                "total_bytes": total,
                "short_bytes_per_audio_s": round(statistics.median(s_bps), 1),
                "short_messages": statistics.median(s_msgs),
                "long_bytes_per_audio_s": round(long_b / long_s, 1),
                "long_messages": long_m,
                "long_over_short": round(long_b / long_s / max(statistics.median(s_bps), 1e-9), 3),
                # the record size, which does not depend on how often faust flushes a key
                "short_bytes_per_message": round(
                    statistics.median(s_bps) * short_s / max(statistics.median(s_msgs), 1), 1
                ),
            }
        return {
            "config": {
                "recording": RECORDING,
                "sessions": args.sessions,
                "short_audio_s": round(short_s, 2),
                "long_repeat": args.long_repeat,
                "long_audio_s": round(long_s, 2),
                "chunk_ms": 100,
                "group": group,
            },
            "all_sessions_ended": done,
            "throughput": {
                "chunks": chunks,
                "audio_s": round(audio_s, 1),
                "span_s": round(span, 2),
                "chunks_per_s": round(chunks / span, 1),
                "audio_x_realtime": round(audio_s / span, 1),
                "worker_cpu_s": round(worker_cpu, 2),
                "worker_cores": round(worker_cpu / span, 2),
                "cpu_s_per_audio_s": round(worker_cpu / audio_s, 5),
                "realtime_sessions_per_core": round(audio_s / max(worker_cpu, 1e-9), 1),
                "machine_busy_cores": round(box / span, 2),
            },
            "bytes": out_bytes,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "worker_log_tail": None if done else log_tail,
        }
    finally:
        if not args.keep_topics:
            for prefix in cleanup:
                drop_topics(bootstrap, topics_with_prefix(bootstrap, prefix))


def print_result(out: dict[str, Any]) -> None:
    t, c = out["throughput"], out["config"]
    print(
        f"\nsegmenter stage, one worker: {t['chunks']} chunks ({t['audio_s']} s of audio, "
        f"{c['sessions']} x {c['short_audio_s']} s + 1 x {c['long_audio_s']} s) in "
        f"{t['span_s']} s: {t['chunks_per_s']:.0f} chunks/s, {t['audio_x_realtime']:.0f}x "
        f"real time\n  worker CPU {t['worker_cpu_s']} s ({t['worker_cores']} cores) = "
        f"{t['cpu_s_per_audio_s'] * 1000:.1f} ms CPU per audio second "
        f"(~{t['realtime_sessions_per_core']:.0f} real-time sessions per core); "
        f"box busy {t['machine_busy_cores']} cores; load {out['loadavg_before']} -> "
        f"{out['loadavg_after']}"
    )
    print(f"\n{'bytes per audio second':<22} {'short (1x)':>11} {'long':>11} {'long/short':>10} "
          f"{'msgs 1x':>8} {'msgs long':>9}")  # fmt: skip
    for label, b in out["bytes"].items():
        print(
            f"{label:<22} {b['short_bytes_per_audio_s']:>11.0f} "
            f"{b['long_bytes_per_audio_s']:>11.0f} {b['long_over_short']:>10.2f} "
            f"{b['short_messages']:>8.0f} {b['long_messages']:>9}"
        )
    vad = out.get("vad_reference")
    if vad:
        print(f"\nVAD core alone ({vad['source']}): us per frame by batch size "
              f"{vad['vad_batch_us_per_frame']}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="broker (default KAFKA_BOOTSTRAP_SERVERS / local)")
    ap.add_argument("--sessions", type=int, default=8, help="1x sessions in the backlog")
    ap.add_argument("--long-repeat", type=int, default=4, help="repeats in the long session")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to drain the backlog")
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: start one (streamscribe broker start) or --bootstrap")
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        out: dict[str, Any] = {"machine": machine(), "bootstrap": bootstrap}
        out.update(run(args, bootstrap, Path(tmp)))
    out["vad_reference"] = vad_reference()
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    print_result(out)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.output} ({out['bench_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
