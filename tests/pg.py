"""A throwaway PostgreSQL server for tests and benchmarks (Debian's ``postgresql`` package).

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres``
user (``runuser``) on a temporary directory owned by it; as another user they run as
that user. The server listens on 127.0.0.1 on a free port, with its socket in the same
directory, trusts local connections, and is always stopped (``pg_ctl stop -m fast``) and
its directory removed on exit, also when a test fails.

Missing binaries are a loud failure with the install hint, never a silent skip: the CI
script installs ``postgresql``.

Example (a pytest fixture; import it into a test module)::

    from tests.pg import pg_url  # noqa: F401  (the fixture)

    def test_x(pg_url: str) -> None:
        store = TranscriptStore(pg_url)

Or directly::

    with PostgresServer() as server:
        print(server.url)  # postgresql+psycopg://postgres@127.0.0.1:PORT/streamscribe
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

INSTALL_HINT = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
    "(initdb, pg_ctl). Install them: `apt-get update && apt-get install -y postgresql`."
)
DATABASE = "streamscribe"
START_TIMEOUT_S = 60
PG_ROOT = Path("/usr/lib/postgresql")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server did not start."""


def find_pg_bin() -> Path:
    """The newest ``PG_ROOT/<version>/bin`` that has initdb and pg_ctl."""
    candidates = sorted(
        (p / "bin" for p in PG_ROOT.glob("*") if (p / "bin" / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in candidates:
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    raise PostgresUnavailable(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway server; a context manager that always stops it."""

    def __init__(self, database: str = DATABASE, *, durable: bool = False) -> None:
        self.bin = find_pg_bin()
        self.durable = durable  # False: fsync off, fast tests; True: server defaults
        self.database = database
        self.port = 0
        self.base: Path | None = None
        self._as_root = os.geteuid() == 0
        self._running = False

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def start(self) -> PostgresServer:
        self.base = Path(tempfile.mkdtemp(prefix="streamscribe-pg-"))
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
        atexit.register(self.stop)
        self._run(
            "initdb", "-D", str(self.data_dir), "--no-locale", "-E", "UTF8", "-A", "trust",
            "-U", "postgres",
        )  # fmt: skip
        self.port = free_port()
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.base / "server.log"),
            "-o", opts, "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        self._running = True
        self.create_database(self.database)
        return self

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its SQLAlchemy URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def log_tail(self, chars: int = 2000) -> str:
        if self.base is None or not (self.base / "server.log").exists():
            return ""
        return (self.base / "server.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; safe to call twice."""
        if self._running:
            self._running = False
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL for the whole test session (stopped at the end)."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(f"{exc}\n{server.log_tail()}", pytrace=False)


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> str:
    """The SQLAlchemy URL of the throwaway server's database."""
    return pg_server.url
