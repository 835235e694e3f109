"""The one command, ``streamscribe``, and its subcommands.

Each subcommand declares its options here and calls into a service package; services are
imported only when their command runs (no side effects at import). A
:class:`~streamscribe.core.errors.StreamscribeError` or a bad argument ends the command
with a one-line message on stderr and a non-zero exit, never a traceback.

Example::

    streamscribe broker start
    streamscribe topics create
    streamscribe produce two_cities.wav --pace realtime
    streamscribe tail streamscribe.audio --from-beginning --max-messages 3
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from streamscribe.core.errors import StreamscribeError
from streamscribe.core.settings import Settings

Handler = Callable[[Settings, argparse.Namespace], int]


# --------------------------------------------------------------------------- broker/topics
def _broker_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    return settings.with_overrides(
        broker_port=args.port, broker_data_dir=Path(args.data_dir) if args.data_dir else None
    )


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.broker import LocalBroker

    broker = LocalBroker(_broker_settings(settings, args))
    if args.action == "start":
        import time

        t0 = time.monotonic()
        bootstrap = broker.start()
        print(
            f"Apache Kafka {broker.version} (KRaft) ready at {bootstrap} "
            f"in {time.monotonic() - t0:.1f} s; log: {broker.log_file}"
        )
        print(f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
    elif args.action == "stop":
        print("stopped" if broker.stop() else "not running")
    else:
        st = broker.status()
        print(st.describe())
        return 0 if st.running else 3
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.core.admin import create_topics, describe_topics
    from streamscribe.schemas.topics import Topics

    topics = Topics(settings.topic_prefix)
    if args.action == "create":
        partitions = args.partitions or settings.partitions
        for name, outcome in create_topics(settings.bootstrap, topics.specs(partitions)).items():
            print(f"{name}: {outcome}")
        return 0
    names = None if args.all else topics.all_names()
    infos = describe_topics(settings.bootstrap, names)
    print(f"{'topic':40s} {'partitions':>10s} {'messages':>10s}")
    for t in infos:
        print(f"{t.name:40s} {t.partitions:>10d} {t.messages:>10d}")
    return 0


def _add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="the local one-node Apache Kafka (KRaft) from Maven jars")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, help="client port (default 9092; controller = port+1)")
    p.add_argument("--data-dir", help="data folder (default .cache/kafka-data)")
    p.set_defaults(handler=cmd_broker)

    p = sub.add_parser("topics", help="create or list the pipeline's topics")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--partitions", type=int, help="partitions per topic (create)")
    p.add_argument("--all", action="store_true", help="list every topic, not only ours")
    p.set_defaults(handler=cmd_topics)


# ------------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscribe",
        description="Kafka-native streaming speech pipeline.",
    )
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP_SERVERS, else the local broker)",
    )
    parser.add_argument("--topic-prefix", help="topic name prefix (default streamscribe.)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_broker(sub)
    for register in _service_registrars():
        register(sub)
    return parser


def _service_registrars() -> list[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
]:
    from streamscribe import commands

    return commands.REGISTRARS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env().with_overrides(
            bootstrap_servers=args.bootstrap_servers, topic_prefix=args.topic_prefix
        )
        handler: Handler = args.handler
        return handler(settings, args)
    except StreamscribeError as exc:
        print(f"streamscribe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # settings from the environment
        print(f"streamscribe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamscribe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
