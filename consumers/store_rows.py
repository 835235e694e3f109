"""The transcript store's rows: events to rows and back, and which event of a line wins.

Which final wins (:func:`supersedes`): a final replaces the stored row of its line
``(session_id, channel, utterance)`` when it was **published later** — its
``timestamps["published_at_us"]`` (kept in the ``published_at_us`` column) is greater
than the stored one; when either side lacks that timestamp, a higher ``revision`` wins.
So a duplicate or replay of the same event (same publish time) changes nothing; an older
event arriving late changes nothing; a re-transcription (same keys, revisions that need
not be higher, later publish times) updates the row. Within one batch the latest
published final of a line wins, the first one seen on a tie (:func:`dedupe`). Partials
keep the highest revision.

Example::

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> f = FinalTranscript(session_id="s", channel=0, role="agent", utterance=1,
    ...                     revision=1, text="hi", start_ms=0.0, end_ms=5.0)
    >>> stored_final(final_row(f, stored_at_us=7)) == StoredFinal(f, 7)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from streamscribe.consumers.latency import STAGES
from streamscribe.consumers.store_schema import PUBLISHED_AT
from streamscribe.schemas.events import LatencyRecord
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent

LineKey = tuple[str, int, int]

#: Columns of ``utterances`` that are fields of :class:`FinalTranscript` as they are.
FINAL_FIELDS: Final = (
    "session_id", "channel", "utterance", "role", "text", "start_ms", "end_ms", "confidence",
    "error", "revision", "reason", "degraded", "summary",
)  # fmt: skip
#: Columns of ``partials`` that are fields of :class:`PartialTranscript` as they are.
PARTIAL_FIELDS: Final = (
    "session_id", "channel", "utterance", "role", "revision", "text", "stable_text",
    "start_ms", "end_ms",
)  # fmt: skip


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


# ------------------------------------------------------------------------ which wins
_Ev = TypeVar("_Ev", FinalTranscript, PartialTranscript)


def line_key(e: TranscriptEvent) -> LineKey:
    return (e.session_id, e.channel, e.utterance)


def published_at(e: TranscriptEvent) -> int | None:
    t = e.timestamps.get(PUBLISHED_AT)
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


def final_wins(new: FinalTranscript, old: FinalTranscript) -> bool:
    return supersedes(published_at(new), new.revision, published_at(old), old.revision)


def partial_wins(new: PartialTranscript, old: PartialTranscript) -> bool:
    return new.revision > old.revision


def dedupe(events: Iterable[_Ev], wins: Callable[[_Ev, _Ev], bool]) -> dict[LineKey, _Ev]:
    """The winning event per line; the first one seen wins a tie."""
    best: dict[LineKey, _Ev] = {}
    for ev in events:
        k = line_key(ev)
        cur = best.get(k)
        if cur is None or wins(ev, cur):
            best[k] = ev
    return best


# ------------------------------------------------------------------------- to rows
def final_row(f: FinalTranscript, stored_at_us: int) -> dict[str, Any]:
    """The ``utterances`` row of a final."""
    row = {name: getattr(f, name) for name in FINAL_FIELDS}
    row.update(timestamps=dict(f.timestamps), stored_at_us=stored_at_us)
    row[PUBLISHED_AT] = published_at(f)
    return row


def partial_row(p: PartialTranscript, at_us: int) -> dict[str, Any]:
    """The ``partials`` row of a partial."""
    row = {name: getattr(p, name) for name in PARTIAL_FIELDS}
    row["updated_at_us"] = at_us
    return row


def latency_row(rec: LatencyRecord, revision: int, stored_at_us: int) -> dict[str, Any]:
    """The ``latency`` row of a final's record (one ``<stage>_ms`` column per stage)."""
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


# ----------------------------------------------------------------------- from rows
def stored_final(m: Mapping[Any, Any]) -> StoredFinal:
    """A row of ``utterances`` as a final with its store time."""
    values = {name: m[name] for name in FINAL_FIELDS}
    values.update(timestamps=dict(m["timestamps"] or {}), degraded=bool(m["degraded"]))
    return StoredFinal(final=FinalTranscript(**values), stored_at_us=m["stored_at_us"])


def stored_partial(m: Mapping[Any, Any]) -> PartialTranscript:
    """A row of ``partials`` as the partial it stores."""
    return PartialTranscript(**{name: m[name] for name in PARTIAL_FIELDS})


def session_info(m: Mapping[Any, Any]) -> SessionInfo:
    """A row of ``sessions`` joined with its final count and last end time."""
    return SessionInfo(
        session_id=m["session_id"],
        first_seen_us=m["first_seen_us"],
        last_seen_us=m["last_seen_us"],
        channels=m["channels"],
        roles=dict(m["roles"] or {}),
        finals=int(m["finals"] or 0),
        end_ms=float(m["end_ms"] or 0.0),
    )


def latency_record(m: Mapping[Any, Any]) -> LatencyRecord:
    """A row of ``latency`` as the record it was computed from."""
    return LatencyRecord(
        session_id=m["session_id"],
        channel=m["channel"],
        utterance=m["utterance"],
        stages_ms={s: m[f"{s}_ms"] for s in STAGES if m[f"{s}_ms"] is not None},
        end_to_end_ms=m["end_to_end_ms"],
        clamped=[c for c in (m["clamped"] or "").split(",") if c],
    )
