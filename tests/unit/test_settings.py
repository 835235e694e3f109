"""The one settings object: parsing from the environment, overrides, state folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings

CHECKOUT = Path(__file__).resolve().parents[2]


def test_values_are_parsed_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "STREAMSCRIBE_PARTITIONS": "8",
            "STREAMSCRIBE_VAD_THRESHOLD": "0.6",
            "STREAMSCRIBE_WORKER_DATA_DIR": "/tmp/w",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        }
    )
    assert (s.partitions, s.vad_threshold, s.worker_data_dir, s.bootstrap) == (
        8,
        0.6,
        Path("/tmp/w"),
        "kafka:9092",
    )


def test_the_streamscribe_variable_wins_over_the_standard_one() -> None:
    env = {"STREAMSCRIBE_BOOTSTRAP_SERVERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"}
    assert Settings.from_env(env).bootstrap == "a:1"


def test_a_bad_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(UsageError) as err:
        Settings.from_env({"STREAMSCRIBE_PARTITIONS": "four"})
    assert str(err.value).startswith("STREAMSCRIBE_PARTITIONS: ")
    assert "\n" not in str(err.value)


def test_overrides_are_checked_and_none_is_ignored() -> None:
    s = Settings().with_overrides(broker_port=19000, topic_prefix=None)
    assert (s.bootstrap, s.topic_prefix) == ("127.0.0.1:19000", "streamscribe.")
    with pytest.raises(UsageError, match="STREAMSCRIBE_BROKER_PORT"):
        Settings().with_overrides(broker_port="x")


def test_settings_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Settings().partitions = 2  # type: ignore[misc]


def test_state_of_a_checkout_stays_in_its_ignored_cache_folder() -> None:
    s = Settings()
    assert s.broker_data_dir == CHECKOUT / ".cache" / "kafka-data"
    assert s.broker_cache_dir == CHECKOUT / ".cache" / "kafka"
    assert s.worker_data_dir == CHECKOUT / ".cache" / "worker"
