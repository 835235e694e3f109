"""What an idle worker costs: CPU of ``streamscribe worker`` holding its partitions with
no traffic, for a few values of one setting (default ``fetch_max_wait_ms``).

A shorter ``fetch_max_wait_ms`` makes a takeover's requests wait less behind a fetch of
quiet partitions (``processors/faust_fixes.py install_fetch_max_wait``), and makes an
idle consumer fetch more often; this measures the second. Arms alternate (a, b, c, a, b,
c, ...) so the box's drift hits them alike; the figure is the median per arm.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19093 .venv/bin/python bench/bench_worker_idle.py \\
        --values 100 250 1500 --rounds 2 --window 30

Prints a table and saves ``bench/results/worker_idle_<setting>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling bench modules

from bench_producer import fresh_topics
from bench_segmenter_stage import launch_worker, proc_cpu_s, wait_ready

from streamscribe.core.settings import Settings

STAGES = "segmenter,recognizer"
RESULTS = Path(__file__).resolve().parent / "results"


def idle_cores(
    bootstrap: str, work: Path, setting: str, value: str, window_s: float, split: bool
) -> float:
    """Cores used by one worker (all its processes) over ``window_s`` of no traffic, after
    it is ready and a settle of 5 s."""
    topics = fresh_topics(bootstrap, "idle")
    group = f"bench-idle-{uuid.uuid4().hex[:8]}"
    worker = launch_worker(
        bootstrap,
        topics,
        work,
        group,
        STAGES,
        split_stages="true" if split else "false",
        **{setting: value},
    )
    try:
        wait_ready(worker, STAGES, per_stage=split)
        time.sleep(5.0)
        t0, c0 = time.monotonic(), proc_cpu_s(worker.pid)
        time.sleep(window_s)
        t1, c1 = time.monotonic(), proc_cpu_s(worker.pid)
    finally:
        worker.stop()
    return (c1 - c0) / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=None, help="broker (default: the settings')")
    ap.add_argument("--setting", default="fetch_max_wait_ms", help="worker setting to vary")
    ap.add_argument("--values", nargs="+", default=["100", "250", "1500"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=30.0, help="idle seconds measured")
    ap.add_argument("--split-stages", action="store_true", help="a process per stage")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args(argv)
    bootstrap = args.bootstrap or Settings.from_env().bootstrap
    runs: dict[str, list[float]] = {v: [] for v in args.values}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        for r in range(args.rounds):
            for value in args.values:
                cores = idle_cores(
                    bootstrap, Path(tmp), args.setting, value, args.window, args.split_stages
                )
                runs[value].append(round(cores, 4))
                print(f"round {r + 1}: {args.setting}={value}: {cores:.4f} cores", flush=True)
    print(f"\n{args.setting:>20}  idle cores (median of {args.rounds})")
    for value in args.values:
        print(f"{value:>20}  {statistics.median(runs[value]):.4f}")
    out: dict[str, Any] = {
        "setting": args.setting,
        "split_stages": args.split_stages,
        "window_s": args.window,
        "runs": runs,
        "median_idle_cores": {v: statistics.median(runs[v]) for v in args.values},
    }
    path = args.output or RESULTS / f"worker_idle_{args.setting}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
