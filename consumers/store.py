"""The transcript store: SQLAlchemy Core on SQLite or PostgreSQL, no Kafka.

URLs: ``sqlite:///path/to/transcripts.db`` (the default, ``Settings.db_url``) or
``postgresql+psycopg://user@host:5432/db``. The store creates its own schema
(``metadata.create_all`` plus a one-row-per-version ``schema_version`` table; a newer
database than this code is refused).

Tables::

    schema_version (version PK, applied_at_us)
    sessions   (session_id PK, first_seen_us, last_seen_us, channels, roles JSON {"0": "agent"})
    channels   (session_id, channel, role)                             PK (session_id, channel)
    utterances (session_id, channel, utterance, role, text, start_ms, end_ms, confidence,
                error, revision, reason, degraded, summary JSON, timestamps JSON,
                published_at_us, stored_at_us)             PK (session_id, channel, utterance)
    partials   (same key; the latest partial of a line that has no final yet)
    latency    (same key; revision, one <stage>_ms column per stage, end_to_end_ms,
                clamped, stored_at_us)

Which final wins (:func:`supersedes`): a final replaces the stored row of its line
``(session_id, channel, utterance)`` when it was **published later** — its
``timestamps["published_at_us"]`` (kept in the ``published_at_us`` column) is greater
than the stored one; when either side lacks that timestamp, a higher ``revision`` wins.
So a duplicate or replay of the same event (same publish time) changes nothing, not even
``stored_at_us``; an older event arriving late changes nothing; a re-transcription (a
new processors group run ``--from-earliest``: same keys, revisions that need not be
higher, later publish times) updates the row. The rule is applied twice: the stored
state of the batch's sessions is read first so that only winning lines are sent, and the
dialect's ``INSERT .. ON CONFLICT DO UPDATE .. WHERE <stored loses>`` guards against a
concurrent writer. Within one batch the latest published final of a line wins (the first
one seen on a tie). Partials keep the highest revision of a line that has no final; a
partial of a line already final is ignored. Sessions, channels and latency rows are
touched only for events actually written. Every call of :meth:`TranscriptStore.write` is
one transaction; :meth:`~TranscriptStore.write_batched` bounds the events per transaction.

Schema versions: v1 the tables above without ``utterances.published_at_us``; v2 adds it
(backfilled from ``timestamps``). Opening an older database migrates it (``MIGRATIONS``).

Example::

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> store = TranscriptStore("sqlite://")  # in memory
    >>> f = FinalTranscript(session_id="s1", channel=0, role="agent", utterance=0,
    ...                     revision=1, text="hello", start_ms=0.0, end_ms=900.0)
    >>> store.write([f, f]).finals_written
    1
    >>> [row.final.text for row in store.finals("s1")]
    ['hello']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

from streamscribe.consumers.latency import STAGES, stage_latencies
from streamscribe.core.errors import SinkError
from streamscribe.schemas.events import LatencyRecord, now_us
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
PUBLISHED_AT: Final = "published_at_us"
SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
SCHEMA_ATTEMPTS: Final = 5

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

latency = sa.Table(
    "latency",
    metadata,
    *_line_key(),
    sa.Column("revision", sa.Integer, nullable=False),
    *[sa.Column(f"{stage}_ms", sa.Float) for stage in STAGES],
    sa.Column("end_to_end_ms", sa.Float, nullable=False),
    sa.Column("clamped", sa.Text, nullable=False),
    sa.Column("stored_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_latency_stored_at", "stored_at_us"),
)

_KEY: Final = ("session_id", "channel", "utterance")
LineKey = tuple[str, int, int]


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


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`TranscriptStore.write` did."""

    finals_in: int = 0
    finals_written: int = 0  # inserted, or replaced a row published earlier
    partials_in: int = 0
    partials_written: int = 0
    sessions_touched: int = 0

    @property
    def finals_unchanged(self) -> int:
        """Finals that changed nothing (replays, duplicates, late older events)."""
        return self.finals_in - self.finals_written

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.finals_in + other.finals_in,
            self.finals_written + other.finals_written,
            self.partials_in + other.partials_in,
            self.partials_written + other.partials_written,
            self.sessions_touched + other.sessions_touched,
        )


@dataclass(frozen=True)
class StoredFinal:
    """A final as stored, with the sink's time."""

    final: FinalTranscript
    stored_at_us: int


