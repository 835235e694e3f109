"""A minimal faust-streaming worker for the foundation's end-to-end proof.

It consumes ``(key, seq)`` messages (raw bytes, decoded here, never by faust's JSON
serializer) into a changelog-backed table. The table holds, per key, the last seq applied
and how many were applied; a seq at or below the last one is a replay after a crash and
is skipped, so counts stay exact under at-least-once delivery.

Run: python counter_app.py BOOTSTRAP TOPIC APP_ID DATA_DIR [DELAY_S] [GUARANTEE] [FIXES] [INSTANCE]

GUARANTEE defaults to ``at_least_once``, the pipeline's. FIXES ``fixed`` (default) installs
:func:`streamscribe.processors.faust_fixes.install_faust_fixes`, as every pipeline worker
does; ``faust`` runs faust-streaming as it is, which loses messages on some restarts
(``bench/bench_crash_restart.py`` counts how often). INSTANCE, when given, is the
worker's static group membership id (``group.instance.id``): a restarted worker with the
same id takes its partitions back at once instead of waiting out the old session.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import faust

from streamscribe.processors.faust_fixes import install_faust_fixes


def make_app(
    bootstrap: str,
    topic_name: str,
    app_id: str,
    data_dir: str,
    delay_s: float,
    guarantee: str,
    instance: str | None = None,
) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=data_dir,
        topic_partitions=4,
        web_enabled=False,
        # Without static membership (INSTANCE) a restart waits for the old member's
        # session to expire: keep it short.
        broker_session_timeout=6.0,
        consumer_group_instance_id=instance,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=guarantee,
        broker_commit_every=100,
        broker_commit_interval=0.5,
    )
    source = app.topic(
        topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    counts = app.Table("counts", default=dict, partitions=4)
    violations = app.Table("violations", default=int, partitions=4)

    @app.agent(source, concurrency=1)
    async def consume(stream: Any) -> None:
        async for event in stream.events():
            try:
                doc = json.loads(event.value)
                key, seq = str(doc["key"]), int(doc["seq"])
            except (ValueError, KeyError, TypeError) as exc:
                print(f"undecodable value at offset {event.message.offset}: {exc}", flush=True)
                continue
            state = dict(counts[key]) if counts[key] else {"last": -1, "n": 0}
            if seq <= state["last"]:
                continue  # a replay after a crash: already applied
            if seq != state["last"] + 1:
                violations[key] += 1
            counts[key] = {"last": seq, "n": state["n"] + 1}
            if delay_s:
                await asyncio.sleep(delay_s)

    return app


def main() -> None:
    bootstrap, topic_name, app_id, data_dir = sys.argv[1:5]
    delay_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    guarantee = sys.argv[6] if len(sys.argv) > 6 else "at_least_once"
    if (sys.argv[7] if len(sys.argv) > 7 else "fixed") == "fixed":
        install_faust_fixes()
    instance = sys.argv[8] if len(sys.argv) > 8 else None
    app = make_app(bootstrap, topic_name, app_id, data_dir, delay_s, guarantee, instance)
    sys.argv = [sys.argv[0], "worker", "-l", "info", "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
