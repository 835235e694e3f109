"""The voice assistant's pure core: transcript events in, command events out.

Per channel of a session (no Kafka here; :mod:`.assistant` is the edge):

- **partials** arm a line: the wake phrase heard in a partial marks the line (and where
  in stream time it was heard); if the line is still not final ``timeout_ms`` of audio
  later, the command is taken from its latest partial (``source = "timeout"``);
- a **final** ends the line: the wake phrase is looked for in its text (a line armed by
  its partials but whose final lost the wake words takes all its words as the command),
  and the words after it are the command;
- a final that is *only* the wake phrase (the speaker paused after it, and the segmenter
  cut there) arms the channel: the next final of the channel that starts within
  ``timeout_ms`` of it is the command;
- the command's words are matched against the intents (:class:`IntentMatcher`); at
  ``intent_threshold`` or better, one :class:`CommandEvent` is emitted, at most once per
  ``(session, channel, utterance)`` — the utterance of the line where the command ended.

Confidence is the wake score times the intent score (both 0-1). All of a session's state
is one :class:`SessionState` (armed lines, waiting channels, the lines decided), so the
edge can write it whole to a changelog (:meth:`AssistantCore.changed`) and read it back
after a restart (:meth:`AssistantCore.restore`). Memory is bounded: a line's marks go
with its final, each session remembers its last :data:`MAX_DONE_PER_SESSION` decided
lines, and the core the last :data:`MAX_SESSIONS` sessions.

Example::

    >>> from streamscribe.consumers.assistant_intents import IntentMatcher, parse_intents
    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> core = AssistantCore(IntentMatcher(parse_intents({"call": ["call {person}"]})))
    >>> f = FinalTranscript(session_id="s", channel=0, role="", utterance=0, revision=1,
    ...                     text="Hey scribe, call the supervisor.", start_ms=0, end_ms=2000)
    >>> [(c.intent, c.slots, c.text) for c in core.accept(f, now_us=1)]
    [('call', {'person': 'the supervisor'}, 'call the supervisor')]
    >>> core.accept(f, now_us=2)  # the same line again (a replay): nothing new
    []
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from streamscribe.consumers.assistant_intents import IntentMatcher, words_of
from streamscribe.consumers.assistant_wake import DEFAULT_THRESHOLD, DEFAULT_WAKE, WakeDetector
from streamscribe.schemas.commands import (
    SOURCE_FINAL,
    SOURCE_TIMEOUT,
    AssistantState,
    CommandEvent,
    WakeMark,
)
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 5000.0
DEFAULT_INTENT_THRESHOLD: Final = 0.7
MAX_SESSIONS: Final = 100_000  # sessions whose state is kept in memory (least recent go)
COMMAND_AT: Final = "command_at_us"

MAX_DONE_PER_SESSION: Final = 64  # decided lines remembered per session (replays dedupe)


@dataclass(frozen=True)
class AssistantConfig:
    """The knobs of :class:`AssistantCore` (settings ``STREAMSCRIBE_ASSISTANT_*``)."""

    wake: str = DEFAULT_WAKE
    wake_threshold: float = DEFAULT_THRESHOLD
    intent_threshold: float = DEFAULT_INTENT_THRESHOLD
    timeout_ms: float = DEFAULT_TIMEOUT_MS


@dataclass
class _Armed:
    """A wake phrase heard: in a line's partial, or as a whole final of its own."""

    wake_score: float
    wake_heard: str
    at_ms: float  # stream time it was heard (the partial's or the wake line's end)
    transcript: str = ""  # the wake-only line's text
    utterance: int = 0  # the line it was heard in


@dataclass
class SessionState:
    """One session's state: every key of it lives here (and goes to the changelog whole).

    ``lines``: (channel, utterance) armed by a partial; ``waiting``: channel → its
    wake-only line; ``done``: the (channel, utterance) lines decided, oldest first.
    """

    lines: dict[tuple[int, int], _Armed] = field(default_factory=dict)
    waiting: dict[int, _Armed] = field(default_factory=dict)
    done: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)

    def remember(self, line: tuple[int, int]) -> None:
        self.done[line] = None
        self.done.move_to_end(line)
        while len(self.done) > MAX_DONE_PER_SESSION:
            self.done.popitem(last=False)

    def to_record(self, session_id: str) -> AssistantState:
        def mark(channel: int, utterance: int, a: _Armed) -> WakeMark:
            return WakeMark(channel, utterance, a.wake_score, a.wake_heard, a.at_ms, a.transcript)

        return AssistantState(
            session_id=session_id,
            lines=tuple(mark(c, u, a) for (c, u), a in sorted(self.lines.items())),
            waiting=tuple(mark(c, a.utterance, a) for c, a in sorted(self.waiting.items())),
            done=tuple(self.done),
        )

    @classmethod
    def from_record(cls, record: AssistantState) -> SessionState:
        def armed(m: WakeMark) -> _Armed:
            return _Armed(m.wake_score, m.wake_heard, m.at_ms, m.transcript, m.utterance)

        return cls(
            lines={(m.channel, m.utterance): armed(m) for m in record.lines},
            waiting={m.channel: armed(m) for m in record.waiting},
            done=OrderedDict.fromkeys(record.done),
        )


@dataclass
class AssistantCounts:
    """What the core saw: lines with a wake phrase, commands, unmatched commands."""

    wakes: int = 0
    commands: int = 0
    unmatched: int = 0
    replays: int = 0
    unmatched_texts: list[str] = field(default_factory=list)


