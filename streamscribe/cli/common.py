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
