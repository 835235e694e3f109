"""``streamscribe sink|sessions|transcript|metrics|latency-report|alerts``: the consumers.

:func:`register` adds the six consumer commands::

    sink            [--db URL] [--group-id G] [--live-group G] [--from-latest] [--max-idle S]
                    [--batch-size N] [--metrics-host H] [--metrics-port P]
    sessions        [--db URL] [--limit N]
    transcript      SESSION [--db URL] [--format text|json|srt]
    metrics         [--metrics-host H] [--metrics-port P] [--group-id G] [--live-group G]
                    [--from-latest] [--window 1000|5m] [--max-idle S]
    latency-report  [--db URL] [--since ISO|15m] [--png FILE] [--origin live|history]
                    [--sla-ms MS] [--fail-on-violation]
    alerts          (--phrases "a,b" | --phrases-file F) [--format text|json] [--group-id G]
                    [--live-group G] [--include-history] [--from-latest] [--max-idle S]
                    [--metrics-host H] [--metrics-port P]

The long-running ones serve ``/metrics`` on ``--metrics-host:--metrics-port`` (settings
``metrics_host``, ``process_metrics_port``; off without a port; ``metrics`` always serves,
on ``metrics_port``). ``docs/metrics.md`` lists the names.

Bad input (unknown session, bad URL, unreadable file, bad duration) raises; the CLI's one
error wrapper makes it one line on stderr and exit 2, never a traceback.

Example::

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments_transcript(p)
    >>> p.parse_args(["call-1", "--format", "srt"]).format
    'srt'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from streamscribe.cli.common import (
    EXIT_OK,
    EXIT_VERDICT,
    Handler,
    SubParsers,
    add_start_options,
    from_earliest,
)
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import Alert


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///path.db or postgresql+psycopg://user@host/db (default STREAMSCRIBE_DB_URL)",
    )


def group_id_arg(p: argparse.ArgumentParser, role: str) -> None:
    """``--group-id G``; without it the command's group is ``settings.group_for(role)``:
    ``<prefix stem>-<role>``, so ``--topic-prefix`` scopes it (``streamscribe-<role>`` by
    default). Also used by ``assistant``."""
    p.add_argument(
        "--group-id",
        metavar="G",
        help=f"consumer group (default <topic prefix>-{role}: streamscribe-{role} for the"
        " default prefix)",
    )


def live_group_arg(p: argparse.ArgumentParser) -> None:
    """``--live-group G``: whose transcripts are live traffic (``Settings.group_id``)."""
    p.add_argument(
        "--live-group",
        metavar="G",
        help="the live worker's group (its --group-id): its transcripts are live traffic,"
        " any other group's re-transcribed history (default STREAMSCRIBE_GROUP_ID, else"
        " <topic prefix>-processors)",
    )


def with_live_group(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` whose ``group_id`` (the live processor group) is ``--live-group``."""
    return settings.with_overrides(group_id=getattr(args, "live_group", None))


def _consumer_args(p: argparse.ArgumentParser, role: str) -> None:
    group_id_arg(p, role)
    live_group_arg(p)
    add_start_options(p, "transcripts")
    p.add_argument(
        "--max-idle", type=float, metavar="S", help="stop after S seconds without a message"
    )


def metrics_args(p: argparse.ArgumentParser, port_help: str) -> None:
    p.add_argument(
        "--metrics-host",
        metavar="H",
        help="address of /metrics (default STREAMSCRIBE_METRICS_HOST, 127.0.0.1; 0.0.0.0 in"
        " a container)",
    )
    p.add_argument("--metrics-port", type=int, metavar="P", help=port_help)


