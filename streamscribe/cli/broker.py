"""``streamscribe broker start|stop|status|acls`` and ``streamscribe topics create|list``.

Example::

    streamscribe broker start --port 19092 --data-dir /tmp/kafka
    streamscribe topics create --partitions 4
    streamscribe topics list --all
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from streamscribe.broker import LocalBroker
from streamscribe.broker_secure import PRINCIPALS, SUPER_USERS
from streamscribe.cli.common import EXIT_OK, EXIT_VERDICT, SubParsers, require_broker
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    broker = LocalBroker(
        settings.with_overrides(
            broker_port=args.port, broker_data_dir=Path(args.data_dir) if args.data_dir else None
        ),
        secure=args.secure,
    )
    if args.action == "start":
        t0 = time.monotonic()
        bootstrap = broker.start()
        mode = "SASL_SSL, SCRAM-SHA-512, ACLs" if broker.secure else "PLAINTEXT"
        print(
            f"Apache Kafka {broker.version} (KRaft, {mode}) ready at {bootstrap} "
            f"in {time.monotonic() - t0:.1f} s; log: {broker.log_file}"
        )
        print(f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        if broker.secure:
            for principal in PRINCIPALS:
                print(f"client file of {principal}: {broker.client_file(principal)}")
            print(f"export STREAMSCRIBE_KAFKA_CONFIG={broker.client_file('admin')}")
    elif args.action == "acls":
        return cmd_acls(settings, broker)
    elif args.action == "secrets":
        from streamscribe.broker_secure import write_compose_secrets

        if not args.data_dir:
            raise UsageError("broker secrets: give the folder to write with --data-dir")
        layout = write_compose_secrets(Path(args.data_dir), host=args.host, owner=args.owner)
        print(f"secrets of a secured broker at {args.host}:29092 in {layout.data_dir}")
    elif args.action == "stop":
        print("stopped" if broker.stop() else "not running")
    else:
        st = broker.status()
        print(st.describe())
        return EXIT_OK if st.running else EXIT_VERDICT
    return EXIT_OK


def cmd_acls(settings: Settings, broker: LocalBroker) -> int:
    """Print every ACL of the cluster (as admin: --kafka-config, else the data dir's file)."""
    from streamscribe.broker_secure import describe_acls
    from streamscribe.core.security import client_security, read_properties, register

    if not settings.bootstrap_servers:  # the local broker of --port / --data-dir
        settings = settings.with_overrides(bootstrap_servers=broker.bootstrap)
    if settings.kafka_config is None and not client_security(settings.bootstrap).properties:
        admin_file = broker.client_file("admin")
        if not admin_file.exists():
            raise UsageError(
                f"no --kafka-config given and {admin_file} does not exist: "
                "start the broker with --secure, or name an admin client file"
            )
        register(settings.bootstrap, read_properties(admin_file))
    require_broker(settings)
    acls = describe_acls(settings.bootstrap)
    print(f"{'principal':18s} {'type':6s} {'pattern':9s} {'resource':40s} operation")
    for acl in acls:
        print(acl.line())
    print(f"{len(acls)} ACLs; super users: {', '.join(SUPER_USERS)}")
    return EXIT_OK


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.core.admin import create_topics, describe_topics
    from streamscribe.schemas.topics import Topics

    topics = Topics.from_settings(settings)
    require_broker(settings)  # one line, in seconds, when nothing listens
    if args.action == "create":
        if args.acls:
            from streamscribe.broker_secure import acl_specs, apply_acls

            count = apply_acls(settings.bootstrap, acl_specs(settings))
            print(f"ACLs: {count} (the principals of docs/security.md)")
        partitions = args.partitions or settings.partitions
        for name, outcome in create_topics(settings.bootstrap, topics.specs(partitions)).items():
            print(f"{name}: {outcome}")
        return EXIT_OK
    names = None if args.all else topics.all_names()
    infos = describe_topics(settings.bootstrap, names)
    print(f"{'topic':40s} {'partitions':>10s} {'messages':>10s}")
    for t in infos:
        print(f"{t.name:40s} {t.partitions:>10d} {t.messages:>10d}")
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``broker`` and ``topics``."""
    p = sub.add_parser("broker", help="the local one-node Apache Kafka (KRaft) from Maven jars")
    p.add_argument("action", choices=["start", "stop", "status", "acls", "secrets"])
    p.add_argument("--port", type=int, help="client port (default 9092; controller = port+1)")
    p.add_argument("--data-dir", help="data folder (default .cache/kafka-data)")
    p.add_argument(
        "--secure",
        action="store_true",
        help="start: SASL_SSL (SCRAM-SHA-512) with TLS, ACLs, one principal per service; "
        "client files in DATA_DIR/clients/ (a data dir made so stays secure)",
    )
    p.add_argument(
        "--host",
        default="kafka",
        help="secrets: the broker's host name in its certificate (default kafka)",
    )
    p.add_argument(
        "--owner", type=int, help="secrets: give the files to this uid (the Kafka image's user)"
    )
    p.set_defaults(handler=cmd_broker)

    p = sub.add_parser("topics", help="create or list the pipeline's topics")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--partitions", type=int, help="partitions per topic (create)")
    p.add_argument("--all", action="store_true", help="list every topic, not only ours")
    p.add_argument(
        "--acls",
        action="store_true",
        help="create: also apply the principals' ACLs (a secured cluster, as its admin)",
    )
    p.set_defaults(handler=cmd_topics)
