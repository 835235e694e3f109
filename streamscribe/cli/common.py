"""What every command module of the CLI shares: the handler type and the exit codes.

A command module exposes ``register(subparsers)``; it adds its commands with
``subparsers.add_parser(...)`` and sets ``handler=`` on each to a :data:`Handler`, a
function of the settings and the parsed arguments that returns an exit code.

Exit codes of ``streamscribe`` (the same for every command):

=====  ==========================================================================
0      done
1      the command ran but did not do all of its job (messages not delivered)
2      it could not run as asked: a bad argument or setting, a missing or unreadable
       file, an error of ours or of Kafka — one line on stderr, never a traceback
3      a negative verdict it was asked for (``broker status``: not running;
       ``latency-report --fail-on-violation``: the SLA failed)
130    interrupted (Ctrl-C)
=====  ==========================================================================
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final, TypeAlias

from streamscribe.core.settings import Settings

Handler: TypeAlias = Callable[[Settings, argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK: Final = 0
EXIT_INCOMPLETE: Final = 1
EXIT_USAGE: Final = 2
EXIT_VERDICT: Final = 3
EXIT_INTERRUPTED: Final = 130
PROBE_TIMEOUT_S: Final = 5.0


def add_start_options(p: argparse.ArgumentParser, what: str = "history") -> None:
    """``--from-earliest`` (the default) / ``--from-latest`` for a consumer group's start.

    A new group starts at the earliest offset, as Kafka Streams does, so nothing produced
    while a consumer starts for the first time is skipped; committed offsets always win.
    """
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-earliest",
        action="store_true",
        help="a new group starts at the earliest offset (the default)",
    )
    start.add_argument(
        "--from-latest",
        action="store_true",
        help=f"a new group starts at the latest offset (skips the {what} already there)",
    )


def from_earliest(args: argparse.Namespace) -> bool:
    """Whether a new group starts at the earliest offset (unless ``--from-latest``)."""
    return not getattr(args, "from_latest", False)


def require_broker(settings: Settings) -> None:
    """Fail in one line, within :data:`PROBE_TIMEOUT_S`, when no broker answers."""
    from streamscribe.core.admin import probe_broker

    probe_broker(settings.bootstrap, PROBE_TIMEOUT_S)
