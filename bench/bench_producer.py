"""Benchmark of the edge producer and the load generator on a real broker.

Prints figures and writes them to ``bench/results/producer.json``; never asserts.

Measures, with ``streamscribe.producers.file_producer.run_produce`` (one process, one thread,
the project's idempotent ``DeliveryProducer``):

1. **as fast as possible** (``pace="asap"``): chunks/s and MB/s (Kafka value bytes, which
   are the Avro ``AudioChunk`` with its PCM payload) for ``two_cities.wav`` (48 kHz) and
   ``beckett.wav`` (16 kHz), at several session counts (``--sessions``), ``--runs`` runs
   each, medians; plus the producing process's CPU time per chunk (``time.process_time``,
   which counts librdkafka's threads too). A run's wall time includes a start-up of up to
   ~0.5 s (connecting, the idempotent producer's init) and the final flush, which dominates
   small runs, so the *sustained* rate is reported as well: chunks ÷ the span from the
   first to the last broker append time (``LogAppendTime``, ms, per producer batch: only
   meaningful for the large runs) of the run's fresh topic;
2. **load generator CPU at real-time pace**: ``sessions=50, stagger_s=0.1,
   pace="realtime"`` over a ``--rt-duration`` s cut of ``two_cities.wav``; process CPU
   (``resource.getrusage`` user+sys) over the run ÷ session-seconds of audio, i.e. how much
   of a core one live session costs the generator; and whether it kept real time: the
   broker's append time (``LogAppendTime``) minus each chunk's ``captured_at_us`` (the time
   a live source would have had the chunk), read back from the topic.

The machine is shared: the load average is recorded with every result.

Also the home of the small Kafka helpers the other broker benches import
(``bench_segmenter_stage.py``, ``bench_pipeline.py``): :func:`bootstrap_address`,
:func:`fresh_topics`, :func:`drop_topics`, :func:`read_records`, :func:`summary`,
:func:`machine`.

Run (about 1-2 minutes on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_producer.py
    # longer: --sessions 1 16 64 --runs 5 --rt-sessions 100 --rt-duration 120
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.* helpers used by the other broker benches

from streamscribe.core.admin import admin_client, create_topics  # noqa: E402
from streamscribe.core.kafka import reader_config  # noqa: E402
from streamscribe.core.retry import poll_until  # noqa: E402
from streamscribe.core.settings import Settings  # noqa: E402
from streamscribe.producers.file_producer import ProduceJob, run_produce  # noqa: E402
from streamscribe.schemas.audio import AudioChunk  # noqa: E402
from streamscribe.schemas.topics import Topics  # noqa: E402

RESULTS: Final = ROOT / "bench" / "results" / "producer.json"
FILES: Final = ("two_cities.wav", "beckett.wav")  # 48 kHz and 16 kHz, mono PCM16


# --------------------------------------------------------------------------- shared helpers


def bootstrap_address(given: str | None = None) -> str:
    """``--bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the local broker of the settings."""
    return given or Settings.from_env().bootstrap


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    try:
        admin_client(bootstrap).list_topics(timeout=timeout_s)
    except Exception:  # any failure means "no broker here" to a benchmark
        return False
    return True


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def edge_settings(bootstrap: str, audio_topic: str) -> Settings:
    """Settings that make the producers publish to ``audio_topic`` on ``bootstrap``."""
    prefix = audio_topic.removesuffix(Topics("").audio)
    return Settings.from_env().with_overrides(bootstrap_servers=bootstrap, topic_prefix=prefix)


def fresh_topics(bootstrap: str, tag: str, partitions: int | None = None) -> Topics:
    """A unique topic prefix for this run, with all pipeline topics created."""
    topics = Topics(f"bench-{tag}-{uuid.uuid4().hex[:8]}.")
    create_topics(bootstrap, topics.specs(partitions=partitions or Settings.from_env().partitions))
    return topics


def drop_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Delete a benchmark's topics (best effort: a leftover topic is only disk space)."""
    if not names:
        return
    admin = admin_client(bootstrap)  # keep it alive until the futures resolve
    futures = admin.delete_topics(list(names), operation_timeout=30)
    for fut in futures.values():
        with contextlib.suppress(Exception):  # already gone / never created: nothing to clean
            fut.result(timeout=30)


def topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    names = admin_client(bootstrap).list_topics(timeout=10).topics
    return sorted(n for n in names if n.startswith(prefix))


