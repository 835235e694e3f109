"""The local broker's set-up, without starting a JVM: config, missing Java/Maven messages."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from streamscribe import broker as broker_mod
from streamscribe.broker import LocalBroker
from streamscribe.cli import main
from streamscribe.core.errors import BrokerError
from streamscribe.core.settings import Settings


def _broker(tmp_path: Path) -> LocalBroker:
    s = Settings().with_overrides(
        broker_port=19999, broker_data_dir=tmp_path / "data", broker_cache_dir=tmp_path / "cache"
    )
    return LocalBroker(s)


def test_config_is_one_node_kraft_with_single_replica_internal_topics(tmp_path: Path) -> None:
    b = _broker(tmp_path)
    b.write_config()
    props = dict(
        line.split("=", 1) for line in b.config_file.read_text().splitlines() if "=" in line
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:20000"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19999,CONTROLLER://127.0.0.1:20000"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "1", key
    assert props["log.dirs"] == str(tmp_path / "data" / "logs")


@pytest.mark.parametrize(
    ("missing", "message"), [("java", "Java is not installed"), ("mvn", "Maven (mvn)")]
)
def test_missing_java_or_maven_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, message: str
) -> None:
    real = broker_mod.shutil.which
    monkeypatch.setattr(broker_mod.shutil, "which", lambda n: None if n == missing else real(n))
    with pytest.raises(BrokerError) as err:
        _broker(tmp_path).start()
    assert message in str(err.value) and "docker compose up" in str(err.value)


def test_cli_says_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(broker_mod.shutil, "which", lambda n: None)
    code = main(["broker", "start", "--port", "19999", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("streamscribe broker: error:") and "docker compose up" in err[0]


def test_status_of_a_stopped_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["broker", "status", "--port", "19999", "--data-dir", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert code == 3 and "Apache Kafka 4.3.1" in out and "stopped" in out


def test_cluster_ids_never_look_like_options() -> None:
    ids = [broker_mod.new_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == 2000


class ExitedJvm:
    """A stand-in for the broker's JVM process that has already exited."""

    returncode = 1

    def poll(self) -> int:
        return self.returncode


def test_readiness_wait_stops_at_once_when_the_jvm_exits(tmp_path: Path) -> None:
    log_file = tmp_path / "broker.log"
    log_file.write_text("starting\nERROR Address already in use\n")
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=re.escape("code 1: starting | ERROR Address")):
        broker_mod.wait_until_ready(
            f"127.0.0.1:{broker_mod.free_port()}",
            30,
            proc=ExitedJvm(),  # type: ignore[arg-type]
            log_file=log_file,
        )
    assert time.monotonic() - t0 < 5


def test_readiness_wait_gives_up_after_the_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"not ready after 1 s"):
        broker_mod.wait_until_ready(f"127.0.0.1:{broker_mod.free_port()}", 1.0)
    assert time.monotonic() - t0 < 10


def test_wait_exit_reaps_a_child_and_times_out_on_a_live_one() -> None:
    quick = subprocess.Popen(["sleep", "0.2"])
    assert broker_mod._wait_exit(quick.pid, 10, 0.05) is True
    slow = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert broker_mod._wait_exit(slow.pid, 0.3, 0.05) is False
        assert 0.3 <= time.monotonic() - t0 < 3
    finally:
        slow.kill()
        slow.wait()
