"""``streamscribe assistant``: the voice-command consumer (docs/assistant.md).

::

    assistant [--wake PHRASE] [--intents FILE] [--timeout S] [--group-id G] [--live-group G]
              [--include-history] [--speak [--speak-dir DIR]] [--from-earliest]
              [--max-idle S] [--metrics-host H] [--metrics-port P]

``--wake`` is the wake phrase, optionally with other ways the model hears it after ``|``
(default ``STREAMSCRIBE_ASSISTANT_WAKE``); ``--intents`` a YAML file of intents and their
example phrases (default ``STREAMSCRIBE_ASSISTANT_INTENTS``, else the file shipped in the
package). Each command goes to ``<prefix>commands`` as a ``CommandEvent`` JSON; with
``--speak`` it is answered through espeak-ng (a WAV in ``--speak-dir``, the same audio in
the event's ``reply_audio_b64``, which the gateway sends to its client as ``reply``).

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
from pathlib import Path

from streamscribe.cli.common import EXIT_OK, SubParsers, add_start_options, from_earliest
from streamscribe.cli.consumers import (
    PROCESS_PORT_HELP,
    group_id_arg,
    live_group_arg,
    metrics_args,
    with_live_group,
    with_metrics,
)
from streamscribe.core.errors import UsageError
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
    live_group_arg(p)
    p.add_argument(
        "--include-history",
        action="store_true",
        help="also act on transcripts re-transcribed by another processor group (default:"
        " live traffic only)",
    )
    p.add_argument(
        "--speak",
        action="store_true",
        help="answer each command through espeak-ng: a WAV in --speak-dir, and the same"
        " audio in the command for the gateway to play back",
    )
    p.add_argument(
        "--speak-dir",
        metavar="DIR",
        help="where --speak writes <session>_<channel>_<utterance>.wav"
        " (default .cache/assistant-replies)",
    )
    add_start_options(p, "transcripts")
    p.add_argument(
        "--max-idle", type=float, metavar="S", help="stop after S seconds without a message"
    )
    metrics_args(p, PROCESS_PORT_HELP)


def speak_dir(settings: Settings, args: argparse.Namespace) -> Path | None:
    """``--speak``'s directory (``--speak-dir``, else ``.cache/assistant-replies``); None
    without ``--speak`` (a ``--speak-dir`` alone is a usage error)."""
    if not args.speak:
        if args.speak_dir:
            raise UsageError("--speak-dir needs --speak")
        return None
    if args.speak_dir:
        return Path(args.speak_dir)
    return settings.worker_data_dir.parent / "assistant-replies"


def cmd_assistant(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.assistant import run_assistant

    stats = run_assistant(
        with_live_group(with_metrics(settings, args), args),
        wake=args.wake,
        intents_file=args.intents,
        timeout_s=args.timeout,
        group_id=args.group_id,
        from_earliest=from_earliest(args),
        max_idle_s=args.max_idle,
        include_history=args.include_history,
        speak_dir=speak_dir(settings, args),
    )
    print(f"{stats.commands} commands from {stats.transcripts} transcripts", flush=True)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``assistant`` (``handler`` set)."""
    p = sub.add_parser("assistant", help="voice commands (wake phrase + intents) from transcripts")
    add_arguments(p)
    p.set_defaults(handler=cmd_assistant)
