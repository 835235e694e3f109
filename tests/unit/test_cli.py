"""The one CLI convention: every command group registers the same way, and the one error
wrapper turns a user's mistake into one line on stderr and a documented exit code."""

from __future__ import annotations

import argparse
import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamscribe import cli
from streamscribe.cli import offline, worker
from streamscribe.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from streamscribe.core.errors import BrokerError
from streamscribe.core.settings import Settings

COMMANDS = {
    "broker", "topics", "produce", "mic", "tail", "worker", "segment", "transcribe",
    "sink", "sessions", "transcript", "metrics", "latency-report", "alerts", "gateway", "stream",
    "assistant", "forget",
}  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"streamscribe {command}: error: "), err
    return lines[0]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_is_registered_once_with_a_handler() -> None:
    subs = _subcommands(cli.build_parser())
    assert set(subs) == COMMANDS
    for name, p in subs.items():
        assert callable(p.get_default("handler")), name
    assert all(callable(g.register) for g in cli.GROUPS)


def test_bad_setting_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSCRIBE_PARTITIONS", "four")
    assert cli.main(["topics", "list"]) == EXIT_USAGE
    assert "STREAMSCRIBE_PARTITIONS" in _one_error_line(capsys, "topics")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "/nonexistent-xyz.wav"], "/nonexistent-xyz.wav: no such file"),
        (["produce", "/nonexistent-xyz.wav"], "/nonexistent-xyz.wav: no such file"),
        (["alerts", "--phrases-file", "/nonexistent-xyz"], "cannot read phrases file"),
    ],
)
def test_missing_file(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--bootstrap-servers", "127.0.0.1:1", *argv]) == EXIT_USAGE
    assert message in _one_error_line(capsys, argv[0])


def test_unknown_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker", "--stages", "segmenter,nope"]) == EXIT_USAGE
    line = _one_error_line(capsys, "worker")
    assert "unknown stage(s) ['nope']" in line and "segmenter, recognizer" in line


@pytest.mark.parametrize(
    ("argv", "command", "message"),
    [
        (["worker", "--workers", "two"], "worker", "invalid int value: 'two'"),
        (["produce"], "produce", "the following arguments are required: FILE"),
        (["transcript", "s", "--format", "pdf"], "transcript", "invalid choice: 'pdf'"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(
    argv: list[str], command: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == EXIT_USAGE
    assert message in _one_error_line(capsys, command)


@pytest.mark.parametrize(
    "error",
    [
        BrokerError("port 9092 is in use\nby another process"),
        KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")),
        OSError(28, "No space left on device"),
        ValueError("bad value"),
    ],
)
def test_every_user_error_is_one_line_and_exit_2(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(_settings: Settings, _args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(offline, "cmd_segment", fail)
    assert cli.main(["segment", "x.wav"]) == EXIT_USAGE
    line = _one_error_line(capsys, "segment")
    assert line == f"streamscribe segment: error: {' '.join(str(error).split())}"


def test_interrupt_is_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_settings: Settings, _args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(offline, "cmd_segment", interrupted)
    assert cli.main(["segment", "x.wav"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "streamscribe segment: interrupted\n"


def test_python_m_streamscribe_cli_runs_the_same_wrapper(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamscribe.cli", "worker", "--stages", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("streamscribe worker: error: unknown stage(s) ['nope']")
    assert proc.stderr.count("\n") == 1


def test_worker_children_get_the_parsed_options_not_sys_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["something", "else", "--workers", "9"])
    parser = cli.build_parser()
    argv = [
        "--bootstrap-servers", "h:1", "--topic-prefix", "p.", "--log-level", "INFO",
        "worker", "--group-id", "g", "--from-earliest", "--workers", "3",
        "--stages", "segmenter", "--instance-id", "pod", "--worker-log-level", "debug",
    ]  # fmt: skip
    parent = parser.parse_args(argv)
    child = worker.child_argv(parent)
    assert "--workers" not in child and "--instance-index" not in child
    again = parser.parse_args([*child, "--instance-index", "1"])
    expected = {**vars(parent), "workers": 1, "instance_index": 1}
    assert vars(again) == expected


def test_worker_children_are_started_from_the_cli_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[list[str]] = []

    class FakeChild:
        def __init__(self, cmd: list[str]) -> None:
            self.code = self.returncode = len(started)  # child i exits with i
            started.append(cmd)

        def wait(self, timeout: float | None = None) -> int:
            return self.code

        def poll(self) -> int:
            return self.code

        def terminate(self) -> None:
            pass

    from streamscribe.processors import worker as _imported_before_popen_is_faked  # noqa: F401

    monkeypatch.setattr(worker, "require_broker", lambda settings: None)
    monkeypatch.setattr(worker.subprocess, "Popen", FakeChild)
    # child 1 exits 1: the others are stopped and the parent exits 1
    assert cli.main(["worker", "--workers", "2", "--stages", "segmenter"]) == 1
    assert [c[:3] for c in started] == [[sys.executable, "-m", "streamscribe.cli"]] * 2
    parent = str(os.getpid())  # a child dies with its parent (PR_SET_PDEATHSIG)
    assert [c[-4:] for c in started] == [
        ["--instance-index", str(i), "--parent-pid", parent] for i in (0, 1)
    ]
    assert started[0][3:-4] == [
        "--log-level", "WARNING", "worker", "--stages", "segmenter", "--worker-log-level", "info"
    ]  # fmt: skip


def test_split_stages_starts_a_process_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class FakeChild:
        def __init__(self, cmd: list[str]) -> None:
            started.append(cmd)
            self.returncode = 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

        def terminate(self) -> None:
            pass

    from streamscribe.processors import worker as _imported_before_popen_is_faked  # noqa: F401

    monkeypatch.setattr(worker, "require_broker", lambda settings: None)
    monkeypatch.setattr(worker.subprocess, "Popen", FakeChild)
    assert cli.main(["worker", "--split-stages", "--workers", "2", "--group-id", "g"]) == 0
    stages = [c[c.index("--stages") + 1] for c in started]
    assert stages == ["segmenter", "segmenter", "recognizer", "recognizer"]
    assert [c[c.index("--instance-index") + 1] for c in started] == ["0", "1", "2", "3"]
    assert all("--split-stages" not in c and "--workers" not in c for c in started)
    assert all(c[c.index("--group-id") + 1] == "g" for c in started)  # one group
    # a usage error (exit 2, one line): one stage cannot be split
    assert cli.main(["worker", "--split-stages", "--stages", "recognizer"]) == 2


@pytest.mark.parametrize(
    ("cores", "argv", "env", "processes"),
    [
        (2, [], {}, 2),  # the default on 2 cores: a process per stage
        (1, [], {}, 0),  # on one core: both stages here
        (2, ["--one-process"], {}, 0),
        (2, [], {"STREAMSCRIBE_SPLIT_STAGES": "false"}, 0),
        (1, ["--split-stages"], {}, 2),
        (1, [], {"STREAMSCRIBE_SPLIT_STAGES": "true"}, 2),
        (2, ["--stages", "segmenter"], {}, 0),  # one stage: nothing to split
    ],
)
def test_the_worker_splits_its_stages_where_it_has_two_cores(
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    argv: list[str],
    env: dict[str, str],
    processes: int,
) -> None:
    started: list[list[str]] = []
    ran: list[tuple[str, ...]] = []

    class FakeChild:
        def __init__(self, cmd: list[str]) -> None:
            started.append(cmd)
            self.returncode = 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

        def terminate(self) -> None:
            pass

    from streamscribe.processors import worker as processors_worker

    monkeypatch.delenv("STREAMSCRIBE_SPLIT_STAGES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(worker, "require_broker", lambda settings: None)
    monkeypatch.setattr(worker, "usable_cores", lambda: cores)
    monkeypatch.setattr(worker.subprocess, "Popen", FakeChild)
    monkeypatch.setattr(
        processors_worker, "run_worker", lambda settings, stages, **kw: ran.append(stages)
    )
    assert cli.main(["worker", *argv]) == 0
    assert len(started) == processes
    if processes:
        assert [c[c.index("--stages") + 1] for c in started] == ["segmenter", "recognizer"]
        assert ran == []
    else:
        assert len(ran) == 1
    expected = processes or 1
    choice = {"--one-process": False, "--split-stages": True}.get(argv[0] if argv else "")
    if choice is None and env:
        choice = env["STREAMSCRIBE_SPLIT_STAGES"] == "true"
    if argv[:1] != ["--stages"]:
        assert worker.worker_processes(choice) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["produce", "x.wav", "--session-id", ""], "--session-id: must not be empty"),
        (["produce", "x.wav", "--session-id", "a\x1bb"], "control characters are not allowed"),
        (["produce", "x.wav", "--sessions", "0"], "--sessions 0: must be at least 1"),
        (["produce", "."], "is a directory"),
    ],
)
def test_produce_refuses_what_it_would_silently_change(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13 item 13: an empty or unprintable session id, zero sessions and a directory
    are refused in one line before any broker is contacted (127.0.0.1:1 never answers)."""
    assert cli.main(["--bootstrap-servers", "127.0.0.1:1", *argv]) == EXIT_USAGE
    assert message in _one_error_line(capsys, "produce")


def test_session_ids_are_shown_escaped_and_elided() -> None:
    from streamscribe.cli import consumers

    failures, tried = doctest.testmod(consumers)
    assert tried >= 1 and failures == 0
    rtl = consumers.shown_id("a\u202eb\n" + "x" * 10_000)
    assert "\u202e" not in rtl and "\n" not in rtl and len(rtl) == consumers.SHOWN_ID_CHARS


def test_produce_live_flag_defaults_to_the_pace() -> None:
    """``--live`` / ``--no-live`` override; without either the job decides from the pace
    (``ProduceJob.is_live``: not live at ``asap``)."""
    parser = cli.build_parser()
    assert parser.parse_args(["produce", "a.wav"]).live is None
    assert parser.parse_args(["produce", "a.wav", "--live"]).live is True
    assert parser.parse_args(["produce", "a.wav", "--pace", "realtime", "--no-live"]).live is False
