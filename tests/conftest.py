"""Test harness: the two tiers and the real Kafka broker of the integration tier.

``kafka_bootstrap`` (session scope) yields a bootstrap address: ``KAFKA_BOOTSTRAP_SERVERS``
if set; else testcontainers' Kafka if a Docker engine answers; else the local broker from
the Maven jars on a free port, stopped at the end even if tests fail. Each test gets unique
topic names from ``topics``. Tests that use the broker must be marked ``integration``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscribe.core.settings import Settings
from streamscribe.schemas.topics import Topics

BROKER_FIXTURES = {"kafka_bootstrap", "topics", "broker_settings"}

# Workers started by the tests decode every live final alone, even when they fall behind:
# most integration tests compare finals with the offline transcription word for word, and a
# final decoded in a batch may differ in a near-tie token. (The batching of a worker that
# is behind has its own tests, which set ``final_behind_ms``.)
os.environ.setdefault("STREAMSCRIBE_FINAL_BEHIND_MS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_broker = BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_broker and item.get_closest_marker("integration") is None:
            raise pytest.UsageError(f"{item.nodeid} uses the broker but is not marked integration")


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from streamscribe.broker import LocalBroker, free_port

    data_dir = Path(tempfile.mkdtemp(prefix="streamscribe-test-kafka-"))
    settings = Settings.from_env().with_overrides(broker_port=free_port(), broker_data_dir=data_dir)
    # controller port must be free too
    settings = settings.with_overrides(broker_controller_port=free_port())
    broker = LocalBroker(settings)
    try:
        yield broker.start()
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def references() -> dict[str, str]:
    import json

    return json.loads((Path(__file__).parent / "data" / "references.json").read_text())


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """The pipeline's topics under a prefix unique to this test, created."""
    from streamscribe.core.admin import create_topics

    t = Topics(f"t{uuid.uuid4().hex[:10]}.")
    create_topics(kafka_bootstrap, t.specs(partitions=4))
    return t


@pytest.fixture
def broker_settings(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Settings:
    """Settings pointing at the test broker, the test's topics and a private state dir."""
    return Settings.from_env().with_overrides(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topics.prefix,
        worker_data_dir=tmp_path / "worker",
        db_url=f"sqlite:///{tmp_path / 'transcripts.db'}",
    )


@pytest.fixture(scope="session")
def assets() -> Path:
    from importlib import resources

    return Path(str(resources.files("moonshine_voice").joinpath("assets")))
