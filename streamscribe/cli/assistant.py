"""``streamscribe assistant``: the voice-command consumer (docs/assistant.md).

::

    assistant [--wake PHRASE] [--intents FILE] [--timeout S] [--group-id G]
              [--include-history] [--from-earliest] [--max-idle S]

``--wake`` is the wake phrase, optionally with other ways the model hears it after ``|``
(default ``STREAMSCRIBE_ASSISTANT_WAKE``); ``--intents`` a YAML file of intents and their
example phrases (default ``STREAMSCRIBE_ASSISTANT_INTENTS``, else the file shipped in the
package). Each command goes to ``<prefix>commands`` as a ``CommandEvent`` JSON.

Example::

    streamscribe assistant --wake "hey scribe" --intents my_intents.yaml

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["--wake", "ok computer", "--timeout", "3"]).timeout
    3.0
"""

from __future__ import annotations

import argparse

from streamscribe.cli.common import EXIT_OK, SubParsers, add_start_options, from_earliest
from streamscribe.cli.consumers import group_id_arg
from streamscribe.core.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.assistant import GROUP_ROLE

    p.add_argument(
        "--wake",
        metavar="PHRASE",
        help='wake phrase, "|" before other hearings of it (default STREAMSCRIBE_ASSISTANT_WAKE)',
    )
    p.add_argument(
        "--intents",
        metavar="FILE",
        help="YAML: intent -> example phrases with {slot}s (default: the one shipped)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds of speech after the wake phrase to wait for the command's end "
        "(default STREAMSCRIBE_ASSISTANT_TIMEOUT_S)",
    )
    group_id_arg(p, GROUP_ROLE)
    p.add_argument(
        "--include-history",
        action="store_true",
        help="also act on transcripts re-transcribed by another processor group (default:"
        " live traffic only)",
    )
    add_start_options(p, "transcripts")
    p.add_argument(
        "--max-idle", type=float, metavar="S", help="stop after S seconds without a message"
    )


def cmd_assistant(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.assistant import run_assistant

    stats = run_assistant(
        settings,
        wake=args.wake,
        intents_file=args.intents,
        timeout_s=args.timeout,
        group_id=args.group_id,
        from_earliest=from_earliest(args),
        max_idle_s=args.max_idle,
        include_history=args.include_history,
    )
    print(f"{stats.commands} commands from {stats.transcripts} transcripts", flush=True)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``assistant`` (``handler`` set)."""
    p = sub.add_parser("assistant", help="voice commands (wake phrase + intents) from transcripts")
    add_arguments(p)
    p.set_defaults(handler=cmd_assistant)