def read_records(
    bootstrap: str,
    topic: str,
    *,
    stop: Callable[[Any], bool] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[Any]:
    """Every confluent-kafka message now in ``topic`` (up to the high watermarks at call time).

    ``stop(message)`` returning True ends the read early.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(reader_config(bootstrap, client="bench-read"))
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in md.partitions
        }
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions if ends[p] > 0])
        pos = dict.fromkeys((p for p in md.partitions if ends[p] > 0), 0)
        deadline = time.monotonic() + timeout_s
        while any(pos[p] < ends[p] for p in pos):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: timed out")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            pos[msg.partition()] = msg.offset() + 1
            yield msg
            if stop is not None and stop(msg):
                return
    finally:
        c.close()


class TopicFollower:
    """Follows ``topic`` from the beginning in a thread, keeping every value ``decode``d.

    A context manager: the thread starts on enter and stops on exit; :meth:`snapshot`
    returns what was read so far. The benches' event and transcript watchers are this.
    """

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], Any]) -> None:
        self.bootstrap, self.topic, self.decode = bootstrap, topic, decode
        self.items: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def __enter__(self) -> TopicFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(reader_config(self.bootstrap, client="bench-follow"))
        try:
            md = c.list_topics(self.topic, timeout=10).topics[self.topic]
            c.assign([TopicPartition(self.topic, p, 0) for p in md.partitions])
            while not self._stop.is_set():
                msg = c.poll(0.2)
                if msg is None or msg.error():
                    continue
                item = self.decode(msg.value())
                with self._lock:
                    self.items.append(item)
        finally:
            c.close()

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)

    def wait_for(self, done: Callable[[list[Any]], bool], timeout_s: float) -> bool:
        """Wait until ``done(snapshot)`` holds; False after ``timeout_s``."""
        return poll_until(lambda: done(self.snapshot()), timeout_s=timeout_s, interval_s=0.2)


def summary(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """n / p50 / p95 / max / mean of ``values`` (None when empty)."""
    if not len(values):
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), digits),
        "p95": round(float(np.percentile(a, 95)), digits),
        "max": round(float(a.max()), digits),
        "mean": round(float(a.mean()), digits),
    }


def asset(name: str) -> Path:
    from streamscribe.processors.asr import bundled_recording

    return bundled_recording(name)


def write_audio(path: Path, audio: np.ndarray, rate: int) -> Path:
    import soundfile as sf

    sf.write(str(path), audio, rate, subtype="PCM_16")
    return path


def tiled(name: str, seconds: float, out_dir: Path, *, repeat: int | None = None) -> Path:
    """The asset ``name`` at its own rate, repeated and cut to ``seconds`` (or ``repeat`` times)."""
    import soundfile as sf

    data, rate = sf.read(str(asset(name)), dtype="int16")
    n = len(data) * repeat if repeat else round(seconds * rate)
    reps = -(-n // len(data))
    audio = np.tile(data, reps)[:n]
    tag = f"x{repeat}" if repeat else f"{seconds:g}s"
    return write_audio(out_dir / f"{Path(name).stem}-{tag}.wav", audio, rate)


# --------------------------------------------------------------------------- measurements


def bench_asap(bootstrap: str, path: Path, sessions: int, runs: int) -> dict[str, Any]:
    """``runs`` runs, each into a fresh audio topic (deleted after it is read back)."""
    rows = []
    for _ in range(runs):
        topics = Topics(f"bench-prod-{uuid.uuid4().hex[:8]}.")
        audio_spec = next(t for t in topics.specs(Settings.from_env().partitions)
                          if t.name == topics.audio)  # fmt: skip
        create_topics(bootstrap, [audio_spec])
        try:
            job = ProduceJob(files=[str(path)], sessions=sessions, pace="asap")
            cpu0 = time.process_time()
            report = run_produce(job, edge_settings(bootstrap, topics.audio), progress=None)
            cpu = time.process_time() - cpu0  # includes reading the file (a few ms)
            appended = [m.timestamp()[1] for m in read_records(bootstrap, topics.audio)]
        finally:
            drop_topics(bootstrap, [topics.audio])
        d = report.delivery
        broker_s = (max(appended) - min(appended)) / 1000 if appended else 0.0
        rows.append(
            {
                "chunks": d.sent,
                "failed": d.failed,
                "mb": d.bytes_sent / 1e6,
                "wall_s": report.wall_seconds,
                "chunks_per_s": d.sent / report.wall_seconds,
                "mb_per_s": d.bytes_sent / 1e6 / report.wall_seconds,
                "audio_x_realtime": report.audio_seconds / report.wall_seconds,
                # first to last broker append (LogAppendTime, ms): connect/init excluded
                "broker_span_s": broker_s,
                "sustained_chunks_per_s": (d.sent - 1) / broker_s if broker_s > 0 else None,
                "sustained_mb_per_s": d.bytes_sent / 1e6 / broker_s if broker_s > 0 else None,
                "cpu_us_per_chunk": cpu / d.sent * 1e6,
                "loadavg": loadavg(),
            }
        )
    keys = ("chunks_per_s", "mb_per_s", "audio_x_realtime", "wall_s", "sustained_chunks_per_s",
            "sustained_mb_per_s", "cpu_us_per_chunk")  # fmt: skip
    med = {}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        med[k] = round(statistics.median(vals), 2) if vals else None
    return {"file": path.name, "sessions": sessions, "chunks": rows[0]["chunks"], **med,
            "failed": sum(r["failed"] for r in rows), "runs": rows}  # fmt: skip


def bench_realtime(
    bootstrap: str, topic: str, path: Path, sessions: int, stagger_s: float
) -> dict[str, Any]:
    import soundfile as sf

    audio_s = sf.info(str(path)).duration
    job = ProduceJob(files=[str(path)], sessions=sessions, stagger_s=stagger_s, pace="realtime")
    load_before = loadavg()
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    report = run_produce(job, edge_settings(bootstrap, topic), progress=None)
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - w0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    session_s = sessions * audio_s
    # Kept real time? broker append time - capture time, per chunk (ms; broker clock is ms).
    delays = []
    for msg in read_records(bootstrap, topic):
        chunk = AudioChunk.decode(msg.value())
        delays.append(msg.timestamp()[1] - chunk.captured_at_us / 1000)
    return {
        "file": path.name,
        "sessions": sessions,
        "stagger_s": stagger_s,
        "audio_s_per_session": round(audio_s, 2),
        "session_seconds": round(session_s, 1),
        "wall_s": round(wall, 2),
        "chunks": report.delivery.sent,
        "failed": report.delivery.failed,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_session_s": round(cpu / session_s, 5),
        "cores_used": round(cpu / wall, 3),
        "sessions_per_core": round(session_s / cpu, 0),
        "capture_to_broker_ms": summary(delays),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def print_tables(out: dict[str, Any]) -> None:
    print("\nas fast as possible (medians):")
    print(f"{'file':<16} {'sess':>4} {'chunks':>6} {'wall s':>6} {'chunks/s':>9} {'MB/s':>7} "
          f"{'x rt':>6} {'sust. chunks/s':>14} {'sust. MB/s':>10} {'cpu us/chunk':>12} "
          f"{'load1':>5}")  # fmt: skip
    for r in out["asap"]:
        sc, sm = r["sustained_chunks_per_s"], r["sustained_mb_per_s"]
        print(
            f"{r['file']:<16} {r['sessions']:>4} {r['chunks']:>6} {r['wall_s']:>6.2f} "
            f"{r['chunks_per_s']:>9.0f} {r['mb_per_s']:>7.1f} {r['audio_x_realtime']:>6.0f} "
            f"{sc or float('nan'):>14.0f} {sm or float('nan'):>10.1f} "
            f"{r['cpu_us_per_chunk']:>12.1f} {r['runs'][-1]['loadavg'][0]:>5.2f}"
        )
    print("  (chunks/s, MB/s: the whole run, incl. ~0.5 s connect + idempotent-producer init and "
          "the final flush;\n   sustained: first to last broker append time)")  # fmt: skip
    rt = out["realtime"]
    d = rt["capture_to_broker_ms"]
    print(
        f"\nload generator, real time: {rt['sessions']} sessions x {rt['audio_s_per_session']} s "
        f"(stagger {rt['stagger_s']} s): {rt['cpu_s']:.2f} CPU-s over {rt['wall_s']:.1f} s wall"
        f" = {rt['cpu_s_per_session_s'] * 1000:.2f} ms CPU per session-second "
        f"({rt['cores_used']:.3f} cores; ~{rt['sessions_per_core']:.0f} sessions per core)\n"
        f"  capture -> broker append: p50 {d['p50']} ms, p95 {d['p95']} ms, max {d['max']} ms; "
        f"load {rt['loadavg_before']} -> {rt['loadavg_after']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="broker (default KAFKA_BOOTSTRAP_SERVERS / local)")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 16, 64], help="asap sessions")
    ap.add_argument("--runs", type=int, default=3, help="asap runs per point (median)")
    ap.add_argument("--rt-sessions", type=int, default=50)
    ap.add_argument("--rt-stagger", type=float, default=0.1)
    ap.add_argument("--rt-duration", type=float, default=30.0, help="seconds of audio per session")
    ap.add_argument("--keep-topics", action="store_true", help="keep the real-time run's topics")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    if not broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: start one (streamscribe broker start) or --bootstrap")
        return 1
    out: dict[str, Any] = {"machine": machine(), "bootstrap": bootstrap, "asap": []}
    made: list[str] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-producer-") as tmp:
            for name in FILES:
                for n in args.sessions:
                    print(f"asap: {name} x {n} session(s) ...", flush=True)
                    row = bench_asap(bootstrap, asset(name), n, args.runs)
                    out["asap"].append(row)
            rt_topics = fresh_topics(bootstrap, "prodrt")
            made.append(rt_topics.audio)
            cut = tiled(FILES[0], args.rt_duration, Path(tmp))
            print(f"real time: {args.rt_sessions} x {args.rt_duration:g} s ...", flush=True)
            out["realtime"] = bench_realtime(
                bootstrap, rt_topics.audio, cut, args.rt_sessions, args.rt_stagger
            )
    finally:
        if not args.keep_topics:
            for prefix in {n.rsplit("audio", 1)[0] for n in made}:
                drop_topics(bootstrap, topics_with_prefix(bootstrap, prefix))
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    out["machine"]["loadavg_end"] = os.getloadavg()
    print_tables(out)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.output} ({out['bench_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
