"""Benchmark of the transcript sink: finals stored per second, batched vs one per transaction.

Prints figures and writes them to ``bench/results/sink.json``; never asserts. Run::

    .venv/bin/python bench/bench_sink.py [--finals 5000] [--pg-url URL] [--bootstrap HOST:PORT]

Measures:

- the store alone (``TranscriptStore.write_batched``) on a SQLite file (WAL,
  ``synchronous=FULL``) and on PostgreSQL, at 1, 10, 100 and 500 finals per transaction:
  new finals/s, and replayed (duplicate) finals/s at the largest batch;
- when a broker answers (``--bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``): the whole sink
  (consume, decode, upsert, offset commit) on SQLite at batch 500 and batch 1, from the
  first stored batch to the last (group join time excluded).

PostgreSQL: ``--pg-url``, else a throwaway local server from ``tests/pg.py`` with the
server's durable defaults (fsync on), else skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.pg

from streamscribe.consumers.sink import DecodedBatch, run_sink  # noqa: E402
from streamscribe.consumers.store import TranscriptStore  # noqa: E402
from streamscribe.core.settings import Settings  # noqa: E402
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript  # noqa: E402

RESULTS: Final = ROOT / "bench" / "results" / "sink.json"
BATCH_SIZES: Final = (1, 10, 100, 500)
ONE_BY_ONE_CAP: Final = 1000  # finals written at batch size 1 (it is slow on purpose)


def make_finals(n: int, run: str) -> list[FinalTranscript]:
    """``n`` finals over 2-channel sessions of 50 lines, with full timestamps."""
    out = []
    t0 = 1_700_000_000_000_000
    for i in range(n):
        session, line = divmod(i, 50)
        ts = {k: t0 + i * 1000 + j * 100 for j, k in enumerate(TIMESTAMP_ORDER)}
        out.append(
            FinalTranscript(
                session_id=f"{run}-s{session}",
                channel=line % 2,
                role=("agent", "customer")[line % 2],
                utterance=line // 2,
                revision=1,
                text=f"utterance {line} of session {session}: a sentence of typical length here",
                start_ms=line * 2500.0,
                end_ms=line * 2500.0 + 2000.0,
                confidence=0.87,
                timestamps=ts,
                summary={"words": 11},
            )
        )
    return out


def bench_store(url: str, n: int) -> dict[str, Any]:
    store = TranscriptStore(url)
    res: dict[str, Any] = {"finals_per_s": {}}
    for bs in BATCH_SIZES:
        finals = make_finals(
            min(n, ONE_BY_ONE_CAP) if bs == 1 else n, f"b{bs}-{uuid.uuid4().hex[:6]}"
        )
        t0 = time.perf_counter()
        written = store.write_batched(finals, bs).finals_written
        dt = time.perf_counter() - t0
        res["finals_per_s"][str(bs)] = round(written / dt, 1)
        print(f"  batch {bs:4d}: {written / dt:9.0f} finals/s ({written} in {dt:.2f} s)")
        if bs == BATCH_SIZES[-1]:
            t0 = time.perf_counter()
            again = store.write_batched(finals, bs)
            dt = time.perf_counter() - t0
            res["replayed_per_s"] = round(again.finals_in / dt, 1)
            print(f"  replay {bs:3d}: {again.finals_in / dt:9.0f} finals/s (all unchanged)")
    res["speedup_500_vs_1"] = round(res["finals_per_s"]["500"] / res["finals_per_s"]["1"], 1)
    store.close()
    return res


def bench_kafka_sink(bootstrap: str, n: int, batch_size: int, workdir: Path) -> dict[str, Any]:
    from confluent_kafka import Producer

    from streamscribe.core.admin import create_topics
    from streamscribe.schemas.topics import Topics

    topics = Topics(f"bench{uuid.uuid4().hex[:8]}.")
    create_topics(bootstrap, topics.specs(partitions=4))
    finals = make_finals(n, "k")
    conf = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    for f in finals:
        while True:
            try:
                producer.produce(topics.transcripts, key=f.key, value=f.encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=bootstrap, topic_prefix=topics.prefix
    )
    stop = threading.Event()
    marks: list[tuple[float, int]] = []

    def hook(batch: DecodedBatch) -> None:
        marks.append((time.perf_counter(), batch.messages))
        if sum(m for _, m in marks) >= n:
            stop.set()

    url = f"sqlite:///{workdir / f'kafka-{batch_size}.db'}"
    run_sink(settings, db_url=url, group_id="bench", from_earliest=True, stop_event=stop,
             batch_size=batch_size, max_idle_s=30.0, after_db_commit=hook)  # fmt: skip
    if len(marks) < 2:
        return {"error": "too few batches"}
    counted = sum(m for _, m in marks[1:])
    dt = marks[-1][0] - marks[0][0]
    rate = counted / dt if dt > 0 else float("nan")
    print(f"  kafka sink batch {batch_size:4d}: {rate:9.0f} finals/s ({len(marks)} batches)")
    return {"finals_per_s": round(rate, 1), "batches": len(marks), "finals": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finals", type=int, default=5000)
    ap.add_argument("--pg-url", help="an existing PostgreSQL database (else a throwaway server)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--kafka-finals", type=int, default=3000)
    args = ap.parse_args()
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "finals": args.finals,
        "one_by_one_cap": ONE_BY_ONE_CAP,
    }
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        work = Path(tmp)
        print("SQLite (file, WAL, synchronous=FULL):")
        results["sqlite"] = bench_store(f"sqlite:///{work / 'bench.db'}", args.finals)
        print("PostgreSQL:")
        if args.pg_url:
            results["postgresql"] = bench_store(args.pg_url, args.finals)
        else:
            try:
                from tests.pg import PostgresServer, PostgresUnavailable

                with PostgresServer(durable=True) as server:
                    results["postgresql"] = bench_store(server.url, args.finals)
                    results["postgresql"]["server"] = "throwaway local, fsync on"
            except PostgresUnavailable as exc:
                print(f"  skipped: {exc}")
                results["postgresql"] = {"skipped": str(exc)}
        if args.bootstrap:
            print(f"Kafka -> sink -> SQLite ({args.bootstrap}):")
            try:
                results["kafka_sink"] = {
                    str(bs): bench_kafka_sink(args.bootstrap, n, bs, work)
                    for bs, n in ((500, args.kafka_finals), (1, min(args.kafka_finals, 1000)))
                }
            except Exception as exc:  # a benchmark reports, it does not fail
                print(f"  skipped: {exc}")
                results["kafka_sink"] = {"skipped": str(exc)}
        else:
            results["kafka_sink"] = {"skipped": "no broker (--bootstrap / KAFKA_BOOTSTRAP_SERVERS)"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
