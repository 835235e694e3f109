"""docker-compose.secure.yml: every pipeline service runs as its own principal, the Kafka
container runs the files `streamscribe broker secrets` writes, and those files say what
the base file's listeners say."""

from __future__ import annotations

from pathlib import Path

import yaml

from streamscribe.broker_secure import write_compose_secrets
from streamscribe.cli import build_parser
from streamscribe.core.security import read_properties

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SECURE = yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text())["services"]
PRINCIPAL_OF = {
    "topics": "admin",
    "worker": "processors",
    "sink": "sinks",
    "metrics": "sinks",
    "alerts": "sinks",
    "producer": "edge",
    "gateway": "edge",
    "assistant": "sinks",
}


def test_every_kafka_client_service_has_its_principal() -> None:
    ours = {n for n, s in BASE.items() if s.get("image", "").startswith("streamscribe:")}
    assert ours == set(PRINCIPAL_OF)
    for name, principal in PRINCIPAL_OF.items():
        env = SECURE[name]["environment"]
        assert env["STREAMSCRIBE_KAFKA_CONFIG"] == f"/secrets/clients/{principal}.properties"
        assert "kafka-secrets:/secrets:ro" in SECURE[name]["volumes"], name


def test_secrets_and_topics_commands_are_real() -> None:
    for name in ("secrets", "topics"):
        args = build_parser().parse_args(SECURE[name]["command"][1:])
        assert callable(args.handler), name
    assert build_parser().parse_args(SECURE["topics"]["command"][1:]).acls is True


def test_kafka_runs_what_broker_secrets_writes(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    write_compose_secrets(out, host="kafka", mount=str(out))
    assert SECURE["kafka"]["command"] == ["/bin/bash", "/secrets/kafka-run.sh"]
    run = (out / "kafka-run.sh").read_text()
    assert "kafka-storage.sh format" in run and run.count("--add-scram") == 5
    assert "admin-java.properties" in SECURE["kafka"]["healthcheck"]["test"][1]
    assert (out / "clients" / "admin-java.properties").exists()
    props = dict(
        line.split("=", 1)
        for line in (out / "server.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    base_env = BASE["kafka"]["environment"]
    assert props["listeners"] == base_env["KAFKA_LISTENERS"]
    assert props["advertised.listeners"] == "INTERNAL://kafka:29092,HOST://localhost:9092"
    assert props["listener.security.protocol.map"] == (
        "INTERNAL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SSL"
    )
    assert props["allow.everyone.if.no.acl.found"] == "false"
    for principal in ("admin", "edge", "processors", "sinks"):
        sec = read_properties(out / "clients" / f"{principal}.properties")
        assert sec.protocol == "SASL_SSL" and sec.username == principal
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.rglob("*") if p.is_file())
