"""The one command, ``streamscribe``, and its subcommands.

One convention for every command group: a module of this package (``broker``,
``produce``, ``tail``, ``worker``, ``offline``, ``consumers``) exposes
``register(subparsers)``, which declares its commands' options and sets each one's
``handler`` (:data:`~streamscribe.cli.common.Handler`); :func:`main` parses the command
line, builds the one :class:`~streamscribe.core.settings.Settings` and runs the handler
inside the one error wrapper. Handlers import their service lazily, so that
``streamscribe --help`` loads no model and starts no Kafka client.

The error wrapper: a :class:`~streamscribe.core.errors.StreamscribeError` (a
:class:`~streamscribe.core.errors.UsageError` included), a bad argument, a bad setting, a
missing file (``OSError``) or a Kafka error ends the command with one line on stderr,
``streamscribe COMMAND: error: REASON``, and exit code 2, never a traceback. The exit
codes are listed in :mod:`streamscribe.cli.common`; ``--log-level DEBUG`` also logs the
traceback.

Example::

    streamscribe broker start
    streamscribe topics create
    streamscribe produce two_cities.wav --pace realtime
    streamscribe tail streamscribe.audio --from-beginning --max-messages 3

    >>> build_parser().parse_args(["tail", "streamscribe.audio", "--max-messages", "3"]).command
    'tail'
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from confluent_kafka import KafkaException

from streamscribe.cli import (
    assistant,
    broker,
    consumers,
    forget,
    gateway,
    offline,
    produce,
    tail,
    worker,
)
from streamscribe.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, Handler
from streamscribe.core.errors import StreamscribeError
from streamscribe.core.security import install as install_security
from streamscribe.core.settings import Settings

log = logging.getLogger(__name__)

PROG = "streamscribe"
GROUPS = (broker, produce, tail, worker, offline, consumers, gateway, assistant, forget)

#: What a user's mistake raises: the wrapper turns these into one line and exit 2.
USER_ERRORS = (StreamscribeError, KafkaException, OSError, ValueError)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG COMMAND: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``streamscribe`` parser with every command group registered on it."""
    parser = Parser(prog=PROG, description="Kafka-native streaming speech pipeline.")
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP_SERVERS, else the local broker)",
    )
    parser.add_argument(
        "--kafka-config",
        metavar="FILE",
        help="Kafka client properties (security.protocol, sasl.*, ssl.ca.location) for every "
        "client (else STREAMSCRIBE_KAFKA_CONFIG)",
    )
    parser.add_argument("--topic-prefix", help="topic name prefix (default streamscribe.)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The reason of ``exc`` on one line (Kafka and OS messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``streamscribe`` command; returns its exit code (see :mod:`.common`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    name = f"{PROG} {args.command}"
    try:
        settings = Settings.from_env().with_overrides(
            bootstrap_servers=args.bootstrap_servers,
            topic_prefix=args.topic_prefix,
            kafka_config=args.kafka_config,
        )
        install_security(settings)  # every Kafka client of this process carries it
        handler: Handler = args.handler
        return handler(settings, args)
    except USER_ERRORS as exc:
        log.debug("%s failed", name, exc_info=True)  # the traceback with --log-level DEBUG
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