@dataclass(frozen=True)
class SessionInfo:
    """One row of ``sessions`` plus counts from ``utterances``."""

    session_id: str
    first_seen_us: int
    last_seen_us: int
    channels: int
    roles: dict[str, str] = field(default_factory=dict)
    finals: int = 0
    end_ms: float = 0.0


_Ev = TypeVar("_Ev", FinalTranscript, PartialTranscript)


def _published_at(f: TranscriptEvent) -> int | None:
    t = f.timestamps.get(PUBLISHED_AT)
    return None if t is None else int(t)


def supersedes(
    new_published_at_us: int | None,
    new_revision: int,
    old_published_at_us: int | None,
    old_revision: int,
) -> bool:
    """Whether a final replaces a stored one of the same line (see the module doc).

    >>> supersedes(2_000, 1, 1_000, 3)  # published later: a re-transcription
    True
    >>> supersedes(1_000, 1, 1_000, 1), supersedes(900, 5, 1_000, 1)  # replay; late and older
    (False, False)
    >>> supersedes(None, 2, 1_000, 1)  # no publish time: the revision decides
    True
    """
    if new_published_at_us is not None and old_published_at_us is not None:
        return new_published_at_us > old_published_at_us
    return new_revision > old_revision


def _final_wins(new: FinalTranscript, old: FinalTranscript) -> bool:
    return supersedes(_published_at(new), new.revision, _published_at(old), old.revision)


def _partial_wins(new: PartialTranscript, old: PartialTranscript) -> bool:
    return new.revision > old.revision


def _dedupe(events: Iterable[_Ev], wins: Callable[[_Ev, _Ev], bool]) -> dict[LineKey, _Ev]:
    """The winning event per line; the first one seen wins a tie."""
    best: dict[LineKey, _Ev] = {}
    for ev in events:
        k = (ev.session_id, ev.channel, ev.utterance)
        cur = best.get(k)
        if cur is None or wins(ev, cur):
            best[k] = ev
    return best


def _key(e: TranscriptEvent) -> LineKey:
    return (e.session_id, e.channel, e.utterance)


def _final_row(f: FinalTranscript, stored_at_us: int) -> dict[str, Any]:
    return {
        "session_id": f.session_id,
        "channel": f.channel,
        "utterance": f.utterance,
        "role": f.role,
        "text": f.text,
        "start_ms": f.start_ms,
        "end_ms": f.end_ms,
        "confidence": f.confidence,
        "error": f.error,
        "revision": f.revision,
        "reason": f.reason,
        "degraded": f.degraded,
        "summary": f.summary,
        "timestamps": dict(f.timestamps),
        PUBLISHED_AT: _published_at(f),
        "stored_at_us": stored_at_us,
    }


def _partial_row(p: PartialTranscript, at_us: int) -> dict[str, Any]:
    return {
        "session_id": p.session_id,
        "channel": p.channel,
        "utterance": p.utterance,
        "role": p.role,
        "revision": p.revision,
        "text": p.text,
        "stable_text": p.stable_text,
        "start_ms": p.start_ms,
        "end_ms": p.end_ms,
        "updated_at_us": at_us,
    }


def _latency_row(rec: LatencyRecord, revision: int, stored_at_us: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "session_id": rec.session_id,
        "channel": rec.channel,
        "utterance": rec.utterance,
        "revision": revision,
        "end_to_end_ms": rec.end_to_end_ms,
        "clamped": ",".join(rec.clamped),
        "stored_at_us": stored_at_us,
    }
    for stage in STAGES:
        row[f"{stage}_ms"] = rec.stages_ms.get(stage)
    return row


def _check_url(url: str, *, create: bool) -> sa.URL:
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the sink
    cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss before offsets move
    cur.close()


