"""docker-compose.yml: every pipeline service runs a real ``streamscribe`` subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamscribe.cli import build_parser
from streamscribe.core.settings import KAFKA_VERSION

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_kafka_is_the_same_version_in_kraft_mode() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("name", [n for n in _services() if n != "kafka"])
def test_service_command_is_a_real_subcommand(name: str) -> None:
    command = _services()[name]["command"]
    assert command[0] == "streamscribe"
    args = build_parser().parse_args(command[1:])  # SystemExit(2) if not a real command
    assert callable(args.handler)
    assert args.command in {"topics", "worker", "sink", "metrics", "alerts", "produce"}


def test_pipeline_services_are_all_there() -> None:
    assert {"kafka", "topics", "worker", "sink", "metrics"} <= set(_services())
