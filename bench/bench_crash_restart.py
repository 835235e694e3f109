"""How often a worker restart after SIGKILL loses messages: faust as it is vs our fixes.

Prints figures and writes them to ``bench/results/crash_restart.json``; never asserts.

Each trial: a fresh topic with 10,000 ``(key, seq)`` messages over 50 keys; the foundation's
counter worker (``tests/integration/counter_app.py``, faust-streaming at-least-once, a
changelog-backed table holding per key the last seq applied and how many were applied) is
SIGKILLed once the changelog shows a chosen share of the updates (20-80 %, seeded), then
restarted and left to finish. A table restored exactly has ``n == 200`` for every key;
every missing update is a message whose offset was committed although its table write
never reached the changelog (lost at the crash, or skipped by the restarted worker).

Two arms, alternated trial by trial on one broker:

- ``faust``: faust-streaming 0.15.3 as it is;
- ``fixed``: with :func:`streamscribe.processors.faust_fixes.install_faust_fixes` (a complete
  producer-buffer flush before each commit; input partitions kept paused until the
  restarted worker has sought to its committed offsets; fetches limited to the partitions
  active when they began), what every streamscribe worker installs (the figures of record
  were taken before the third fix was added);
- ``static`` (``--arms``): ``fixed`` plus static group membership (``group.instance.id``), so
  the restarted worker takes its partitions back without waiting out the old session.

Run (about 30 s per trial and arm on 2 cores)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/bench_crash_restart.py --trials 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_producer import bootstrap_address, loadavg, machine  # noqa: E402

from streamscribe.core.admin import create_topics, delete_topics  # noqa: E402
from streamscribe.core.kafka import DeliveryProducer  # noqa: E402
from streamscribe.schemas.topics import TopicSpec  # noqa: E402
from tests.integration.kafka_read import json_table_state  # noqa: E402
from tests.procs import Proc, python_cmd  # noqa: E402

RESULTS: Final = ROOT / "bench" / "results" / "crash_restart.json"
APP: Final = str(ROOT / "tests" / "integration" / "counter_app.py")
ARMS: Final = ("faust", "fixed", "static")
N_KEYS: Final = 50
N_MESSAGES: Final = 10_000


def applied(state: dict[str, dict[str, int]]) -> int:
    return sum(v.get("n", 0) for v in state.values())


def trial(bootstrap: str, fixes: str, kill_share: float, workdir: Path) -> dict[str, Any]:
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    app_id = f"crash-app-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-counts-changelog"
    create_topics(bootstrap, [TopicSpec(topic, 4)])
    producer = DeliveryProducer(bootstrap)
    for i in range(N_MESSAGES):
        key = f"k{i % N_KEYS:02d}"
        producer.send(topic, key.encode(), json.dumps({"key": key, "seq": i // N_KEYS}).encode())
    producer.close()
    args = python_cmd(
        APP,
        bootstrap,
        topic,
        app_id,
        str(workdir / app_id),
        "0.001",
        "at_least_once",
        "faust" if fixes == "faust" else "fixed",
        *(["worker-0"] if fixes == "static" else []),
    )
    first = Proc(args, workdir / f"{app_id}-1.log")
    try:
        deadline = time.monotonic() + 240
        while applied(json_table_state(bootstrap, changelog)) < kill_share * N_MESSAGES:
            if time.monotonic() > deadline:
                raise TimeoutError("first worker too slow")
            time.sleep(0.3)
        first.kill9()
    finally:
        first.stop()
    at_kill = applied(json_table_state(bootstrap, changelog))
    second = Proc(args, workdir / f"{app_id}-2.log")
    t0 = time.monotonic()
    try:
        last_change, last_seen = time.monotonic(), -1
        resumed_s: float | None = None  # restart -> first new table update (1 s polls)
        while True:
            state = json_table_state(bootstrap, changelog)
            done = len(state) == N_KEYS and all(
                v.get("last") == N_MESSAGES // N_KEYS - 1 for v in state.values()
            )
            if done or time.monotonic() - last_change > 45:
                break
            if applied(state) != last_seen:
                last_seen, last_change = applied(state), time.monotonic()
                if resumed_s is None and last_seen > at_kill:
                    resumed_s = time.monotonic() - t0
            time.sleep(1.0)
    finally:
        second.stop()
    violations = json_table_state(bootstrap, f"{app_id}-violations-changelog")
    delete_topics(
        bootstrap,
        [topic, changelog, f"{app_id}-violations-changelog", f"{app_id}-__assignor-__leader"],
    )
    return {
        "fixes": fixes,
        "kill_share": round(kill_share, 3),
        "applied_at_kill": at_kill,
        "finished": done,
        "restart_to_progress_s": None if resumed_s is None else round(resumed_s, 1),
        "restart_to_done_s": round(time.monotonic() - t0, 1),
        "applied_total": applied(state),
        "lost_updates": N_MESSAGES - applied(state),
        "keys_short": sum(1 for v in state.values() if v.get("n") != N_MESSAGES // N_KEYS),
        "gap_violations": sum(violations.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--trials", type=int, default=5, help="trials per arm")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS[:2]), help="which variants to run"
    )
    args = ap.parse_args(argv)
    bootstrap = bootstrap_address(args.bootstrap)
    rng = random.Random(args.seed)
    workdir = Path(f"/tmp/bench-crash-{uuid.uuid4().hex[:6]}")
    workdir.mkdir(parents=True)
    rows = []
    for i in range(args.trials):
        share = rng.uniform(0.2, 0.8)
        for fixes in args.arms:
            row = trial(bootstrap, fixes, share, workdir)
            rows.append(row)
            print(f"trial {i + 1} {json.dumps(row)}", flush=True)
    summary = {}
    for fixes in args.arms:
        mine = [r for r in rows if r["fixes"] == fixes]
        summary[fixes] = {
            "trials": len(mine),
            "trials_with_loss": sum(1 for r in mine if r["lost_updates"]),
            "lost_updates": [r["lost_updates"] for r in mine],
            "unfinished": sum(1 for r in mine if not r["finished"]),
            "restart_to_progress_s_median": statistics.median(
                r["restart_to_progress_s"] for r in mine if r["restart_to_progress_s"] is not None
            ),
        }
        print(f"{fixes:>6}: {summary[fixes]}")
    out = (
        RESULTS
        if args.arms == list(ARMS[:2])
        else RESULTS.with_stem(f"{RESULTS.stem}_{'_'.join(args.arms)}")
    )
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "loadavg_end": loadavg(),
                "summary": summary,
                "trials": rows,
                "logs": str(workdir),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}; worker logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
