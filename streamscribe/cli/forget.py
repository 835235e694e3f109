"""``streamscribe forget SESSION``: erase a session from the store and the processors' tables.

For an erasure request: deletes the session's rows from the transcript store (finals,
partials, latency, channels, the sessions row) and writes tombstones for its keys in the
changelog topics of the processors' faust tables
(:mod:`streamscribe.consumers.forget` says how and what it guarantees). It prints what it
removed. Exit codes (:mod:`streamscribe.cli.common`): 0 erased; 1 erased, but the
segmenter still had the session open (a running worker may write its state again: run it
again after the session ends); 2 unknown session (nothing found), or it could not run.

Example::

    streamscribe forget call-1 --db sqlite:///transcripts.db
    streamscribe forget call-1 --group-id streamscribe-processors --group-id retranscribe-11

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["call-1", "--group-id", "a", "--group-id", "b"]).group_id
    ['a', 'b']
"""

from __future__ import annotations

import argparse
import sys

from streamscribe.cli.common import EXIT_INCOMPLETE, EXIT_OK, SubParsers, require_broker
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION", help="the session id to erase (exact)")
    p.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///path.db or postgresql+psycopg://user@host/db (default STREAMSCRIBE_DB_URL)",
    )
    p.add_argument(
        "--group-id",
        action="append",
        metavar="G",
        help="a processors group whose tables to erase from (repeatable; default "
        "STREAMSCRIBE_GROUP_ID, else the one derived from the topic prefix)",
    )


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.cli.consumers import shown_id
    from streamscribe.consumers.forget import forget_session

    if not args.session:
        raise UsageError("SESSION must not be empty")
    require_broker(settings)
    report = forget_session(settings, args.session, db_url=args.db, group_ids=args.group_id or ())
    name = shown_id(report.session_id)
    if not report.found:
        groups = ", ".join(sorted({t.group_id for t in report.tables})) or "none found"
        raise UsageError(
            f"unknown session {name!r}: no rows in {report.store_url} and no live keys in "
            f"the processors' tables (groups: {groups})"
        )
    rows = ", ".join(f"{n} {table}" for table, n in report.store.items())
    print(f"session {name}: deleted from {report.store_url}: {rows}")
    for t in report.tables:
        print(
            f"session {name}: table {t.table} ({t.topic}): {t.tombstoned} tombstones "
            f"written ({t.keys} keys of the session, {t.keys - t.tombstoned} deleted before)"
        )
    if report.still_open:
        print(
            f"streamscribe forget: warning: session {name} is still open in "
            f"{', '.join(report.still_open)}; a running worker may write its state again: "
            "run forget again after the session ends",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``forget``."""
    p = sub.add_parser(
        "forget", help="erase a session from the store and the processors' tables (tombstones)"
    )
    add_arguments(p)
    p.set_defaults(handler=cmd_forget)
