"""``streamscribe worker``: the faust processors, in this process or in N child processes.

``--workers N`` starts N children, each ``streamscribe ... worker ... --instance-index i``;
their command line is built from the parsed arguments (:func:`child_argv`), never copied
from ``sys.argv``. Where the process may use two cores or more, the two stages run in
processes of their own by default (N of each; :func:`split_stages`): one process shares
one interpreter lock between both stages' Python work, which on 2 cores made the
32-session p95 2-6x worse (``bench/README.md``); the stage processes keep standby tables
(``processors/faust_assignor.py``), so a takeover costs what it costs one-process workers.
A child dies with its parent
(``PR_SET_PDEATHSIG``), so a SIGKILL of the worker is a SIGKILL of all of it, as for one
process.

Example::

    streamscribe worker --group-id streamscribe-processors
    streamscribe worker --workers 3 --instance-id pod-a    # children pod-a-0 .. pod-a-2
    streamscribe worker                     # 2+ cores: a segmenter and a recognizer process
    streamscribe worker --one-process       # both stages in this process
    streamscribe worker --group-id retranscribe-2026-11   # a new group reads all history
    streamscribe worker --group-id live-only --from-latest  # a new group skips history
    streamscribe worker --metrics-host 0.0.0.0 --metrics-port 9109        # /metrics
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from streamscribe.cli.common import (
    EXIT_OK,
    SubParsers,
    add_start_options,
    from_earliest,
    require_broker,
)
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings

CLI_MODULE = "streamscribe.cli"
STOP_TIMEOUT_S = 30.0
CHILD_POLL_S = 0.5


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.processors.worker import STAGES, run_worker

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    settings = settings.with_overrides(group_id=args.group_id, instance_id=args.instance_id)
    port = settings.process_metrics_port if args.metrics_port is None else args.metrics_port
    settings = settings.with_overrides(
        metrics_host=args.metrics_host,  # child i of --workers N serves on PORT + i
        process_metrics_port=None if port is None else port + (args.instance_index or 0),
    )
    if args.instance_index is None:
        require_broker(settings)  # one line, in seconds, when nothing listens
    elif not _die_with_parent(args.parent_pid):
        return EXIT_OK  # the parent is gone already: nothing to run for
    if args.split_stages and len(stages) < 2 and args.instance_index is None:
        raise UsageError("--split-stages runs each stage in its own process: give both")
    split = args.split_stages if args.split_stages is not None else settings.split_stages
    if split_stages(split, stages) and args.instance_index is None:
        print(
            f"worker: {' and '.join(stages)} in processes of their own"
            f" ({args.workers} of each; --one-process runs them in one)",
            file=sys.stderr,
            flush=True,
        )
        per_stage = [child_argv(args, stages=stage) for stage in stages]
        return spawn_children([argv for argv in per_stage for _ in range(args.workers)])
    if args.workers > 1 and args.instance_index is None:
        return spawn_workers(args.workers, child_argv(args))
    instance = settings.instance_id
    if instance and args.instance_index is not None:
        instance = f"{instance}-{args.instance_index}"
    run_worker(
        settings,
        stages=stages,
        instance=instance,
        from_earliest=from_earliest(args),
        log_level=args.worker_log_level,
    )
    return EXIT_OK


def split_stages(choice: bool | None, stages: tuple[str, ...]) -> bool:
    """Whether the worker runs each stage in processes of its own: ``choice`` (the flag or
    ``STREAMSCRIBE_SPLIT_STAGES``) when given, else when it runs both stages and may use
    two cores or more (:func:`usable_cores`).

        >>> split_stages(None, ("segmenter",)), split_stages(False, ("a", "b"))
        (False, False)
    """
    if choice is not None:
        return choice and len(stages) > 1
    return len(stages) > 1 and usable_cores() >= 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_processes(choice: bool | None = None, workers: int = 1) -> int:
    """How many worker processes ``streamscribe worker [--workers N]`` runs for both
    stages (each logs faust's ``Ready`` once it holds its partitions)."""
    from streamscribe.processors.worker import STAGES

    return workers * (len(STAGES) if split_stages(choice, STAGES) else 1)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int | None) -> bool:
    """In a child of :func:`spawn_children`: ask Linux to SIGKILL this process when its
    parent dies, so no stage process outlives a killed worker (it would go on holding its
    partitions). False when the parent died before the request took hold."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return parent_pid is None or os.getppid() == parent_pid


def child_argv(args: argparse.Namespace, stages: str | None = None) -> list[str]:
    """The command line of one child of ``--workers N``, from the parsed arguments.

    The global options, then ``worker`` with every option but ``--workers`` and
    ``--split-stages`` (the caller adds ``--instance-index i``; ``stages`` replaces
    ``--stages``)::

        >>> from streamscribe.cli import build_parser
        >>> child_argv(build_parser().parse_args(["worker", "--workers", "2", "--from-latest"]))
        ['--log-level', 'WARNING', 'worker', '--from-latest', '--worker-log-level', 'info']
    """
    argv: list[str] = []
    for flag, value in (
        ("--bootstrap-servers", args.bootstrap_servers),
        ("--kafka-config", args.kafka_config),
        ("--topic-prefix", args.topic_prefix),
    ):
        if value is not None:
            argv += [flag, value]
    argv += ["--log-level", args.log_level, "worker"]
    for flag, value in (
        ("--group-id", args.group_id),
        ("--stages", stages or args.stages),
        ("--instance-id", args.instance_id),
        ("--metrics-host", args.metrics_host),
        ("--metrics-port", None if args.metrics_port is None else str(args.metrics_port)),
    ):
        if value is not None:
            argv += [flag, value]
    for flag in ("from_earliest", "from_latest"):
        if getattr(args, flag, False):
            argv.append("--" + flag.replace("_", "-"))
    return [*argv, "--worker-log-level", args.worker_log_level]


def spawn_workers(n: int, argv: list[str]) -> int:
    """Run ``n`` worker processes of ``argv`` (:func:`spawn_children`)."""
    return spawn_children([argv] * n)


def spawn_children(argvs: list[list[str]]) -> int:
    """Run one worker process per ``argvs`` entry (child ``i`` gets ``--instance-index i``);
    wait for them all.

    SIGTERM or Ctrl-C stops every child (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``),
    and so does a child that dies with a non-zero code; the exit code is the largest of
    the children's.
    """
    pid_args = ["--parent-pid", str(os.getpid())]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", CLI_MODULE, *argv, "--instance-index", str(i), *pid_args]
        )
        for i, argv in enumerate(argvs)
    ]
    code = EXIT_OK
    try:
        with _sigterm_as_interrupt():
            while procs:
                done = [p for p in procs if p.poll() is not None]
                for p in done:
                    procs.remove(p)
                    code = max(code, _exit_code(p.returncode))
                if code != EXIT_OK:  # a child died: stop the others, exit non-zero
                    raise KeyboardInterrupt
                time.sleep(CHILD_POLL_S)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                code = max(code, p.wait(timeout=STOP_TIMEOUT_S))
            except subprocess.TimeoutExpired:
                p.kill()
                code = max(code, p.wait())
    return code


def _exit_code(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``KeyboardInterrupt`` (the children are then stopped)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(sub: SubParsers) -> None:
    """Add ``worker``."""
    p = sub.add_parser("worker", help="run the faust stream processors")
    p.add_argument(
        "--group-id",
        metavar="G",
        help="consumer group = faust app id, which names the tables' changelog topics"
        " (default STREAMSCRIBE_GROUP_ID, else <topic prefix>-processors:"
        " streamscribe-processors for the default prefix)",
    )
    add_start_options(p, "audio")
    p.add_argument("--workers", type=int, default=1, help="worker processes to run")
    p.add_argument("--stages", help="comma list of stages (default segmenter,recognizer)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--split-stages",
        action="store_const",
        const=True,
        default=None,
        help="run each stage in processes of its own (with --workers N: N per stage), one"
        " consumer group, so the Python work of the two stages runs in parallel; the default"
        " where this process may use 2 cores or more (STREAMSCRIBE_SPLIT_STAGES)",
    )
    mode.add_argument(
        "--one-process",
        dest="split_stages",
        action="store_const",
        const=False,
        help="run both stages in one process (the default on one core)",
    )
    p.add_argument(
        "--instance-id",
        help="static group membership id, unique per worker (e.g. the pod name): a worker"
        " restarted with the same id resumes at once instead of after the session timeout;"
        " with --workers N, worker i gets ID-i",
    )
    p.add_argument("--instance-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-log-level", default="info", help="faust log level (default info)")
    p.add_argument(
        "--metrics-host",
        metavar="H",
        help="address of /metrics (default STREAMSCRIBE_METRICS_HOST, 127.0.0.1)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve /metrics on P (default STREAMSCRIBE_PROCESS_METRICS_PORT; off);"
        " with --workers N, worker i on P+i",
    )
    p.set_defaults(handler=cmd_worker)
