"""Run every benchmark in ``bench/`` in sequence with its defaults (``make bench``).

Each bench is its own subprocess; it prints its figures and writes
``bench/results/<name>.json``. A bench that crashes is reported and the others still run
(the exit status is then 1); no bench ever fails on a number.

The broker benches need Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set, else the local broker
of the settings — started here (and stopped afterwards) when none answers, as
``make demo`` does. Run::

    .venv/bin/python bench/run_all.py                  # all, about 25-30 minutes on 2 cores
    .venv/bin/python bench/run_all.py --only producer segmenter_stage
    .venv/bin/python bench/run_all.py --skip peer pipeline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(BENCH))

#: (name, needs a broker), in the order they run: the cheap cores first.
BENCHES: Final = (
    ("asr_model", False),
    ("vad", False),
    ("sink", False),  # uses the broker when KAFKA_BOOTSTRAP_SERVERS is set, else skips it
    ("producer", True),
    ("segmenter_stage", True),
    ("recognizer", True),
    ("crash_restart", True),
    ("peer", False),
    ("pipeline", True),
)


def main(argv: Sequence[str] | None = None) -> int:
    names = [n for n, _ in BENCHES]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=names, help="run only these")
    ap.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    args = ap.parse_args(argv)
    chosen = [(n, b) for n, b in BENCHES if (not args.only or n in args.only)]
    chosen = [(n, b) for n, b in chosen if n not in args.skip]

    from bench_producer import broker_answers

    from streamscribe.core.settings import Settings

    settings = Settings.from_env()
    bootstrap = settings.bootstrap
    env = dict(os.environ)
    broker = None
    broker_ok = True
    if any(b for _, b in chosen):
        broker_ok = broker_answers(bootstrap)
        if not broker_ok and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            from streamscribe.broker import LocalBroker

            print(f"no broker at {bootstrap}: starting the local one ...", flush=True)
            broker = LocalBroker(settings)
            bootstrap = broker.start()
            broker_ok = True
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap

    outcome: list[tuple[str, str, float]] = []
    try:
        for name, needs_broker in chosen:
            if needs_broker and not broker_ok:
                outcome.append((name, f"skipped: no broker at {bootstrap}", 0.0))
                continue
            print(f"\n===== bench_{name}.py =====", flush=True)
            t0 = time.monotonic()
            code = subprocess.call([sys.executable, str(BENCH / f"bench_{name}.py")], env=env)
            outcome.append((name, "ok" if code == 0 else f"exit {code}", time.monotonic() - t0))
    finally:
        if broker is not None:
            broker.stop()
    print("\n===== summary =====")
    for name, status, wall in outcome:
        print(f"bench_{name + '.py':<22} {status:<40} {wall:6.0f} s")
    print(f"results: {BENCH / 'results'}; load average now {os.getloadavg()}")
    return 0 if all(s == "ok" or s.startswith("skipped") for _, s, _ in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
