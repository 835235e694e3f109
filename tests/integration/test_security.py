"""The pipeline on a secured broker (issue 14): SASL_SSL + SCRAM-SHA-512, ACLs per service.

One broker of its own for the module (``streamscribe broker start --secure`` on free ports,
a temporary data dir), stopped at the end even when a test fails. Every client of a test
runs as one of the four principals through its ``--kafka-config`` file:

- produce (edge) → worker (processors) → sink (sinks) stores the same finals as the
  offline transcription of the same file (which the PLAINTEXT pipeline matches, see
  test_recognizer_stage), and no secret appears in any process's output;
- a wrong password ends a command in one line naming the user, exit 2, in seconds;
- a principal without an ACL is refused with the topic or group it may not use: the
  sinks principal cannot write audio, the edge principal cannot use the sink's group;
- the broker's key material and the client files are readable by their owner only.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamscribe.broker import LocalBroker, free_port
from streamscribe.broker_secure import PRINCIPALS
from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.security import read_properties, register
from streamscribe.core.settings import Settings
from streamscribe.processors.asr import MoonshineAsr
from streamscribe.processors.offline import transcribe_file
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript
from tests.integration.kafka_read import read_topic
from tests.integration.pipeline import WORKER_READY
from tests.procs import ROOT, Proc, streamscribe_cmd

pytestmark = pytest.mark.integration

PREFIX = "sec."
STEM = "sec"


@dataclass(frozen=True)
class SecureBroker:
    bootstrap: str
    data_dir: Path

    def client_file(self, principal: str) -> Path:
        return self.data_dir / "clients" / f"{principal}.properties"

    def passwords(self) -> list[str]:
        return list(json.loads((self.data_dir / "secure.json").read_text())["passwords"].values())

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMSCRIBE_TOPIC_PREFIX": PREFIX,
        }


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    data_dir = Path(tempfile.mkdtemp(prefix="streamscribe-secure-kafka-"))
    settings = Settings.from_env().with_overrides(
        broker_port=free_port(),
        broker_controller_port=free_port(),
        broker_data_dir=data_dir,
        topic_prefix=PREFIX,
    )
    broker = LocalBroker(settings, secure=True)
    try:
        bootstrap = broker.start()
        # This test process reads topics back as admin (tests/integration/kafka_read.py).
        register(bootstrap, read_properties(broker.client_file("admin")))
        yield SecureBroker(bootstrap, data_dir)
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_cli(
    broker: SecureBroker, principal_file: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        streamscribe_cmd("--kafka-config", str(principal_file), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **broker.env()},
    )


def test_secured_pipeline_stores_the_offline_finals(
    secure_broker: SecureBroker, assets: Path, tmp_path: Path
) -> None:
    b = secure_broker
    wav = assets / "beckett.wav"
    expected = [u.text for u in transcribe_file(wav, asr=MoonshineAsr.load())]
    produced = run_cli(
        b,
        b.client_file("edge"),
        "produce",
        str(wav),
        "--session-id",
        "sec-beckett",
        "--pace",
        "asap",
        "--live",  # finals one by one: exactly the offline text
    )
    assert produced.returncode == 0, produced.stderr
    assert "delivered: 100, failed: 0" in produced.stdout

    worker = Proc(
        streamscribe_cmd(
            "--kafka-config",
            str(b.client_file("processors")),
            "worker",
            "--group-id",
            f"{STEM}-processors",
            "--from-earliest",
        ),
        tmp_path / "worker.log",
        env={**b.env(), "STREAMSCRIBE_WORKER_DATA_DIR": str(tmp_path / "worker")},
    )
    try:
        worker.wait_for_log(WORKER_READY, 180)
        deadline = time.monotonic() + 240
        finals: list[str] = []
        while time.monotonic() < deadline and len(finals) < len(expected):
            finals = [
                event.text
                for r in read_topic(b.bootstrap, Topics(PREFIX).transcripts)
                if isinstance(event := decode_transcript(r.value), FinalTranscript)
            ]
            time.sleep(1.0)
        assert len(finals) >= len(expected), worker.log_text()[-3000:]
    finally:
        worker.stop()
    db = f"sqlite:///{tmp_path / 'sec.db'}"
    sink = run_cli(
        b, b.client_file("sinks"), "sink", "--db", db, "--group-id", f"{STEM}-sink",
        "--max-idle", "5",
    )  # fmt: skip
    assert sink.returncode == 0, sink.stderr
    with TranscriptStore(db) as store:
        stored = [f.final.text for f in store.finals("sec-beckett")]
    assert stored == expected

    # No secret in anything a process printed (all three principals and the broker's),
    # nor in the broker's own log (Kafka prints its configuration there at start).
    printed = produced.stdout + produced.stderr + sink.stdout + sink.stderr + worker.log_text()
    broker_log = (b.data_dir / "broker.log").read_text(errors="replace")
    assert "SASL_SSL" in broker_log  # the log is the broker's, with its listeners
    for secret in b.passwords():
        assert secret not in printed and secret not in broker_log


def test_wrong_password_is_one_line_naming_the_user(
    secure_broker: SecureBroker, assets: Path, tmp_path: Path
) -> None:
    b = secure_broker
    bad = tmp_path / "bad.properties"
    text = b.client_file("edge").read_text()
    bad.write_text(
        "\n".join(
            "sasl.password=not-the-password-4711" if line.startswith("sasl.password=") else line
            for line in text.splitlines()
        )
    )
    t0 = time.monotonic()
    res = run_cli(b, bad, "produce", str(assets / "beckett.wav"), "--pace", "asap")
    took = time.monotonic() - t0
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("streamscribe")]
    assert lines == [
        f"streamscribe produce: error: authentication failed for user edge at {b.bootstrap} "
        f"(SASL_SSL, SCRAM-SHA-512): check sasl.username/sasl.password in {bad}"
    ], res.stderr
    assert "Traceback" not in res.stderr and "not-the-password-4711" not in res.stderr
    print(f"wrong password refused after {took:.1f} s (process start included)")
    # The same for a consumer (the sink).
    res = run_cli(b, bad, "sink", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--max-idle", "3")
    assert res.returncode == 2
    assert "authentication failed for user edge" in res.stderr and "Traceback" not in res.stderr


def test_missing_acl_names_the_topic_or_group(
    secure_broker: SecureBroker, assets: Path, tmp_path: Path
) -> None:
    b = secure_broker
    res = run_cli(
        b, b.client_file("sinks"), "produce", str(assets / "beckett.wav"),
        "--session-id", "sec-refused",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"streamscribe produce: error: user sinks may not write to topic {PREFIX}audio "
        "(TOPIC_AUTHORIZATION_FAILED)"
    ), res.stderr
    assert "Traceback" not in res.stderr

    res = run_cli(
        b, b.client_file("edge"), "sink", "--db", f"sqlite:///{tmp_path / 'y.db'}",
        "--group-id", f"{STEM}-sink", "--max-idle", "3",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"streamscribe sink: error: user edge may not use consumer group {STEM}-sink "
        "(GROUP_AUTHORIZATION_FAILED)"
    ), res.stderr

    # Nothing was written to the audio topic by the refused producer.
    audio = read_topic(b.bootstrap, Topics(PREFIX).audio)
    assert [r for r in audio if r.key == b"sec-refused"] == []


def test_acls_listed_and_secrets_private(secure_broker: SecureBroker) -> None:
    b = secure_broker
    res = run_cli(b, b.client_file("admin"), "broker", "acls")
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()[1:-1]]
    sinks_on_audio = [r for r in rows if r[0] == "User:sinks" and r[3] == f"{PREFIX}audio"]
    assert sinks_on_audio == []  # the sinks principal has no ACL at all on the audio topic
    assert ["User:edge", "TOPIC", "LITERAL", f"{PREFIX}audio", "WRITE"] in rows
    assert ["User:processors", "GROUP", "PREFIXED", f"{STEM}-processors", "READ"] in rows
    for path in [
        *(b.client_file(p) for p in PRINCIPALS),
        b.data_dir / "secure.json",
        b.data_dir / "server.properties",
        b.data_dir / "tls" / "ca.key",
        b.data_dir / "tls" / "broker.pem",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # --help shows no secret (the options name files, never passwords).
    helps = subprocess.run(
        [sys.executable, "-m", "streamscribe.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "--kafka-config" in helps
    for secret in b.passwords():
        assert secret not in helps
