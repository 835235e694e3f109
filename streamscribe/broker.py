"""The local one-node Apache Kafka broker (KRaft), run from the official Maven Central jars.

No Docker needed: ``streamscribe broker start`` fetches ``org.apache.kafka:kafka_2.13`` with
Maven (``streamscribe/pom.xml``) into an ignored cache folder once, writes a one-node
broker+controller config, formats the storage on first start, starts the JVM in the
background (pid file + log file in the data dir) and waits until the broker answers a
metadata request *and* its group and transaction coordinators are loaded.

Example::

    from streamscribe.broker import LocalBroker
    from streamscribe.core.settings import Settings

    broker = LocalBroker(Settings.from_env().with_overrides(broker_port=19092))
    broker.start()            # returns the bootstrap address, "127.0.0.1:19092"
    broker.stop()             # clean shutdown, then SIGKILL if it must; no process left
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streamscribe.broker_secure import (
    BROKER_USER,
    SecureLayout,
    acl_specs,
    apply_acls,
    ensure_passwords,
    ensure_tls,
    listener_properties,
    scram_arguments,
    write_client_files,
    write_private,
)
from streamscribe.core.errors import BrokerError
from streamscribe.core.retry import poll_until
from streamscribe.core.security import read_properties, register
from streamscribe.core.settings import Settings

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
STOP_POLL_S = 0.2
KILL_POLL_S = 0.05
READY_POLL_S = 0.3
METADATA_TIMEOUT_S = 2.0
COORDINATOR_TIMEOUT_S = 5.0
TRANSACTIONS_TIMEOUT_S = 10.0
READINESS_PROBE_ID = "streamscribe-readiness-probe"
JVM_HEAP = ("-Xms256m", "-Xmx768m")
DOCKER_HINT = "or use Docker instead: `docker compose up` (see README)"

LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    kafka_version: str
    data_dir: Path

    def describe(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return (
            f"Apache Kafka {self.kafka_version} (KRaft, one node) at {self.bootstrap}: {state}; "
            f"data in {self.data_dir}"
        )


class LocalBroker:
    """Fetch, configure, start, probe and stop a one-node KRaft broker."""

    def __init__(self, settings: Settings, *, secure: bool = False) -> None:
        self.settings = settings
        self.port = settings.broker_port
        self.controller_port = settings.controller_port
        self.data_dir = Path(settings.broker_data_dir).resolve()
        self.libs_dir = Path(settings.broker_cache_dir).resolve() / settings.kafka_version / "libs"
        self.version = settings.kafka_version
        self.layout = SecureLayout(self.data_dir)
        # A data dir made with --secure stays secure (its users exist from format time).
        self.secure = secure or self.layout.is_secure()

    # ----------------------------------------------------------------- paths
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    # ------------------------------------------------------------------ jars
    def ensure_jars(self) -> Path:
        """Fetch the broker jars with Maven once; reuse the cache afterwards."""
        marker = self.libs_dir / f"kafka_2.13-{self.version}.jar"
        if marker.exists():
            return self.libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) is not installed: it fetches the Kafka jars from Maven Central. "
                f"Install it (apt-get install maven), {DOCKER_HINT}"
            )
        self._require_java()
        pom = resources.files("streamscribe").joinpath("pom.xml")
        staging = self.libs_dir.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        with resources.as_file(pom) as pom_path:
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={self.version}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not (staging / marker.name).exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise BrokerError("fetching the Kafka jars with Maven failed: " + " | ".join(tail))
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        return self.libs_dir

    @staticmethod
    def _require_java() -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "Java is not installed: the local Kafka broker needs a JRE 17+ "
                f"(apt-get install openjdk-17-jre-headless), {DOCKER_HINT}"
            )
        return java

    def _classpath(self) -> str:
        return str(self.libs_dir / "*")

    # ---------------------------------------------------------------- config
    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": str(self.settings.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A SIGKILLed worker's partitions move after the worker's session timeout
            # (session_timeout_s, 2 s); the stock minimum (6 s) would not allow it.
            "group.min.session.timeout.ms": "1000",
            "auto.create.topics.enable": "true",
            "message.max.bytes": "2097152",
            "log.retention.hours": "168",
        }
        if self.secure:
            password = ensure_passwords(self.layout)[BROKER_USER]
            props.update(
                listener_properties(self.layout, self.port, self.controller_port, password)
            )
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        # 0600: a secured broker's config holds its password
        write_private(self.config_file, "# written by streamscribe broker start\n" + text)
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").exists()

    def format_storage(self) -> None:
        java = self._require_java()
        cluster_id = new_cluster_id()
        cmd = [
            java,
            "-cp",
            self._classpath(),
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_file),
            "--ignore-formatted",
        ]
        passwords = ensure_passwords(self.layout) if self.secure else {}
        cmd += scram_arguments(passwords)  # SCRAM users exist from the first start on
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            reason = proc.stderr.strip()[-400:]
            for secret in passwords.values():
                reason = reason.replace(secret, "***")
            raise BrokerError(f"formatting Kafka storage failed: {reason}")

    # --------------------------------------------------------------- process
    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) and _is_kafka(pid) else None

    def status(self) -> BrokerStatus:
        pid = self._read_pid()
        return BrokerStatus(pid is not None, pid, self.bootstrap, self.version, self.data_dir)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        """Start (or find running) and wait until ready; returns the bootstrap address."""
        if self._read_pid() is not None:
            if self.secure:
                register(self.bootstrap, read_properties(self.layout.client_file("admin")))
            wait_until_ready(self.bootstrap, timeout_s)
            if self.secure:
                self.secure_setup()
            return self.bootstrap
        for port in (self.port, self.controller_port):
            if _port_open(port):
                raise BrokerError(
                    f"port {port} is already in use by another process; choose another with --port"
                )
        if self.secure and self._formatted() and not self.layout.is_secure():
            raise BrokerError(
                f"{self.data_dir} holds a PLAINTEXT broker's data: --secure needs a data dir "
                "of its own (its SCRAM users are made when the storage is formatted); "
                "choose another --data-dir"
            )
        java = self._require_java()
        self.ensure_jars()
        if self.secure:
            ensure_tls(self.layout)
            write_client_files(self.layout, ensure_passwords(self.layout))
            register(self.bootstrap, read_properties(self.layout.client_file("admin")))
        self.write_config()
        if not self._formatted():
            self.format_storage()
        log_fh = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        cmd = [
            java,
            *JVM_HEAP,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.config_file),
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.data_dir,
        )
        log_fh.close()
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_until_ready(self.bootstrap, timeout_s, proc=proc, log_file=self.log_file)
            if self.secure:
                self.secure_setup()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def secure_setup(self) -> None:
        """As admin: the principals' ACLs and the pipeline's topics (others may not create)."""
        from streamscribe.core.admin import create_topics
        from streamscribe.schemas.topics import Topics

        apply_acls(self.bootstrap, acl_specs(self.settings))
        create_topics(
            self.bootstrap, Topics.from_settings(self.settings).specs(self.settings.partitions)
        )

    def client_file(self, principal: str) -> Path:
        """``<data-dir>/clients/PRINCIPAL.properties`` of a secured broker."""
        return self.layout.client_file(principal)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop cleanly (SIGTERM), then SIGKILL after ``timeout_s``. True if one was running."""
        pid = self._read_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout_s, STOP_POLL_S):
            log.warning("broker pid %s did not stop in %.0f s; killing it", pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_exit(pid, None, KILL_POLL_S)
        self.pid_file.unlink(missing_ok=True)
        return True


def wait_until_ready(
    bootstrap: str,
    timeout_s: float = STARTUP_TIMEOUT_S,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> None:
    """Wait until metadata answers and the group and transaction coordinators are loaded.

    Each step is polled with :func:`~streamscribe.core.retry.poll_until` (a Kafka error is
    "not yet"); together they take at most ``timeout_s``. :class:`BrokerError` if the
    broker is not ready by then, or at once if the JVM ``proc`` exits.
    """
    from confluent_kafka import KafkaException, Producer

    from streamscribe.core.admin import admin_client
    from streamscribe.core.security import with_security

    deadline = time.monotonic() + timeout_s
    admin = admin_client(bootstrap)

    def check_alive() -> None:
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log_file and log_file.exists():
                tail = " | ".join(log_file.read_text(errors="replace").splitlines()[-5:])
            raise BrokerError(f"the Kafka JVM exited with code {proc.returncode}: {tail}")

    def metadata() -> bool:
        check_alive()
        return bool(admin.list_topics(timeout=METADATA_TIMEOUT_S).brokers)

    def group_coordinator() -> bool:  # DescribeGroups needs FindCoordinator to succeed
        check_alive()
        futures = admin.describe_consumer_groups([READINESS_PROBE_ID])
        futures[READINESS_PROBE_ID].result(timeout=COORDINATOR_TIMEOUT_S)
        return True

    producer = None

    def transaction_coordinator() -> bool:  # also creates __transaction_state
        nonlocal producer
        check_alive()
        if producer is None:
            producer = Producer(
                with_security(
                    bootstrap,
                    {
                        "bootstrap.servers": bootstrap,
                        "transactional.id": READINESS_PROBE_ID,
                        "log_level": 0,
                    },
                )
            )
        producer.init_transactions(TRANSACTIONS_TIMEOUT_S)
        return True

    for step in (metadata, group_coordinator, transaction_coordinator):
        ready = poll_until(
            step,
            timeout_s=deadline - time.monotonic(),
            interval_s=READY_POLL_S,
            retry_on=(KafkaException,),
        )
        if not ready:
            raise BrokerError(f"Kafka at {bootstrap} not ready after {timeout_s:.0f} s")


def new_cluster_id() -> str:
    """A KRaft cluster id (base64 of a UUID) that does not start with ``-``.

    One id in 32 would, and the storage tool's argument parser would then read it as an
    option (``--cluster-id: expected one argument``).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(FileNotFoundError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":
            _reap(pid)
            return False
    return True


def _wait_exit(pid: int, timeout_s: float | None, interval_s: float) -> bool:
    """Wait until ``pid`` has exited (reaping it if it is our child); False on timeout."""

    def exited() -> bool:
        _reap(pid)
        return not _pid_alive(pid)

    return poll_until(exited, timeout_s=timeout_s, interval_s=interval_s)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_kafka(pid: int) -> bool:
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on now (for tests and throwaway brokers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
