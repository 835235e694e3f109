"""``streamscribe tail TOPIC``: decoded messages of a topic as JSON lines.

Example::

    streamscribe tail streamscribe.audio --from-beginning --session call-1 --idle-timeout 5
"""

from __future__ import annotations

import argparse

from streamscribe.cli.common import EXIT_OK, SubParsers
from streamscribe.core.settings import Settings


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.tail import TailOptions, run_tail

    opts = TailOptions(
        topic=args.topic,
        from_beginning=args.from_beginning,
        session=args.session,
        max_messages=args.max_messages,
        idle_timeout_s=args.idle_timeout,
    )
    run_tail(settings, opts)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``tail``."""
    p = sub.add_parser("tail", help="decoded messages of a topic as JSON lines")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--session", help="only this session id (the key)")
    p.add_argument("--max-messages", type=int)
    p.add_argument("--idle-timeout", type=float, help="exit after S seconds with no message")
    p.set_defaults(handler=cmd_tail)
