"""The conversation view: a session's finals merged across channels by stream time.

Lines are ordered by ``(start_ms, channel, utterance)`` (stream time counts from the
session's first sample, the same origin on every channel). Formats: ``text``
(``[MM:SS] agent: hello``; minutes keep counting past 59), ``json`` (one object) and
``srt`` (subtitles, the role as speaker prefix).

Talk statistics come from the utterance intervals ``[start_ms, end_ms)``:

- talk time per channel: the length of the union of the channel's intervals;
- overtalk: the time at least two channels speak at once;
- silence: the time no channel speaks, over ``[0, last end_ms]``.

So ``sum(talk) - overtalk == span - silence`` for two channels.

Example::

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> def fin(ch, u, a, b, text):
    ...     return FinalTranscript(session_id="s", channel=ch, role=("agent", "customer")[ch],
    ...                            utterance=u, revision=1, text=text, start_ms=a, end_ms=b)
    >>> conv = Conversation.from_finals("s", [fin(1, 0, 7500, 9000, "hi"),
    ...                                      fin(0, 0, 0, 8000, "hello")])
    >>> print(conv.to_text())
    [00:00] agent: hello
    [00:07] customer: hi
    >>> conv.stats().overtalk_ms, conv.stats().silence_ms
    (500.0, 0.0)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from streamscribe.consumers.store import SessionInfo, TranscriptStore
from streamscribe.core.errors import SinkError
from streamscribe.schemas.transcripts import FinalTranscript

FORMATS: Final = ("text", "json", "srt")


@dataclass(frozen=True)
class Line:
    """One final in the merged conversation."""

    channel: int
    role: str
    utterance: int
    start_ms: float
    end_ms: float
    text: str
    confidence: float | None = None
    error: str | None = None
    revision: int = 0

    @property
    def shown_text(self) -> str:
        if self.text:
            return self.text
        return f"[{self.error}]" if self.error else ""


@dataclass(frozen=True)
class TalkStats:
    """Talk time per channel, overtalk and silence (ms) over ``[0, span_ms]``."""

    span_ms: float
    talk_ms: dict[int, float] = field(default_factory=dict)
    overtalk_ms: float = 0.0
    silence_ms: float = 0.0


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``[a, b)`` intervals (empty or reversed ones count 0).

    >>> union_length([(0, 5), (3, 8), (10, 12)])
    10.0
    """
    return float(sum(b - a for a, b in _merge(intervals)))


def talk_stats(intervals_by_channel: Mapping[int, Sequence[tuple[float, float]]]) -> TalkStats:
    """Talk per channel, overtalk (>= 2 channels at once) and silence (none) in ms.

    A sweep over the interval boundaries; each channel's own intervals are merged first
    so that a channel overlapping itself is not overtalk.
    """
    events: list[tuple[float, int]] = []
    talk: dict[int, float] = {}
    span = 0.0
    for ch, ivs in sorted(intervals_by_channel.items()):
        merged = _merge(ivs)
        talk[ch] = sum(b - a for a, b in merged)
        for a, b in merged:
            events += [(a, +1), (b, -1)]
            span = max(span, b)
    events.sort()
    overtalk = silence = 0.0
    active, prev = 0, 0.0
    for t, delta in events:
        t_clip = max(t, 0.0)
        if t_clip > prev:
            if active == 0:
                silence += t_clip - prev
            elif active >= 2:
                overtalk += t_clip - prev
            prev = t_clip
        active += delta
    return TalkStats(span_ms=span, talk_ms=talk, overtalk_ms=overtalk, silence_ms=silence)


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _clock(ms: float) -> str:
    """``[MM:SS]`` from stream ms, minutes not wrapped at 60."""
    s = int(max(ms, 0.0) // 1000)
    return f"{s // 60:02d}:{s % 60:02d}"


def _srt_time(ms: float) -> str:
    total = round(max(ms, 0.0))
    h, rest = divmod(total, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{milli:03d}"


@dataclass(frozen=True)
class Conversation:
    """A session's finals in stream-time order, with formats and talk statistics."""

    session_id: str
    lines: tuple[Line, ...]

    @classmethod
    def from_finals(cls, session_id: str, finals: Iterable[FinalTranscript]) -> Conversation:
        lines = sorted(
            (
                Line(
                    channel=f.channel,
                    role=f.role,
                    utterance=f.utterance,
                    start_ms=f.start_ms,
                    end_ms=f.end_ms,
                    text=f.text,
                    confidence=f.confidence,
                    error=f.error,
                    revision=f.revision,
                )
                for f in finals
            ),
            key=lambda ln: (ln.start_ms, ln.channel, ln.utterance),
        )
        return cls(session_id, tuple(lines))

    def stats(self) -> TalkStats:
        by_ch: dict[int, list[tuple[float, float]]] = {}
        for ln in self.lines:
            by_ch.setdefault(ln.channel, []).append((ln.start_ms, ln.end_ms))
        return talk_stats(by_ch)

    def to_text(self, *, with_stats: bool = False) -> str:
        out = [f"[{_clock(ln.start_ms)}] {ln.role}: {ln.shown_text}" for ln in self.lines]
        if with_stats:
            st = self.stats()
            roles = {ln.channel: ln.role for ln in self.lines}
            talk = ", ".join(
                f"{roles.get(ch, ch)} {ms / 1000:.1f} s" for ch, ms in sorted(st.talk_ms.items())
            )
            out.append(
                f"# talk: {talk}; overtalk {st.overtalk_ms / 1000:.1f} s; "
                f"silence {st.silence_ms / 1000:.1f} s; span {st.span_ms / 1000:.1f} s"
            )
        return "\n".join(out)

    def to_srt(self) -> str:
        blocks = [
            f"{i}\n{_srt_time(ln.start_ms)} --> {_srt_time(ln.end_ms)}\n"
            f"{ln.role}: {ln.shown_text}\n"
            for i, ln in enumerate(self.lines, start=1)
        ]
        return "\n".join(blocks)

    def to_dict(self) -> dict[str, Any]:
        st = self.stats()
        return {
            "session_id": self.session_id,
            "lines": [asdict(ln) for ln in self.lines],
            "talk_ms": {str(ch): v for ch, v in sorted(st.talk_ms.items())},
            "overtalk_ms": st.overtalk_ms,
            "silence_ms": st.silence_ms,
            "span_ms": st.span_ms,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def render(self, fmt: str) -> str:
        if fmt == "text":
            return self.to_text(with_stats=True)
        if fmt == "json":
            return self.to_json()
        if fmt == "srt":
            return self.to_srt()
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def load_conversation(store: TranscriptStore, session_id: str) -> Conversation:
    """The stored session as a :class:`Conversation`; :class:`SinkError` if unknown."""
    finals = [row.final for row in store.finals(session_id)]
    if not finals and store.session(session_id) is None:
        raise SinkError(f"unknown session {session_id!r}")
    return Conversation.from_finals(session_id, finals)


def list_sessions(store: TranscriptStore, limit: int | None = 50) -> list[SessionInfo]:
    """The most recently seen sessions first (for ``streamscribe sessions``)."""
    return store.sessions(limit=limit)