def with_metrics(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the ``--metrics-host/--metrics-port`` of a long-running consumer."""
    return settings.with_overrides(
        metrics_host=args.metrics_host, process_metrics_port=args.metrics_port
    )


PROCESS_PORT_HELP = "serve /metrics on this port (default STREAMSCRIBE_PROCESS_METRICS_PORT; off)"


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ sink
def add_arguments_sink(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.sink import DEFAULT_BATCH_SIZE, GROUP_ROLE

    _db_arg(p)
    _consumer_args(p, GROUP_ROLE)
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"messages per DB transaction (default {DEFAULT_BATCH_SIZE})",
    )
    metrics_args(p, PROCESS_PORT_HELP)


def cmd_sink(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.sink import run_sink

    db = args.db or settings.db_url
    if db.split("?")[0].rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in db:
        raise UsageError(
            f"--db {db}: an in-memory database loses its rows when the sink stops, while "
            "the group's committed offsets say they are stored; give a file "
            "(sqlite:///path.db) or a server"
        )
    stats = run_sink(
        with_live_group(with_metrics(settings, args), args),
        db_url=args.db,
        group_id=args.group_id,
        from_earliest=from_earliest(args),
        max_idle_s=args.max_idle,
        batch_size=args.batch_size,
    )
    print(
        f"stored {stats.finals_written} finals ({stats.finals_unchanged} unchanged replays), "
        f"{stats.partials} partials, {stats.dead_letters} dead letters "
        f"from {stats.messages} messages in {stats.batches} batches"
    )
    return EXIT_OK


# -------------------------------------------------------------------------------- sessions
def add_arguments_sessions(p: argparse.ArgumentParser) -> None:
    _db_arg(p)
    p.add_argument("--limit", type=int, default=50, help="most recent N sessions (default 50)")


SHOWN_ID_CHARS = 60


def shown_id(text: str, limit: int = SHOWN_ID_CHARS) -> str:
    r"""A session id as a terminal may show it: control, bidi and other unprintable
    characters escaped, and elided in the middle past ``limit`` characters.

    >>> shown_id("call\u202e7"), shown_id("a" * 100, 10)
    ('call\\u202e7', 'aaaa…aaaaa')
    """
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(out) > limit:
        half = (limit - 1) // 2
        out = f"{out[:half]}…{out[-(limit - 1 - half) :]}"
    return out


def cmd_sessions(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.conversation import list_sessions
    from streamscribe.consumers.store import TranscriptStore

    with TranscriptStore(args.db or settings.db_url, create=False) as store:
        rows = list_sessions(store, args.limit)
    print(f"{'session':36s} {'roles':24s} {'finals':>6s} {'length':>8s}  last seen (UTC)")
    for s in rows:
        roles = ",".join(s.roles[k] for k in sorted(s.roles, key=int))
        print(
            f"{shown_id(s.session_id):36s} {shown_id(roles):24s} {s.finals:6d} "
            f"{s.end_ms / 1000:7.1f}s  "
            f"{_iso(s.last_seen_us)}"
        )
    return EXIT_OK


# ------------------------------------------------------------------------------ transcript
def add_arguments_transcript(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.conversation import FORMATS

    p.add_argument("session", metavar="SESSION", help="session id (see `streamscribe sessions`)")
    _db_arg(p)
    p.add_argument("--format", choices=FORMATS, default="text", help="(default text)")


def cmd_transcript(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.conversation import load_conversation
    from streamscribe.consumers.store import TranscriptStore

    with TranscriptStore(args.db or settings.db_url, create=False) as store:
        conv = load_conversation(store, args.session)
    print(conv.render(args.format))
    return EXIT_OK


# --------------------------------------------------------------------------------- metrics
def add_arguments_metrics(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.metrics import DEFAULT_WINDOW, GROUP_ROLE

    metrics_args(p, "port of /metrics (default STREAMSCRIBE_METRICS_PORT, 9108)")
    p.add_argument("--port", type=int, dest="metrics_port", help=argparse.SUPPRESS)  # old name
    _consumer_args(p, GROUP_ROLE)
    p.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        help=f"sliding window: N finals or a duration like 5m (default {DEFAULT_WINDOW})",
    )


def cmd_metrics(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.latency import parse_window
    from streamscribe.consumers.metrics import run_metrics

    parse_window(args.window)  # a bad window is bad input, before anything starts
    stats = run_metrics(
        with_live_group(settings.with_overrides(metrics_host=args.metrics_host), args),
        port=args.metrics_port,
        group_id=args.group_id,
        from_earliest=from_earliest(args),
        window=args.window,
        max_idle_s=args.max_idle,
    )
    print(f"observed {stats.finals} finals, {stats.latency_records} with timestamps")
    return EXIT_OK


# -------------------------------------------------------------------------- latency-report
def add_arguments_latency_report(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.latency import LIVE, ORIGINS

    _db_arg(p)
    p.add_argument("--since", help="only finals stored since an ISO time or a duration ago (15m)")
    p.add_argument("--png", metavar="FILE", help="also plot per-stage distributions")
    p.add_argument(
        "--origin",
        choices=ORIGINS,
        default=LIVE,
        help="live: the live pipeline's finals (default); history: finals re-transcribed by"
        " other processor groups",
    )
    p.add_argument("--sla-ms", type=float, help="SLA threshold (default STREAMSCRIBE_SLA_MS)")
    p.add_argument(
        "--sla-stage",
        default=None,
        help="series checked besides end_to_end (default eos_to_final: decided -> published)",
    )
    p.add_argument(
        "--fail-on-violation",
        action="store_true",
        help=f"exit {EXIT_VERDICT} when the SLA verdict is FAIL",
    )


def cmd_latency_report(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.latency import ALL_SERIES, DEFAULT_SLA_SPAN, END_TO_END, SlaSpec
    from streamscribe.consumers.report import build_report, format_report, parse_since, plot_report
    from streamscribe.consumers.store import TranscriptStore

    stage = args.sla_stage or DEFAULT_SLA_SPAN
    if stage not in ALL_SERIES:
        raise UsageError(f"--sla-stage must be one of {', '.join(ALL_SERIES)}")
    threshold = settings.sla_ms if args.sla_ms is None else args.sla_ms
    series = (stage,) if stage == END_TO_END else (stage, END_TO_END)
    spec = SlaSpec(threshold, settings.sla_violation_rate, series)
    since = parse_since(args.since) if args.since else None
    with TranscriptStore(args.db or settings.db_url, create=False) as store:
        report = build_report(store, spec, since_us=since, origin=args.origin)
    print(format_report(report))
    if args.png:
        path = plot_report(report, Path(args.png), threshold_ms=threshold)
        print(f"plot: {path}")
    return EXIT_VERDICT if args.fail_on_violation and not report.ok else EXIT_OK


# ---------------------------------------------------------------------------------- alerts
def add_arguments_alerts(p: argparse.ArgumentParser) -> None:
    from streamscribe.consumers.alerts import GROUP_ROLE

    p.add_argument("--phrases", help='comma-separated phrases, e.g. "cancel my account,manager"')
    p.add_argument("--phrases-file", metavar="FILE", help="one phrase a line (# comments)")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="each alert as a line of text or as its JSON (default text)",
    )
    p.add_argument(
        "--include-history",
        action="store_true",
        help="also alert on finals re-transcribed by another processor group (default: live"
        " traffic only, the finals of STREAMSCRIBE_GROUP_ID / <topic prefix>-processors)",
    )
    _consumer_args(p, GROUP_ROLE)
    metrics_args(p, PROCESS_PORT_HELP)


def alert_line(alert: Alert, fmt: str) -> str:
    """One printed line per alert: its JSON, or ``session ch role u#  [phrase] text``."""
    if fmt == "json":
        return alert.encode().decode()
    return (
        f"{alert.session_id} ch{alert.channel} {alert.role} u{alert.utterance} "
        f"@{alert.start_ms / 1000:.1f}s [{alert.phrase}] {alert.text}"
    )


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.consumers.alerts import load_phrases, run_alerts

    phrases = load_phrases(args.phrases, args.phrases_file)
    if not phrases:
        raise UsageError("no phrases: give --phrases or --phrases-file")
    stats = run_alerts(
        with_live_group(with_metrics(settings, args), args),
        phrases=phrases,
        group_id=args.group_id,
        from_earliest=from_earliest(args),
        max_idle_s=args.max_idle,
        on_alert=lambda alert: print(alert_line(alert, args.format), flush=True),
        include_history=args.include_history,
    )
    skipped = f" ({stats.history_skipped} re-transcribed, not alerted)" * bool(
        stats.history_skipped
    )
    print(f"{stats.alerts} alerts from {stats.finals} finals{skipped}", file=sys.stderr)
    return EXIT_OK


# -------------------------------------------------------------------------------- register
COMMANDS: Final[dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]]] = {
    "sink": ("store transcripts in SQLite/PostgreSQL", add_arguments_sink, cmd_sink),
    "sessions": ("list stored sessions", add_arguments_sessions, cmd_sessions),
    "transcript": (
        "a stored session as a conversation",
        add_arguments_transcript,
        cmd_transcript,
    ),
    "metrics": ("per-stage latency as Prometheus metrics", add_arguments_metrics, cmd_metrics),
    "latency-report": (
        "per-stage latency and the SLA verdict from the store",
        add_arguments_latency_report,
        cmd_latency_report,
    ),
    "alerts": ("phrase alerts on final transcripts", add_arguments_alerts, cmd_alerts),
}


def register(sub: SubParsers) -> None:
    """Add the six consumer commands (``handler`` set on each)."""
    for name, (help_text, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(handler=handler)