class TranscriptStore:
    """Finals, partials, sessions and latency in one SQL database (see the module doc).

    ``create=False`` refuses a SQLite file that does not exist (for read-only commands).
    """

    def __init__(self, url: str, *, create: bool = True, echo: bool = False) -> None:
        parsed = _check_url(url, create=create)
        self.url = url
        self.dialect = parsed.get_backend_name()
        try:
            self.engine: Engine = sa.create_engine(parsed, echo=echo, future=True)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise SinkError(f"cannot open database {url!r}: {exc}") from None
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._ensure_schema()

    # ---------------------------------------------------------------- schema
    def _ensure_schema(self) -> None:
        """Create tables, record or migrate the schema version.

        Several processes may open a new database at once (a sink and a reader, two
        sinks): a lost race (duplicate version row, table created meanwhile) is retried.
        """
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    self._create_or_migrate(conn)
                return
            except (IntegrityError, OperationalError, ProgrammingError) as exc:
                if attempt == SCHEMA_ATTEMPTS - 1 or not _is_race(exc):
                    raise SinkError(
                        f"cannot open database {self.safe_url}: {_short(exc)}"
                    ) from None
                time.sleep(0.1 * (attempt + 1))
            except SQLAlchemyError as exc:
                raise SinkError(f"cannot open database {self.safe_url}: {_short(exc)}") from None

    def _create_or_migrate(self, conn: Connection) -> None:
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

    @property
    def safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one())

    # ---------------------------------------------------------------- writing
    def _insert(self, table: sa.Table) -> Any:
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    def _least(self, a: Any, b: Any) -> Any:
        return sa.func.min(a, b) if self.dialect == "sqlite" else sa.func.least(a, b)

    def _greatest(self, a: Any, b: Any) -> Any:
        return sa.func.max(a, b) if self.dialect == "sqlite" else sa.func.greatest(a, b)

    def write(
        self, events: Sequence[TranscriptEvent], *, stored_at_us: int | None = None
    ) -> WriteResult:
        """Upsert ``events`` (finals and partials) in ONE transaction; see the module doc.

        Raises :class:`SinkError` if the database fails (nothing of the batch is kept).
        """
        at = now_us() if stored_at_us is None else stored_at_us
        finals = _dedupe((e for e in events if isinstance(e, FinalTranscript)), _final_wins)
        parts = _dedupe(
            (
                e
                for e in events
                if isinstance(e, PartialTranscript)
                and (e.session_id, e.channel, e.utterance) not in finals
            ),
            _partial_wins,
        )
        n_finals = sum(isinstance(e, FinalTranscript) for e in events)
        n_partials = sum(isinstance(e, PartialTranscript) for e in events)
        if not finals and not parts:
            return WriteResult(finals_in=n_finals, partials_in=n_partials)
        try:
            with self.engine.begin() as conn:
                written = self._upsert_finals(conn, list(finals.values()), at)
                p_written = self._upsert_partials(conn, list(parts.values()), at)
                touched = {k[0] for k in written} | {k[0] for k in p_written}
                if written:
                    self._write_latency(conn, [finals[k] for k in written], at)
                if touched:
                    changed: list[TranscriptEvent] = [finals[k] for k in written]
                    changed += [parts[k] for k in p_written]
                    self._touch_sessions(conn, changed, sorted(touched), at)
                    self._drop_finished_partials(conn, sorted(touched))
        except SQLAlchemyError as exc:
            raise SinkError(f"database write failed ({self.dialect}): {_short(exc)}") from exc
        return WriteResult(n_finals, len(written), n_partials, len(p_written), len(touched))

    def write_batched(
        self, events: Sequence[TranscriptEvent], batch_size: int, *, stored_at_us: int | None = None
    ) -> WriteResult:
        """:meth:`write` in transactions of at most ``batch_size`` events."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        total = WriteResult()
        for i in range(0, len(events), batch_size):
            total += self.write(events[i : i + batch_size], stored_at_us=stored_at_us)
        return total

    def _upsert_finals(
        self, conn: Connection, finals: Sequence[FinalTranscript], at: int
    ) -> list[LineKey]:
        """Upsert the finals that supersede what is stored; returns the keys written.

        The stored state of the batch's sessions is read first so that only winning lines
        are sent (one prepared statement, executemany: much cheaper than a huge multi-row
        INSERT .. RETURNING); the ON CONFLICT .. WHERE guard (the same rule in SQL) keeps
        a concurrent writer's later final from being overwritten all the same.
        """
        if not finals:
            return []
        c = utterances.c
        q = sa.select(c.session_id, c.channel, c.utterance, c.revision, c.published_at_us)
        q = q.where(c.session_id.in_(sorted({f.session_id for f in finals})))
        have = {(r[0], r[1], r[2]): (r[4], r[3]) for r in conn.execute(q)}
        newer = [
            f
            for f in finals
            if _key(f) not in have or supersedes(_published_at(f), f.revision, *have[_key(f)])
        ]
        if newer:
            stmt = self._insert(utterances)
            new = stmt.excluded
            both_published = sa.and_(
                c.published_at_us.is_not(None), new.published_at_us.is_not(None)
            )
            stored_loses = sa.case(
                (both_published, c.published_at_us < new.published_at_us),
                else_=c.revision < new.revision,
            )
            self._upsert(conn, utterances, stmt, stored_loses, [_final_row(f, at) for f in newer])
        return [_key(f) for f in newer]

    def _upsert_partials(
        self, conn: Connection, parts: Sequence[PartialTranscript], at: int
    ) -> list[LineKey]:
        """Upsert partials of a higher revision, skipping lines that already have a final."""
        if not parts:
            return []
        sids = sorted({p.session_id for p in parts})
        finished = {
            (r[0], r[1], r[2])
            for r in conn.execute(
                sa.select(
                    utterances.c.session_id, utterances.c.channel, utterances.c.utterance
                ).where(utterances.c.session_id.in_(sids))
            )
        }
        p = partials.c
        q = sa.select(p.session_id, p.channel, p.utterance, p.revision)
        have = {(r[0], r[1], r[2]): r[3] for r in conn.execute(q.where(p.session_id.in_(sids)))}
        newer = [e for e in parts if _key(e) not in finished and have.get(_key(e), -1) < e.revision]
        if newer:
            stmt = self._insert(partials)
            guard = p.revision < stmt.excluded.revision
            self._upsert(conn, partials, stmt, guard, [_partial_row(e, at) for e in newer])
        return [_key(e) for e in newer]

    @staticmethod
    def _upsert(
        conn: Connection, table: sa.Table, stmt: Any, where: Any, rows: list[dict[str, Any]]
    ) -> None:
        update = {c.name: stmt.excluded[c.name] for c in table.c if c.name not in _KEY}
        conn.execute(
            stmt.on_conflict_do_update(index_elements=list(_KEY), set_=update, where=where), rows
        )

    def _write_latency(self, conn: Connection, finals: list[FinalTranscript], at: int) -> None:
        rows, missing = [], []
        for f in finals:
            rec = stage_latencies(
                f.session_id, f.channel, f.utterance, f.timestamps, stored_at_us=at
            )
            if rec is None:
                missing.append((f.session_id, f.channel, f.utterance))
            else:
                rows.append(_latency_row(rec, f.revision, at))
        if rows:
            stmt = self._insert(latency)
            update = {c.name: stmt.excluded[c.name] for c in latency.c if c.name not in _KEY}
            conn.execute(stmt.on_conflict_do_update(index_elements=list(_KEY), set_=update), rows)
        if missing:  # a re-transcription without timestamps: drop the stale figures
            conn.execute(
                latency.delete().where(
                    sa.tuple_(latency.c.session_id, latency.c.channel, latency.c.utterance).in_(
                        missing
                    )
                )
            )

    def _touch_sessions(
        self,
        conn: Connection,
        events: Sequence[TranscriptEvent],
        session_ids: list[str],
        at: int,
    ) -> None:
        roles = {(e.session_id, e.channel): e.role for e in events}
        stmt = self._insert(channels)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["session_id", "channel"], set_={"role": stmt.excluded.role}
            ),
            [{"session_id": s, "channel": c, "role": r} for (s, c), r in sorted(roles.items())],
        )
        by_session: dict[str, dict[str, str]] = {s: {} for s in session_ids}
        q = sa.select(channels.c.session_id, channels.c.channel, channels.c.role).where(
            channels.c.session_id.in_(session_ids)
        )
        for row in conn.execute(q):
            by_session[str(row.session_id)][str(row.channel)] = str(row.role)
        stmt = self._insert(sessions)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["session_id"],
                set_={
                    "first_seen_us": self._least(
                        sessions.c.first_seen_us, stmt.excluded.first_seen_us
                    ),
                    "last_seen_us": self._greatest(
                        sessions.c.last_seen_us, stmt.excluded.last_seen_us
                    ),
                    "channels": stmt.excluded.channels,
                    "roles": stmt.excluded.roles,
                },
            ),
            [
                {
                    "session_id": s,
                    "first_seen_us": at,
                    "last_seen_us": at,
                    "channels": len(r),
                    "roles": dict(sorted(r.items(), key=lambda kv: int(kv[0]))),
                }
                for s, r in by_session.items()
            ],
        )

    def _drop_finished_partials(self, conn: Connection, session_ids: list[str]) -> None:
        u = utterances.alias("u")
        has_final = (
            sa.select(sa.literal(1))
            .where(
                u.c.session_id == partials.c.session_id,
                u.c.channel == partials.c.channel,
                u.c.utterance == partials.c.utterance,
            )
            .exists()
        )
        conn.execute(partials.delete().where(partials.c.session_id.in_(session_ids), has_final))

    # ---------------------------------------------------------------- reading
    def finals(self, session_id: str) -> list[StoredFinal]:
        """A session's finals ordered by stream time (start, channel, utterance)."""
        q = (
            sa.select(utterances)
            .where(utterances.c.session_id == session_id)
            .order_by(utterances.c.start_ms, utterances.c.channel, utterances.c.utterance)
        )
        with self._reading() as conn:
            return [_stored_final(row._mapping) for row in conn.execute(q)]

    def partials(self, session_id: str) -> list[PartialTranscript]:
        """The latest partial of each line of the session that has no final yet."""
        q = (
            sa.select(partials)
            .where(partials.c.session_id == session_id)
            .order_by(partials.c.start_ms, partials.c.channel, partials.c.utterance)
        )
        with self._reading() as conn:
            return [
                PartialTranscript(
                    session_id=m["session_id"],
                    channel=m["channel"],
                    role=m["role"],
                    utterance=m["utterance"],
                    revision=m["revision"],
                    text=m["text"],
                    start_ms=m["start_ms"],
                    end_ms=m["end_ms"],
                    stable_text=m["stable_text"],
                )
                for m in (row._mapping for row in conn.execute(q))
            ]

    def sessions(self, limit: int | None = 50, session_id: str | None = None) -> list[SessionInfo]:
        """Sessions, most recently seen first, with their final count and last end time."""
        agg = (
            sa.select(
                utterances.c.session_id,
                sa.func.count().label("finals"),
                sa.func.max(utterances.c.end_ms).label("end_ms"),
            )
            .group_by(utterances.c.session_id)
            .subquery()
        )
        q = (
            sa.select(sessions, agg.c.finals, agg.c.end_ms)
            .select_from(sessions.outerjoin(agg, agg.c.session_id == sessions.c.session_id))
            .order_by(sessions.c.last_seen_us.desc(), sessions.c.session_id)
        )
        if session_id is not None:
            q = q.where(sessions.c.session_id == session_id)
        if limit is not None:
            q = q.limit(limit)
        with self._reading() as conn:
            return [
                SessionInfo(
                    session_id=m["session_id"],
                    first_seen_us=m["first_seen_us"],
                    last_seen_us=m["last_seen_us"],
                    channels=m["channels"],
                    roles=dict(m["roles"] or {}),
                    finals=int(m["finals"] or 0),
                    end_ms=float(m["end_ms"] or 0.0),
                )
                for m in (row._mapping for row in conn.execute(q))
            ]

    def session(self, session_id: str) -> SessionInfo | None:
        found = self.sessions(limit=1, session_id=session_id)
        return found[0] if found else None

    def latency_records(self, since_us: int | None = None) -> list[LatencyRecord]:
        """Stored latency records (computed at write time), optionally stored since a time."""
        q = sa.select(latency).order_by(latency.c.stored_at_us)
        if since_us is not None:
            q = q.where(latency.c.stored_at_us >= since_us)
        with self._reading() as conn:
            return [_latency_record(row._mapping) for row in conn.execute(q)]

    def counts(self) -> dict[str, int]:
        """Row count per table (for tests, benches and the sink's summary)."""
        with self._reading() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in (sessions, channels, utterances, partials, latency)
            }

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read {self.safe_url}: {_short(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TranscriptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stored_final(m: Any) -> StoredFinal:
    return StoredFinal(
        final=FinalTranscript(
            session_id=m["session_id"],
            channel=m["channel"],
            role=m["role"],
            utterance=m["utterance"],
            revision=m["revision"],
            text=m["text"],
            start_ms=m["start_ms"],
            end_ms=m["end_ms"],
            confidence=m["confidence"],
            error=m["error"],
            timestamps=dict(m["timestamps"] or {}),
            summary=m["summary"],
            degraded=bool(m["degraded"]),
            reason=m["reason"],
        ),
        stored_at_us=m["stored_at_us"],
    )


def _latency_record(m: Any) -> LatencyRecord:
    return LatencyRecord(
        session_id=m["session_id"],
        channel=m["channel"],
        utterance=m["utterance"],
        stages_ms={s: m[f"{s}_ms"] for s in STAGES if m[f"{s}_ms"] is not None},
        end_to_end_ms=m["end_to_end_ms"],
        clamped=[c for c in (m["clamped"] or "").split(",") if c],
    )


def _is_race(exc: SQLAlchemyError) -> bool:
    """A concurrent schema creation: duplicate row/table/type, or SQLite busy/locked."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("unique", "duplicate", "already exists", "locked", "busy"))


def _short(exc: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
