"""docker-compose.yml: every pipeline service runs a real ``streamscribe`` subcommand of one
image built once; Kafka keeps its data and listens inside and on the host; every /metrics
is reachable; Prometheus and Grafana get the files under deploy/; and the compose CLI
accepts the file (when one is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamscribe.cli import build_parser
from streamscribe.core.settings import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _ours() -> list[str]:
    return [n for n, s in _services().items() if s["image"].startswith("streamscribe:")]


def _defaults(arg: str) -> str:
    """``${VAR:-default}`` as compose interpolates it with ``VAR`` unset."""
    return _VARIABLE.sub(lambda m: m.group(2), arg)


def test_kafka_is_the_same_version_in_kraft_mode() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("name", _ours())
def test_service_command_is_a_real_subcommand(name: str) -> None:
    command = [_defaults(a) for a in _services()[name]["command"]]
    assert command[0] == "streamscribe"
    args = build_parser().parse_args(command[1:])  # SystemExit(2) if not a real command
    assert callable(args.handler)
    assert args.command in {
        "topics", "worker", "sink", "metrics", "alerts", "produce", "gateway", "assistant",
    }  # fmt: skip


def test_pipeline_services_are_all_there() -> None:
    expected = {"kafka", "topics", "worker", "sink", "metrics", "alerts", "producer"}
    assert expected | {"prometheus", "grafana"} <= set(_services())


def test_one_image_built_once() -> None:
    services = _services()
    images = {services[n]["image"] for n in _ours()}
    built = [n for n, s in services.items() if "build" in s]
    assert images == {"streamscribe:${STREAMSCRIBE_TAG:-latest}"}
    assert built == ["topics"]
    assert all(services[n]["pull_policy"] == "never" for n in _ours() if n != "topics")


def test_kafka_keeps_its_data_and_listens_inside_and_on_the_host() -> None:
    kafka = _services()["kafka"]
    env = kafka["environment"]
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    advertised = dict(a.split("://") for a in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised == {
        "INTERNAL": "kafka:29092",
        "HOST": "${KAFKA_HOST_ADVERTISED:-localhost}:9092",
    }
    assert kafka["ports"] == ["9092:9092"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    ours = _services()
    assert {ours[n]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] for n in _ours()} == {"kafka:29092"}


def test_long_running_services_serve_metrics_on_all_interfaces() -> None:
    services = _services()
    for name in ("worker", "sink", "metrics", "alerts"):
        args = build_parser().parse_args([_defaults(a) for a in services[name]["command"][1:]])
        assert args.metrics_host == "0.0.0.0", name
        assert args.metrics_port is not None, name


def test_replay_file_comes_from_a_variable() -> None:
    command = _services()["producer"]["command"]
    assert command[2] == "/recordings/${REPLAY_FILE:-call.wav}"


def test_prometheus_and_grafana_mount_files_that_exist() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no `docker compose` / `docker-compose` installed (apt-get install docker-compose)"
        )
    secure = ["-f", str(ROOT / "docker-compose.secure.yml")]
    for extra in ([], ["--profile", "replay"], secure, [*secure, "--profile", "replay"]):
        done = subprocess.run(
            [*cli, "-f", str(COMPOSE), *extra, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
