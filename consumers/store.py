"""The transcript store: SQLAlchemy Core on SQLite or PostgreSQL, no Kafka.

URLs: ``sqlite:///path/to/transcripts.db`` (the default, ``Settings.db_url``) or
``postgresql+psycopg://user@host:5432/db``. The store creates its own schema and migrates
an older one (the tables, versions and migrations: :mod:`streamscribe.consumers.store_schema`).

Which final wins is the rule of :func:`~streamscribe.consumers.store_rows.supersedes`
(published later wins; without a publish time, the higher revision). It is applied twice:
the stored state of the batch's sessions is read first so that only winning lines are
sent, and the dialect's ``INSERT .. ON CONFLICT DO UPDATE .. WHERE <stored loses>`` guards
against a concurrent writer. So a duplicate or replay changes nothing, not even
``stored_at_us``. Within one batch the latest published final of a line wins (the first
one seen on a tie). Partials keep the highest revision of a line that has no final; a
partial of a line already final is ignored. Sessions, channels and latency rows are
touched only for events actually written. Every call of :meth:`TranscriptStore.write` is
one transaction; :meth:`~TranscriptStore.write_batched` bounds the events per transaction.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from streamscribe.consumers.latency import LIVE, origin_class, stage_latencies
from streamscribe.consumers.store_rows import (
    LineKey,
    SessionInfo,
    StoredFinal,
    WriteResult,
    dedupe,
    final_row,
    final_wins,
    latency_record,
    latency_row,
    line_key,
    partial_row,
    partial_wins,
    published_at,
    session_info,
    stored_final,
    stored_partial,
    supersedes,
)
from streamscribe.consumers.store_schema import (
    HISTORY_KEY_COLUMNS,
    KEY_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    channels,
    check_url,
    ensure_schema,
    latency,
    latency_history,
    metadata,
    open_engine,
    partials,
    schema_version,
    sessions,
    short_error,
    utterances,
)
from streamscribe.core.errors import SinkError
from streamscribe.schemas.events import LatencyRecord, now_us
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent

log = logging.getLogger(__name__)

_Row = TypeVar("_Row")


class TranscriptStore:
    """Finals, partials, sessions and latency in one SQL database (see the module doc).

    ``create=False`` refuses a SQLite file that does not exist (for read-only commands).
    ``live_group`` is the live pipeline's processor group (``Settings.group_id``): the
    latency of a final of another origin (a re-transcription group) goes to
    ``latency_history`` and leaves the live row alone; None = every final is live.
    """

    def __init__(
        self, url: str, *, create: bool = True, echo: bool = False, live_group: str | None = None
    ) -> None:
        parsed = check_url(url, create=create)
        self.url = url
        self.live_group = live_group
        self.dialect = parsed.get_backend_name()
        self.engine: Engine = open_engine(parsed, echo=echo)
        ensure_schema(self.engine, self.safe_url)

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
        finals = dedupe((e for e in events if isinstance(e, FinalTranscript)), final_wins)
        parts = dedupe(
            (e for e in events if isinstance(e, PartialTranscript) and line_key(e) not in finals),
            partial_wins,
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
            raise SinkError(f"database write failed ({self.dialect}): {short_error(exc)}") from exc
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
            if line_key(f) not in have
            or supersedes(published_at(f), f.revision, *have[line_key(f)])
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
            self._upsert(conn, utterances, stmt, stored_loses, [final_row(f, at) for f in newer])
        return [line_key(f) for f in newer]

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
        newer = [
            e
            for e in parts
            if line_key(e) not in finished and have.get(line_key(e), -1) < e.revision
        ]
        if newer:
            stmt = self._insert(partials)
            guard = p.revision < stmt.excluded.revision
            self._upsert(conn, partials, stmt, guard, [partial_row(e, at) for e in newer])
        return [line_key(e) for e in newer]

    @staticmethod
    def _upsert(
        conn: Connection, table: sa.Table, stmt: Any, where: Any, rows: list[dict[str, Any]]
    ) -> None:
        update = {c.name: stmt.excluded[c.name] for c in table.c if c.name not in KEY_COLUMNS}
        conn.execute(
            stmt.on_conflict_do_update(index_elements=list(KEY_COLUMNS), set_=update, where=where),
            rows,
        )

    def _write_latency(self, conn: Connection, finals: list[FinalTranscript], at: int) -> None:
        """The latency rows of the finals written: live ones in ``latency``, those of a
        re-transcription group in ``latency_history`` under their origin (both kept)."""
        live = [f for f in finals if self._is_live(f)]
        history = [f for f in finals if not self._is_live(f)]
        self._upsert_latency(conn, latency, KEY_COLUMNS, live, at)
        self._upsert_latency(conn, latency_history, HISTORY_KEY_COLUMNS, history, at)

    def _is_live(self, f: FinalTranscript) -> bool:
        return self.live_group is None or origin_class(f.origin, self.live_group) == LIVE

    def _upsert_latency(
        self,
        conn: Connection,
        table: sa.Table,
        key: tuple[str, ...],
        finals: list[FinalTranscript],
        at: int,
    ) -> None:
        rows, missing = [], []
        for f in finals:
            rec = stage_latencies(
                f.session_id, f.channel, f.utterance, f.timestamps, stored_at_us=at
            )
            extra = {"origin": f.origin or ""} if "origin" in key else {}
            if rec is None:
                missing.append((*line_key(f), *extra.values()))
            else:
                rows.append(latency_row(rec, f.revision, at) | extra)
        if rows:
            stmt = self._insert(table)
            update = {c.name: stmt.excluded[c.name] for c in table.c if c.name not in key}
            conn.execute(stmt.on_conflict_do_update(index_elements=list(key), set_=update), rows)
        if missing:  # a final again, without timestamps: drop the stale figures of its origin
            columns = [table.c[name] for name in key]
            conn.execute(table.delete().where(sa.tuple_(*columns).in_(missing)))

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

    # --------------------------------------------------------------- erasing
    def forget(self, session_id: str) -> dict[str, int]:
        """Delete every row of ``session_id`` in ONE transaction; rows deleted per table.

        The session's finals, partials, latency rows (live and re-transcribed history), channels
        and its sessions row (the
        key is the exact id: ``call-1`` never touches ``call-10``). A session that is
        unknown deletes nothing (all counts 0). Raises :class:`SinkError` if it fails.

        >>> from streamscribe.schemas.transcripts import FinalTranscript
        >>> store = TranscriptStore("sqlite://")
        >>> for s in ("call-1", "call-10"):
        ...     _ = store.write([FinalTranscript(session_id=s, channel=0, role="agent",
        ...                      utterance=0, revision=1, text="hi", start_ms=0.0, end_ms=9.0)])
        >>> sorted((t, n) for t, n in store.forget("call-1").items() if n)
        [('channels', 1), ('sessions', 1), ('utterances', 1)]
        >>> [s.session_id for s in store.sessions()]
        ['call-10']
        """
        removed: dict[str, int] = {}
        try:
            with self.engine.begin() as conn:
                for table in (utterances, partials, latency, latency_history, channels, sessions):
                    done = conn.execute(table.delete().where(table.c.session_id == session_id))
                    removed[table.name] = int(done.rowcount or 0)
        except SQLAlchemyError as exc:
            raise SinkError(f"database delete failed ({self.dialect}): {short_error(exc)}") from exc
        return removed

    # ---------------------------------------------------------------- reading
    def finals(self, session_id: str) -> list[StoredFinal]:
        """A session's finals ordered by stream time (start, channel, utterance)."""
        return self._lines(utterances, session_id, stored_final)

    def partials(self, session_id: str) -> list[PartialTranscript]:
        """The latest partial of each line of the session that has no final yet."""
        return self._lines(partials, session_id, stored_partial)

    def _lines(
        self, table: sa.Table, session_id: str, from_row: Callable[[Mapping[Any, Any]], _Row]
    ) -> list[_Row]:
        """A session's rows of a per-line table, ordered by (start, channel, utterance)."""
        c = table.c
        q = (
            sa.select(table)
            .where(c.session_id == session_id)
            .order_by(c.start_ms, c.channel, c.utterance)
        )
        with self._reading() as conn:
            return [from_row(row._mapping) for row in conn.execute(q)]

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
            return [session_info(row._mapping) for row in conn.execute(q)]

    def session(self, session_id: str) -> SessionInfo | None:
        found = self.sessions(limit=1, session_id=session_id)
        return found[0] if found else None

    def latency_records(
        self, since_us: int | None = None, *, origin: str = LIVE
    ) -> list[LatencyRecord]:
        """Stored latency records (computed at write time), optionally stored since a time:
        the live pipeline's (``origin="live"``) or the re-transcriptions' (``"history"``)."""
        table = latency if origin == LIVE else latency_history
        q = sa.select(table).order_by(table.c.stored_at_us)
        if since_us is not None:
            q = q.where(table.c.stored_at_us >= since_us)
        with self._reading() as conn:
            return [latency_record(row._mapping) for row in conn.execute(q)]

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
            raise SinkError(f"cannot read {self.safe_url}: {short_error(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TranscriptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SessionInfo",
    "StoredFinal",
    "TranscriptStore",
    "WriteResult",
    "channels",
    "latency",
    "metadata",
    "partials",
    "schema_version",
    "sessions",
    "supersedes",
    "utterances",
]
