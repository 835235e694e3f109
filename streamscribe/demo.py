"""``make demo``: the whole pipeline on bundled recordings, on the local broker.

1. starts the local Apache Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one);
2. creates this run's topics and starts a worker (segmenter + ASR) and a sink (SQLite);
3. replays ``two_cities.wav`` at real-time pace and prints partials (updated in place)
   and finals live, with the end-of-speech -> final latency of each line;
4. replays a stereo agent/customer call (beckett.wav, then two_cities.wav) and prints the
   stored conversation view and the per-stage latency report;
5. stops everything it started.

Example::

    python -m streamscribe.demo            # what `make demo` runs
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from streamscribe.core.retry import poll_until
from streamscribe.core.settings import Settings

CALL_PACE = "x2"
LOG_POLL_S = 0.3
FINALS_POLL_S = 0.5


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _assets() -> Path:
    return Path(str(resources.files("moonshine_voice").joinpath("assets")))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamscribe.cli", *args]


@contextlib.contextmanager
def _background(
    args: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_log(
    log: Path, needle: str, proc: subprocess.Popen[bytes], timeout_s: float, count: int = 1
) -> None:
    """Until ``needle`` appears ``count`` times in ``log`` (a worker of a process per stage
    logs faust's Ready once per process)."""

    def seen() -> bool:
        if log.exists() and log.read_text(errors="replace").count(needle) >= count:
            return True
        if proc.poll() is not None:
            raise SystemExit(f"demo: a process exited early; see {log}")
        return False

    if not poll_until(seen, timeout_s=timeout_s, interval_s=LOG_POLL_S):
        raise SystemExit(f"demo: {needle!r} not seen after {timeout_s:.0f} s; see {log}")


def _stereo_call(path: Path) -> None:
    import librosa
    import soundfile as sf

    a = _assets()
    beck, _ = sf.read(str(a / "beckett.wav"), dtype="float32")
    tc, sr = sf.read(str(a / "two_cities.wav"), dtype="float32")
    tc16 = librosa.resample(tc, orig_sr=sr, target_sr=16000)
    n = len(beck) + len(tc16) + 8000
    call = np.zeros((n, 2), dtype=np.float32)
    call[: len(beck), 0] = beck
    call[len(beck) + 8000 :, 1] = tc16
    sf.write(str(path), call, 16000, subtype="PCM_16")


class LiveView:
    """Follows the transcripts topic; partials rewrite the current line, finals stay."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.finals: dict[str, int] = {}
        self.latencies_ms: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        from streamscribe.core.errors import ContractError
        from streamscribe.core.kafka import reader_config
        from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript

        c = Consumer(reader_config(self.bootstrap, client="streamscribe-demo-view"))
        c.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                msg = c.poll(0.2)
                if msg is None or msg.error():
                    continue
                try:
                    t = decode_transcript(msg.value())
                except ContractError:
                    continue
                who = f"[{t.start_ms / 1000:6.1f}s] {t.role}"
                if isinstance(t, FinalTranscript):
                    ts = t.timestamps
                    lat = (ts.get("published_at_us", 0) - ts.get("decided_at_us", 0)) / 1000
                    self.latencies_ms.append(lat)
                    self.finals[t.session_id] = self.finals.get(t.session_id, 0) + 1
                    print(
                        f"\r\033[K{who}: {t.text}   \033[2m(final {lat:.0f} ms after "
                        "end of speech)\033[0m",
                        flush=True,
                    )
                else:
                    stable, rest = t.stable_text, t.text[len(t.stable_text) :]
                    print(
                        f"\r\033[K{who}: \033[1m{stable}\033[0m\033[2m{rest}\033[0m",
                        end="",
                        flush=True,
                    )
        finally:
            c.close()


def main() -> int:
    settings = Settings.from_env()
    run = uuid.uuid4().hex[:6]
    prefix = f"demo-{run}."
    root = Path(settings.worker_data_dir).parent / "demo"
    root.mkdir(parents=True, exist_ok=True)
    db = root / f"transcripts-{run}.db"
    broker = None
    if not settings.bootstrap_servers:
        from streamscribe.broker import LocalBroker

        broker = LocalBroker(settings)
        if broker.status().running:
            broker = None  # someone else's: use it, leave it running
        else:
            _say("starting the local Apache Kafka broker (KRaft, jars from Maven Central)")
            t0 = time.monotonic()
            started = broker.start()
            print(f"Kafka {broker.version} ready at {started} in {time.monotonic() - t0:.1f} s")
    bootstrap = settings.bootstrap
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMSCRIBE_TOPIC_PREFIX": prefix,
        "STREAMSCRIBE_WORKER_DATA_DIR": str(root / f"worker-{run}"),
    }
    try:
        from streamscribe.cli.worker import worker_processes
        from streamscribe.core.admin import create_topics
        from streamscribe.schemas.topics import Topics

        topics = Topics(prefix)
        create_topics(bootstrap, topics.specs(settings.partitions))
        _say(f"topics {prefix}*: created; starting the worker (segmenter + ASR) and the sink")
        wlog, slog = root / f"worker-{run}.log", root / f"sink-{run}.log"
        # The run's prefix scopes its groups (demo-<run>-processors, demo-<run>-sink), so
        # the sink takes the worker's finals as live traffic.
        worker_cmd = _cli("worker", "--from-earliest")
        sink_cmd = _cli("sink", "--db", f"sqlite:///{db}", "--from-earliest")
        with _background(worker_cmd, wlog, env) as worker, _background(sink_cmd, slog, env):
            _wait_log(wlog, "ASR model loaded", worker, 180)
            # every stage process holds its partitions before the replay starts
            ready = worker_processes(settings.split_stages)
            _wait_log(wlog, "[^Worker]: Ready", worker, 180, count=ready)
            view = LiveView(bootstrap, topics.transcripts)
            view.thread.start()
            _say("replaying two_cities.wav (44 s) at real-time pace: partials, then finals")
            subprocess.run(
                _cli(
                    "produce",
                    str(_assets() / "two_cities.wav"),
                    "--session-id",
                    f"two-cities-{run}",
                    "--pace",
                    "realtime",
                ),
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_finals(view, f"two-cities-{run}", 12, 60)
            call = root / "call.wav"
            _stereo_call(call)
            _say(f"replaying a stereo agent/customer call ({CALL_PACE} real time)")
            subprocess.run(
                _cli(
                    "produce",
                    str(call),
                    "--session-id",
                    f"call-{run}",
                    "--pace",
                    CALL_PACE,
                    "--roles",
                    "agent,customer",
                ),
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_finals(view, f"call-{run}", 18, 90)
            time.sleep(3.0)  # the sink commits its last batch
            view.stop.set()
        if view.latencies_ms:
            lat = sorted(view.latencies_ms)
            print(
                f"\nend of speech -> final: median {lat[len(lat) // 2]:.0f} ms, "
                f"max {lat[-1]:.0f} ms over {len(lat)} lines"
            )
        _say(f"the stored conversation (sqlite:///{db})")
        subprocess.run(
            _cli("transcript", f"call-{run}", "--db", f"sqlite:///{db}"), env=env, check=False
        )
        _say("per-stage latency report")
        subprocess.run(_cli("latency-report", "--db", f"sqlite:///{db}"), env=env, check=False)
        print(f"\nlogs: {wlog}, {slog}")
        print(
            f"read the topics: streamscribe tail {prefix}transcripts --from-beginning "
            "--idle-timeout 2"
        )
    finally:
        if broker is not None:
            _say("stopping the local broker")
            broker.stop()
    return 0


def _wait_finals(view: LiveView, session: str, expected: int, timeout_s: float) -> None:
    """Wait for ``expected`` finals of ``session`` (the demo goes on with fewer after that)."""
    poll_until(
        lambda: view.finals.get(session, 0) >= expected,
        timeout_s=timeout_s,
        interval_s=FINALS_POLL_S,
    )


if __name__ == "__main__":
    sys.exit(main())