class AssistantCore:
    """Transcript events → command events (see the module docstring).

    State is one :class:`SessionState` per session; :meth:`changed` hands the records of
    the sessions changed since its last call to the edge (for the changelog), and
    :meth:`restore` puts records read back from it in place before any transcript.
    """

    def __init__(self, matcher: IntentMatcher, config: AssistantConfig | None = None) -> None:
        self.config = config or AssistantConfig()
        self.matcher = matcher
        self.wake = WakeDetector(self.config.wake, self.config.wake_threshold)
        self.counts = AssistantCounts()
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()
        self._changed: dict[str, None] = {}

    def accept(self, event: TranscriptEvent, *, now_us: int) -> list[CommandEvent]:
        """The commands ``event`` completes (none, or one)."""
        state = self._session(event.session_id)
        line = (event.channel, event.utterance)
        if line in state.done:
            self.counts.replays += 1
            return []
        if isinstance(event, PartialTranscript):
            return self._partial(state, line, event, now_us)
        assert isinstance(event, FinalTranscript)
        return self._final(state, line, event, now_us)

    def changed(self) -> list[AssistantState]:
        """The state records of the sessions changed since the last call (then forgotten)."""
        ids, self._changed = list(self._changed), {}
        return [self._sessions[s].to_record(s) for s in ids if s in self._sessions]

    def restore(self, records: Iterable[AssistantState]) -> int:
        """Take the sessions' states read back from the changelog; returns how many."""
        n = 0
        for record in records:
            self._sessions[record.session_id] = SessionState.from_record(record)
            self._sessions.move_to_end(record.session_id)
            n += 1
        self._evict()
        return n

    def state_of(self, session_id: str) -> AssistantState | None:
        state = self._sessions.get(session_id)
        return None if state is None else state.to_record(session_id)

    def _session(self, session_id: str) -> SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = SessionState()
            self._evict()
        else:
            self._sessions.move_to_end(session_id)
        return state

    def _evict(self) -> None:
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    # ------------------------------------------------------------------------ steps
    def _partial(
        self, state: SessionState, line: tuple[int, int], p: PartialTranscript, now_us: int
    ) -> list[CommandEvent]:
        words = words_of(p.text)
        armed = state.lines.get(line)
        hit = self.wake.find(words)
        if armed is None:
            if hit is None:
                return []
            armed = state.lines[line] = _Armed(
                hit.score / 100.0, hit.heard, p.end_ms, utterance=p.utterance
            )
            self._changed[p.session_id] = None
            self.counts.wakes += 1
        if p.end_ms - armed.at_ms < self.config.timeout_ms:
            return []
        command = words[hit.end :] if hit is not None else words
        if not command:
            return []
        return self._emit(state, line, p, command, armed, p.text, SOURCE_TIMEOUT, now_us)

    def _final(
        self, state: SessionState, line: tuple[int, int], f: FinalTranscript, now_us: int
    ) -> list[CommandEvent]:
        words = words_of(f.text)
        armed = state.lines.pop(line, None)
        waiting = state.waiting.get(f.channel)
        if waiting is not None and f.utterance > waiting.utterance:
            del state.waiting[f.channel]  # the line after the wake-only one decides
        else:
            waiting = None  # an earlier line (a late duplicate) leaves the wait as it is
        hit = self.wake.find(words)
        if hit is not None:
            if armed is None:
                self.counts.wakes += 1
            armed = _Armed(hit.score / 100.0, hit.heard, f.end_ms, utterance=f.utterance)
            command = words[hit.end :]
            if not command:  # a wake-only line: the next line is the command
                armed.transcript = f.text
                state.waiting[f.channel] = armed
                self._decided(state, line, f.session_id)
                return []
            return self._emit(state, line, f, command, armed, f.text, SOURCE_FINAL, now_us)
        if armed is not None and words:  # wake words heard in partials, lost in the final
            return self._emit(state, line, f, words, armed, f.text, SOURCE_FINAL, now_us)
        if waiting is not None and words and f.start_ms - waiting.at_ms <= self.config.timeout_ms:
            text = f"{waiting.transcript} {f.text}".strip()
            return self._emit(state, line, f, words, waiting, text, SOURCE_FINAL, now_us)
        if armed is not None or waiting is not None:  # a mark ended without a command
            self._decided(state, line, f.session_id)
        return []  # a line with no wake phrase and nothing armed changes nothing

    def _decided(self, state: SessionState, line: tuple[int, int], session_id: str) -> None:
        state.remember(line)
        self._changed[session_id] = None

    def _emit(
        self,
        state: SessionState,
        line: tuple[int, int],
        event: TranscriptEvent,
        command: list[str],
        armed: _Armed,
        transcript: str,
        source: str,
        now_us: int,
    ) -> list[CommandEvent]:
        state.lines.pop(line, None)
        self._decided(state, line, event.session_id)
        text = " ".join(command)
        match = self.matcher.match(command)
        if match is None or match.score < self.config.intent_threshold:
            self.counts.unmatched += 1
            self.counts.unmatched_texts = [*self.counts.unmatched_texts[-9:], text]
            log.debug(  # transcript words: never at the default levels (personal data)
                "no intent for %r (best %s %.2f)",
                text,
                match.intent if match else None,
                match.score if match else 0.0,
            )
            return []
        self.counts.commands += 1
        return [
            CommandEvent(
                session_id=event.session_id,
                channel=event.channel,
                role=event.role,
                utterance=event.utterance,
                intent=match.intent,
                slots=match.slots,
                text=text,
                confidence=round(armed.wake_score * match.score, 4),
                start_ms=event.start_ms,
                end_ms=event.end_ms,
                transcript=transcript,
                example=match.example,
                wake_heard=armed.wake_heard,
                wake_score=round(armed.wake_score, 4),
                intent_score=round(match.score, 4),
                source=source,
                timestamps={**event.timestamps, COMMAND_AT: now_us},
            )
        ]
