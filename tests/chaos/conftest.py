"""The chaos suite's fixtures: its own throwaway broker (it is killed -9 mid-run, so never
the shared one) and the seed (``STREAMSCRIBE_CHAOS_SEED``, printed; default fixed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscribe.broker import LocalBroker, _wait_exit, free_port
from streamscribe.core.settings import Settings

DEFAULT_SEED = 13


class OwnBroker:
    """A one-node broker on free ports with its own data dir; :meth:`kill9` is a crash."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings.from_env().with_overrides(
            broker_port=free_port(), broker_controller_port=free_port(), broker_data_dir=data_dir
        )
        self.broker = LocalBroker(settings)
        self.bootstrap = self.broker.start()

    def kill9(self) -> int:
        status = self.broker.status()
        assert status.pid is not None, "the chaos broker is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(status.pid, signal.SIGKILL)
        _wait_exit(status.pid, 30.0, 0.05)
        return status.pid

    def restart(self) -> None:
        assert self.broker.start() == self.bootstrap

    def stop(self) -> None:
        self.broker.stop()


@pytest.fixture(scope="module")
def chaos_seed() -> int:
    return int(os.environ.get("STREAMSCRIBE_CHAOS_SEED", DEFAULT_SEED))


@pytest.fixture(scope="module")
def own_broker() -> Iterator[OwnBroker]:
    data_dir = Path(tempfile.mkdtemp(prefix="streamscribe-chaos-kafka-"))
    broker = None
    try:
        broker = OwnBroker(data_dir)
        yield broker
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
