"""Foundation proof on the real broker: keyed delivery, a faust table surviving SIGKILL,
and data surviving a broker restart."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from streamscribe.broker import LocalBroker, free_port
from streamscribe.core.admin import create_topics
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.core.settings import Settings
from streamscribe.schemas.topics import TopicSpec
from tests.integration.kafka_read import json_table_state, read_topic
from tests.procs import Proc, python_cmd

pytestmark = pytest.mark.integration

N_KEYS = 50
N_MESSAGES = 10_000
APP = str(Path(__file__).with_name("counter_app.py"))


def _produce(bootstrap: str, topic: str) -> None:
    producer = DeliveryProducer(bootstrap)
    for i in range(N_MESSAGES):
        key = f"k{i % N_KEYS:02d}"
        producer.send(topic, key.encode(), json.dumps({"key": key, "seq": i // N_KEYS}).encode())
    stats = producer.close()
    assert (stats.sent, stats.delivered, stats.failed) == (N_MESSAGES, N_MESSAGES, 0)


def _wait_state(
    bootstrap: str, changelog: str, done, timeout_s: float
) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout_s
    state: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        state = json_table_state(bootstrap, changelog)
        if done(state):
            return state
        time.sleep(1.0)
    return state


def test_keyed_messages_arrive_once_in_order(kafka_bootstrap: str) -> None:
    topic = f"proof-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [TopicSpec(topic, 4)])
    _produce(kafka_bootstrap, topic)
    seen: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in read_topic(kafka_bootstrap, topic):
        seen[r.key.decode()].append(json.loads(r.value)["seq"])
        partitions[r.key.decode()].add(r.partition)
    assert len(seen) == N_KEYS
    for key, seqs in seen.items():
        assert seqs == list(range(N_MESSAGES // N_KEYS)), key
        assert len(partitions[key]) == 1


def test_faust_table_survives_sigkill(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The counter worker is SIGKILLed twice under a backlog; its table ends exact.

    Each restart restores the table from its changelog and resumes from the committed
    offsets. Both faust-streaming 0.15.3 bugs that ``install_faust_fixes`` works around
    showed up here as missing updates (``bench/bench_crash_restart.py`` counts them).
    """
    topic = f"proof-{uuid.uuid4().hex[:8]}"
    app_id = f"proof-app-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-counts-changelog"
    create_topics(kafka_bootstrap, [TopicSpec(topic, 4)])
    # an undecodable value first: the agent must survive it
    bad = DeliveryProducer(kafka_bootstrap)
    bad.send(topic, b"k00", b"\xff\xfe not json")
    assert bad.close().delivered == 1
    _produce(kafka_bootstrap, topic)
    args = python_cmd(
        APP, kafka_bootstrap, topic, app_id, str(tmp_path / "w"), "0.001", "at_least_once"
    )
    workers: list[Proc] = []
    for kill_at in (2000, 5500):
        worker = Proc(args, tmp_path / f"worker{len(workers) + 1}.log")
        workers.append(worker)
        try:
            partial = _wait_state(
                kafka_bootstrap,
                changelog,
                lambda s, at=kill_at: sum(v.get("n", 0) for v in s.values()) >= at,
                180,
            )
            applied_before = sum(v.get("n", 0) for v in partial.values())
            assert kill_at <= applied_before < N_MESSAGES, "kill must happen mid-stream"
            worker.kill9()
        finally:
            worker.stop()
    t_restart = time.monotonic()
    last = Proc(args, tmp_path / f"worker{len(workers) + 1}.log")
    workers.append(last)
    try:
        final = _wait_state(
            kafka_bootstrap,
            changelog,
            lambda s: (
                len(s) == N_KEYS
                and all(v.get("last") == N_MESSAGES // N_KEYS - 1 for v in s.values())
            ),
            240,
        )
        resumed_in = time.monotonic() - t_restart
    finally:
        last.stop()
    assert "undecodable value" in workers[0].log_text()
    logs = "\n".join(f"--- {w.log_path.name}\n{w.log_text()[-1500:]}" for w in workers)
    assert len(final) == N_KEYS, logs
    for key, value in final.items():
        assert value == {"last": N_MESSAGES // N_KEYS - 1, "n": N_MESSAGES // N_KEYS}, (key, logs)
    assert json_table_state(kafka_bootstrap, f"{app_id}-violations-changelog") == {}
    print(f"last restarted worker finished in {resumed_in:.1f} s")


def test_broker_restart_keeps_messages(tmp_path: Path) -> None:
    settings = Settings.from_env().with_overrides(
        broker_port=free_port(), broker_controller_port=free_port(), broker_data_dir=tmp_path / "k"
    )
    broker = LocalBroker(settings)
    try:
        bootstrap = broker.start()
        topic = "persist"
        create_topics(bootstrap, [TopicSpec(topic, 2)])
        producer = DeliveryProducer(bootstrap)
        for i in range(500):
            producer.send(topic, f"k{i % 5}".encode(), str(i).encode())
        assert producer.close().delivered == 500
        assert broker.stop() is True
        assert broker.status().running is False
        broker.start()
        values = sorted(int(r.value) for r in read_topic(bootstrap, topic))
        assert values == list(range(500))
        assert "4.3.1" in broker.status().describe()
    finally:
        broker.stop()
    assert broker.status().running is False
