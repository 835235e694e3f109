"""The transcript store's schema: tables, versions and migrations, opening a database.

Tables::

    schema_version (version PK, applied_at_us)
    sessions   (session_id PK, first_seen_us, last_seen_us, channels, roles JSON {"0": "agent"})
    channels   (session_id, channel, role)                             PK (session_id, channel)
    utterances (session_id, channel, utterance, role, text, start_ms, end_ms, confidence,
                error, revision, reason, degraded, summary JSON, timestamps JSON,
                published_at_us, stored_at_us)             PK (session_id, channel, utterance)
    partials   (same key; the latest partial of a line that has no final yet)
    latency    (same key; revision, one <stage>_ms column per stage, end_to_end_ms,
                clamped, stored_at_us): finals of the live pipeline
    latency_history (the same columns plus origin, PK (session_id, channel, utterance,
                origin)): finals re-transcribed by another processor group, kept apart
                so that they never overwrite the live figures

Schema versions: v1 the tables above without ``utterances.published_at_us``; v2 adds it
(backfilled from ``timestamps``). Opening an older database migrates it (:data:`MIGRATIONS`);
a newer database than this code is refused. A table added without other changes
(``latency_history``) is created when an older database is opened (``create_all``).
Several processes may open a new database at once; a lost creation race is retried
(:func:`ensure_schema`).

Example::

    >>> engine = open_engine(check_url("sqlite://", create=True))
    >>> ensure_schema(engine, "sqlite://")
    >>> with engine.connect() as conn:
    ...     conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one()
    2
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from streamscribe.consumers.latency import STAGES
from streamscribe.core.errors import SinkError
from streamscribe.schemas.events import now_us

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
PUBLISHED_AT: Final = "published_at_us"
SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
SCHEMA_ATTEMPTS: Final = 5
#: The wait before the n-th retry of a lost schema race is n times this (0.1, 0.2, ... s).
SCHEMA_RETRY_STEP_S: Final = 0.1
#: The primary key of every per-line table.
KEY_COLUMNS: Final = ("session_id", "channel", "utterance")

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at_us", sa.BigInteger, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("last_seen_us", sa.BigInteger, nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Index("ix_sessions_last_seen", "last_seen_us"),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column("session_id", sa.Text, primary_key=True),
    sa.Column("channel", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("role", sa.Text, nullable=False),
)


def _line_key() -> list[sa.Column[Any]]:
    return [
        sa.Column("session_id", sa.Text, primary_key=True),
        sa.Column("channel", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("utterance", sa.Integer, primary_key=True, autoincrement=False),
    ]


utterances = sa.Table(
    "utterances",
    metadata,
    *_line_key(),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("start_ms", sa.Float, nullable=False),
    sa.Column("end_ms", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("degraded", sa.Boolean, nullable=False),
    sa.Column("summary", sa.JSON),
    sa.Column("timestamps", sa.JSON, nullable=False),
    sa.Column(PUBLISHED_AT, sa.BigInteger),  # timestamps["published_at_us"]; None if absent
    sa.Column("stored_at_us", sa.BigInteger, nullable=False),
)

partials = sa.Table(
    "partials",
    metadata,
    *_line_key(),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("stable_text", sa.Text, nullable=False),
    sa.Column("start_ms", sa.Float, nullable=False),
    sa.Column("end_ms", sa.Float, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)


def _latency_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("revision", sa.Integer, nullable=False),
        *[sa.Column(f"{stage}_ms", sa.Float) for stage in STAGES],
        sa.Column("end_to_end_ms", sa.Float, nullable=False),
        sa.Column("clamped", sa.Text, nullable=False),
        sa.Column("stored_at_us", sa.BigInteger, nullable=False),
    ]


latency = sa.Table(
    "latency",
    metadata,
    *_line_key(),
    *_latency_columns(),
    sa.Index("ix_latency_stored_at", "stored_at_us"),
)

#: The key of ``latency_history``: a line re-transcribed by several groups keeps a row each.
HISTORY_KEY_COLUMNS: Final = (*KEY_COLUMNS, "origin")

latency_history = sa.Table(
    "latency_history",
    metadata,
    *_line_key(),
    sa.Column("origin", sa.Text, primary_key=True),
    *_latency_columns(),
    sa.Index("ix_latency_history_stored_at", "stored_at_us"),
)


# --------------------------------------------------------------------------- migrations
def _migrate_v2_published_at(conn: Connection) -> None:
    """v2: ``utterances.published_at_us``, backfilled from the ``timestamps`` JSON.

    Idempotent (the column may exist already when a concurrent opener raced us).
    """
    have = {c["name"] for c in sa.inspect(conn).get_columns("utterances")}
    if PUBLISHED_AT not in have:
        conn.execute(sa.text(f"ALTER TABLE utterances ADD COLUMN {PUBLISHED_AT} BIGINT"))
    published = sa.cast(utterances.c.timestamps[PUBLISHED_AT].as_string(), sa.BigInteger)
    conn.execute(
        utterances.update()
        .where(utterances.c.published_at_us.is_(None))
        .values(published_at_us=published)
    )


#: version -> function that migrates a database from ``version - 1`` to ``version``.
MIGRATIONS: Final[dict[int, Callable[[Connection], None]]] = {2: _migrate_v2_published_at}


def create_or_migrate(conn: Connection) -> None:
    """Create missing tables, then record the version or migrate up to :data:`SCHEMA_VERSION`."""
    metadata.create_all(conn, checkfirst=True)
    current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    if current is None:
        row = {"version": SCHEMA_VERSION, "applied_at_us": now_us()}
        conn.execute(schema_version.insert().values(**row))
        return
    if current > SCHEMA_VERSION:
        raise SinkError(
            f"database schema v{current} is newer than this streamscribe "
            f"(v{SCHEMA_VERSION}); upgrade streamscribe"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(schema_version.insert().values(version=version, applied_at_us=now_us()))
        log.info("migrated transcript store to schema v%d", version)


def ensure_schema(engine: Engine, safe_url: str) -> None:
    """:func:`create_or_migrate` in one transaction; a lost race is retried.

    Several processes may open a new database at once (a sink and a reader, two sinks):
    a lost race (duplicate version row, table created meanwhile, SQLite busy) is retried
    up to :data:`SCHEMA_ATTEMPTS` times; any other database error, or the last lost race,
    is a :class:`SinkError`.
    """
    retrying = Retrying(
        stop=stop_after_attempt(SCHEMA_ATTEMPTS),
        wait=wait_incrementing(start=SCHEMA_RETRY_STEP_S, increment=SCHEMA_RETRY_STEP_S),
        retry=retry_if_exception(_is_race),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt, engine.begin() as conn:
                create_or_migrate(conn)
    except SQLAlchemyError as exc:
        raise SinkError(f"cannot open database {safe_url}: {short_error(exc)}") from None


def _is_race(exc: BaseException) -> bool:
    """A concurrent schema creation: duplicate row/table/type, or SQLite busy/locked."""
    if not isinstance(exc, IntegrityError | OperationalError | ProgrammingError):
        return False
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("unique", "duplicate", "already exists", "locked", "busy"))


# ------------------------------------------------------------------------------ opening
def check_url(url: str, *, create: bool) -> sa.URL:
    """Parse and check a database URL; ``create=False`` wants an existing SQLite file."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError as exc:
        raise SinkError(f"bad database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() not in SUPPORTED_DIALECTS:
        raise SinkError(
            f"unsupported database {parsed.get_backend_name()!r} in {url!r} "
            f"(use sqlite:///path.db or postgresql+psycopg://...)"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise SinkError(f"no transcript database at {path} (run `streamscribe sink` first)")
    return parsed


def open_engine(parsed: sa.URL, *, echo: bool = False) -> Engine:
    """The engine of a checked URL; SQLite connections get WAL, FULL sync, a busy timeout."""
    try:
        engine = sa.create_engine(parsed, echo=echo, future=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        where = parsed.render_as_string(hide_password=True)
        raise SinkError(f"cannot open database {where!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the sink
    cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss before offsets move
    cur.close()


def short_error(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
