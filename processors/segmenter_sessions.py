"""The segmenter agent's per-message logic, without faust: what the thin agent loop calls.

- :func:`parse_arrival`: a raw ``streamscribe.audio`` record -> :class:`Arrival` (the Avro
  ``AudioChunk`` decoded, its key checked against the session id, latency stamps taken);
  the payload is *not* decoded here — the stage core admits it once;
- :class:`ChannelStates`: the channels' :class:`ChannelState` objects kept in memory
  between batches, each with the partition that owns it. The ``segmenter-channels`` table
  holds only their changelog copies (the full state after every batch, so crash recovery is
  exact); on a partition revoke its states are dropped, and a miss is rebuilt from the table;
- the ``segmenter-sessions`` table's documents (``{"p": partition, "last": epoch s,
  "channels": [live channels], "ended": [channels done]}``), as pure functions:
  :func:`touch_session` (a live channel was seen; written at most every
  :data:`SESSION_TOUCH_EVERY_S` unless its channels changed), :func:`end_channel` (a
  channel's done marker; the session is deleted with its last channel) and
  :func:`idle_sessions` (which sessions of a partition a tick finalises);
- the ``segmenter-ended`` table's end markers (:class:`~streamscribe.processors.
  stream_segmenter.EndedChannel` documents): kept :data:`ENDED_KEPT_S` after a channel
  ended, so that its late chunks and a reuse of its session id are refused rather than
  starting a second run over the first one's utterance numbers; :func:`expired_markers`
  says which a tick deletes.

Example::

    >>> doc = touch_session(None, channel=0, partition=2, now=100.0, live=True)
    >>> doc
    {'p': 2, 'last': 100.0, 'channels': [0], 'ended': []}
    >>> touch_session(doc, channel=0, partition=2, now=100.5, live=True) is None  # fresh
    True
    >>> idle_sessions([("s1", doc)], partition=2, deadline=101.0)
    [('s1', [0])]
    >>> end_channel(doc, 0) is None  # the last channel ended: delete the session
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from streamscribe.core.errors import ContractError
from streamscribe.processors.stream_segmenter import Arrival, ChannelKey, ChannelState, Stamps
from streamscribe.schemas.audio import AudioChunk

SESSION_TOUCH_EVERY_S: Final = 1.0  # how often a live session's "last seen" is written
US_PER_S: Final = 1_000_000
# How long an ended channel's marker is kept (late chunks and a reused id are refused
# meanwhile); after it, a chunk under that id starts a new stream.
ENDED_KEPT_S: Final = 7 * 24 * 3600.0

SessionDoc = dict[str, Any]


def parse_arrival(
    value: bytes,
    key: bytes | None,
    timestamp_s: float | None,
    received_us: int,
    ref: Any = None,
    offset: int = -1,
) -> Arrival:
    """Decode one audio record; :class:`ContractError` if it is not an ``AudioChunk`` of its key
    (or its session id is empty: no sink could store it).

    ``timestamp_s`` is the broker's timestamp (``received_us`` stands in when there is none);
    ``offset`` is the record's offset in its partition (what tells a replay from a late chunk).
    """
    chunk = AudioChunk.decode(value)
    if not chunk.session_id:
        raise ContractError("empty session id", raw=value)
    text = key.decode("utf-8", "replace") if key is not None else None
    if text != chunk.session_id:
        raise ContractError(
            f"message key {text!r} is not the chunk's session id {chunk.session_id!r}", raw=value
        )
    broker_us = int(timestamp_s * US_PER_S) if timestamp_s else received_us
    return Arrival(chunk, Stamps(chunk.captured_at_us, broker_us, received_us), ref, offset)


@dataclass
class _Held:
    partition: int
    state: ChannelState
    saved_at: float = float("-inf")  # when its changelog copy was last written
    unsaved: list[Any] = field(default_factory=list)  # events its copy does not cover yet


class ChannelStates:
    """In-memory channel states by key, each with the partition that owns it.

    A state's changelog copy may lag its in-memory object (the segmenter writes it at most
    every ``segmenter_checkpoint_s``); the events it does not cover yet are kept with it,
    unacked, and handed back by :meth:`saved` once a copy covering them is written.
    """

    def __init__(self) -> None:
        self._held: dict[ChannelKey, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def session_count(self) -> int:
        """Sessions with at least one channel state held: the live sessions of this worker."""
        return len({key.session_id for key in self._held.copy()})  # one atomic copy

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def get(self, key: ChannelKey) -> ChannelState | None:
        """The state in memory, or None (then rebuild it from the table)."""
        held = self._held.get(key)
        return held.state if held is not None else None

    def put(self, key: ChannelKey, partition: int, state: ChannelState) -> None:
        """Keep ``state`` (its changelog copy is written by the caller)."""
        old = self._held.get(key)
        if old is None:
            self._held[key] = _Held(partition, state)
        else:
            old.partition, old.state = partition, state

    def save_due(self, key: ChannelKey, now: float, every_s: float) -> bool:
        """Whether ``key``'s changelog copy is due (never written, or ``every_s`` old)."""
        held = self._held.get(key)
        return held is None or every_s <= 0 or now - held.saved_at >= every_s

    def hold(self, key: ChannelKey, events: Iterable[Any]) -> None:
        """Keep ``events`` (already applied to the in-memory state) until a copy covers them."""
        self._held[key].unsaved.extend(events)

    def saved(self, key: ChannelKey, now: float) -> list[Any]:
        """Note that a copy of the state was written now; the events it covers from now on."""
        held = self._held.get(key)
        if held is None:
            return []
        held.saved_at = now
        events, held.unsaved = held.unsaved, []
        return events

    def drop(self, key: ChannelKey) -> list[Any]:
        """Forget ``key``'s state (ended, failed, or no longer trusted); its held events."""
        held = self._held.pop(key, None)
        return held.unsaved if held is not None else []

    def unsaved(self, partitions: Iterable[int]) -> list[tuple[ChannelKey, ChannelState, Any]]:
        """The states of ``partitions`` whose copy lags them, each with its last held event."""
        gone = set(partitions)
        return [
            (k, h.state, h.unsaved[-1])
            for k, h in self._held.items()
            if h.partition in gone and h.unsaved
        ]

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the states of ``partitions`` (revoked), and their held events unacked: after
        a rebalance faust reads every partition again from its committed offset, which a held
        event keeps at or before it. Returns how many states were dropped."""
        gone = set(partitions)
        keys = [k for k, h in self._held.items() if h.partition in gone]
        for k in keys:
            del self._held[k]
        return len(keys)


def touch_session(
    doc: Mapping[str, Any] | None, channel: int, partition: int, now: float, live: bool
) -> SessionDoc | None:
    """The session's new document after a batch saw ``channel``; None = nothing to write.

    ``live``: the channel still has a state (False when it ended in this very batch).
    """
    new = dict(doc or {})
    if not new and not live:
        return None  # the session already ended in this batch
    chans = set(new.get("channels", [])) | {channel}
    chans -= set(new.get("ended", []))
    if not chans and new:
        return None
    fresh = now - new.get("last", 0) < SESSION_TOUCH_EVERY_S
    if new and fresh and sorted(chans) == new.get("channels"):
        return None  # nothing new to remember; keeps the changelog small
    new.update(p=partition, last=now, channels=sorted(chans))
    new.setdefault("ended", [])
    return new


def end_channel(doc: Mapping[str, Any] | None, channel: int) -> SessionDoc | None:
    """The session's document once ``channel`` is done; None = delete the session."""
    new = dict(doc or {"channels": [], "ended": []})
    ended = sorted(set(new.get("ended", [])) | {channel})
    remaining = [c for c in new.get("channels", []) if c not in ended]
    if not remaining:
        return None
    new.update(ended=ended, channels=remaining)
    return new


def idle_sessions(
    items: Iterable[tuple[str, Mapping[str, Any] | None]], partition: int, deadline: float
) -> list[tuple[str, list[int]]]:
    """Sessions of ``partition`` last seen before ``deadline``, with their live channels."""
    return [
        (sid, [int(c) for c in doc.get("channels", [])])
        for sid, doc in items
        if doc and doc.get("p") == partition and doc.get("last", 0) < deadline
    ]


def expired_markers(
    items: Iterable[tuple[str, Mapping[str, Any] | None]], partition: int, deadline: float
) -> list[str]:
    """Keys of ``partition``'s end markers written before ``deadline`` (to delete).

    >>> expired_markers([("a#0", {"p": 1, "at": 5.0}), ("b#0", {"p": 1, "at": 50.0})], 1, 10.0)
    ['a#0']
    """
    return [
        key
        for key, doc in items
        if doc and doc.get("p") == partition and float(doc.get("at", 0)) < deadline
    ]
