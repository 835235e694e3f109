"""Processes started by tests: always stopped, even when the test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group (a crash, no clean-up)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group
        self._log.close()
        return self.popen.returncode

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.alive():
                raise RuntimeError(
                    f"process exited ({self.popen.returncode}):\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.2)
        raise TimeoutError(f"{needle!r} not seen in {timeout_s} s:\n{self.log_text()[-3000:]}")


@contextlib.contextmanager
def running(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[Proc]:
    proc = Proc(args, log_path, env)
    try:
        yield proc
    finally:
        proc.stop()


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def streamscribe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamscribe.cli", *args]
