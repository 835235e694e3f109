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

Confidence is the wake score times the intent score (both 0-1). Memory is bounded: a
line's state goes with its final, the remembered command ids are the last
:data:`MAX_REMEMBERED`.

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
from dataclasses import dataclass, field
from typing import Final

from streamscribe.consumers.assistant_intents import IntentMatcher, words_of
from streamscribe.consumers.assistant_wake import DEFAULT_THRESHOLD, DEFAULT_WAKE, WakeDetector
from streamscribe.schemas.commands import SOURCE_FINAL, SOURCE_TIMEOUT, CommandEvent
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, TranscriptEvent

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 5000.0
DEFAULT_INTENT_THRESHOLD: Final = 0.7
MAX_REMEMBERED: Final = 100_000
COMMAND_AT: Final = "command_at_us"

LineKey = tuple[str, int, int]
ChannelKey = tuple[str, int]


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


@dataclass
class AssistantCounts:
    """What the core saw: lines with a wake phrase, commands, unmatched commands."""

    wakes: int = 0
    commands: int = 0
    unmatched: int = 0
    replays: int = 0
    unmatched_texts: list[str] = field(default_factory=list)


class AssistantCore:
    """Transcript events → command events (see the module docstring)."""

    def __init__(self, matcher: IntentMatcher, config: AssistantConfig | None = None) -> None:
        self.config = config or AssistantConfig()
        self.matcher = matcher
        self.wake = WakeDetector(self.config.wake, self.config.wake_threshold)
        self.counts = AssistantCounts()
        self._lines: dict[LineKey, _Armed] = {}
        self._channels: dict[ChannelKey, _Armed] = {}
        self._done: OrderedDict[LineKey, None] = OrderedDict()

    def accept(self, event: TranscriptEvent, *, now_us: int) -> list[CommandEvent]:
        """The commands ``event`` completes (none, or one)."""
        key = (event.session_id, event.channel, event.utterance)
        if key in self._done:
            self.counts.replays += 1
            return []
        if isinstance(event, PartialTranscript):
            return self._partial(key, event, now_us)
        assert isinstance(event, FinalTranscript)
        return self._final(key, event, now_us)

    # ------------------------------------------------------------------------ steps
    def _partial(self, key: LineKey, p: PartialTranscript, now_us: int) -> list[CommandEvent]:
        words = words_of(p.text)
        armed = self._lines.get(key)
        hit = self.wake.find(words)
        if armed is None:
            if hit is None:
                return []
            armed = self._lines[key] = _Armed(hit.score / 100.0, hit.heard, p.end_ms)
            self.counts.wakes += 1
        if p.end_ms - armed.at_ms < self.config.timeout_ms:
            return []
        command = words[hit.end :] if hit is not None else words
        if not command:
            return []
        return self._emit(key, p, command, armed, p.text, SOURCE_TIMEOUT, now_us)

    def _final(self, key: LineKey, f: FinalTranscript, now_us: int) -> list[CommandEvent]:
        words = words_of(f.text)
        armed = self._lines.pop(key, None)
        channel = (f.session_id, f.channel)
        waiting = self._channels.pop(channel, None)
        hit = self.wake.find(words)
        if hit is not None:
            if armed is None:
                self.counts.wakes += 1
            armed = _Armed(hit.score / 100.0, hit.heard, f.end_ms)
            command = words[hit.end :]
            if not command:  # a wake-only line: the next line is the command
                armed.transcript = f.text
                self._channels[channel] = armed
                self._remember(key)
                return []
            return self._emit(key, f, command, armed, f.text, SOURCE_FINAL, now_us)
        if armed is not None and words:  # wake words heard in partials, lost in the final
            return self._emit(key, f, words, armed, f.text, SOURCE_FINAL, now_us)
        if waiting is not None and words and f.start_ms - waiting.at_ms <= self.config.timeout_ms:
            text = f"{waiting.transcript} {f.text}".strip()
            return self._emit(key, f, words, waiting, text, SOURCE_FINAL, now_us)
        self._remember(key)
        return []

    def _emit(
        self,
        key: LineKey,
        event: TranscriptEvent,
        command: list[str],
        armed: _Armed,
        transcript: str,
        source: str,
        now_us: int,
    ) -> list[CommandEvent]:
        self._lines.pop(key, None)
        self._remember(key)
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

    def _remember(self, key: LineKey) -> None:
        self._done[key] = None
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)
