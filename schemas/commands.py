"""Voice commands on ``streamscribe.commands``: ``CommandEvent`` JSON, key = session id.

Also the assistant's own session state (:class:`AssistantState`, JSON, key = session id) on
its compacted changelog topic :func:`assistant_state_topic` (one per consumer group, made
by the assistant at start as faust makes its tables' changelogs).

The voice-command consumer (``streamscribe assistant``) publishes one event per command it
heard: a wake phrase, then a command matched against an intents file. ``command_id``
(``session/channel/utterance`` of the line that ended the command) is the same for every
replay of that command: a reader dedupes on it (delivery is at least once).

Example::

    >>> c = CommandEvent(session_id="s", channel=0, role="caller", utterance=2,
    ...                  intent="set_timer", slots={"duration": "five minutes"},
    ...                  text="set a timer for five minutes", confidence=0.93,
    ...                  start_ms=0.0, end_ms=2600.0)
    >>> CommandEvent.decode(c.encode()) == c
    True
    >>> c.command_id
    's/0/2'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from streamscribe.schemas.json_codec import JsonRecord, decode_json

COMMAND_SCHEMA_VERSION: Final = 1
STATE_SCHEMA_VERSION: Final = 1
#: Where the command's words came from: the line's final, or its latest partial when the
#: capture timed out before the final came.
SOURCE_FINAL: Final = "final"
SOURCE_TIMEOUT: Final = "timeout"


@dataclass(frozen=True)
class CommandEvent(JsonRecord):
    """One recognised voice command.

    ``text`` is the command as heard after the wake phrase (normalised words),
    ``transcript`` the whole line(s) it came from; ``slots`` maps each ``{slot}`` of the
    matched example phrase to the words heard there; ``confidence`` (0-1) is the wake
    phrase's similarity times the intent's; ``timestamps`` are the transcript's (epoch µs,
    see ``schemas.transcripts.TIMESTAMP_ORDER``) plus ``command_at_us``. With ``assistant
    --speak``, ``reply_text`` is the answer and ``reply_audio_b64`` its WAV (base64).
    """

    SCHEMA = "command_event"

    session_id: str
    channel: int
    role: str
    utterance: int
    intent: str
    slots: dict[str, str]
    text: str
    confidence: float
    start_ms: float
    end_ms: float
    transcript: str = ""
    example: str = ""  # the intents file's example phrase that matched
    wake_heard: str = ""  # the words taken for the wake phrase
    wake_score: float = 0.0  # 0-1
    intent_score: float = 0.0  # 0-1
    source: str = SOURCE_FINAL
    timestamps: dict[str, int] = field(default_factory=dict)
    # The spoken answer (``assistant --speak``; empty otherwise): the sentence, the WAV
    # espeak-ng made of it (base64 of the whole file) and its length.
    reply_text: str = ""
    reply_audio_b64: str = ""
    reply_duration_ms: float = 0.0
    schema_version: int = COMMAND_SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        return self.session_id.encode()

    @property
    def command_id(self) -> str:
        return f"{self.session_id}/{self.channel}/{self.utterance}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["command_id"] = self.command_id
        return d


def assistant_state_topic(group_id: str) -> str:
    """The compacted changelog of the assistant group ``group_id``'s session state.

    >>> assistant_state_topic("streamscribe-assistant")
    'streamscribe-assistant-sessions-changelog'
    """
    return f"{group_id}-sessions-changelog"


@dataclass(frozen=True)
class WakeMark:
    """A wake phrase heard and not yet followed by its command.

    In :attr:`AssistantState.lines`, a line (``channel``, ``utterance``) armed by a partial;
    in :attr:`AssistantState.waiting`, a channel whose last final was only the wake phrase
    (``utterance`` is that line's, ``transcript`` its text). ``at_ms`` is the stream time
    it was heard (the partial's end, or the wake-only line's end).
    """

    channel: int
    utterance: int
    wake_score: float
    wake_heard: str
    at_ms: float
    transcript: str = ""


@dataclass(frozen=True)
class AssistantState(JsonRecord):
    """What the assistant knows of one session, as of the last change.

    ``lines`` and ``waiting`` are the wake phrases in progress (:class:`WakeMark`);
    ``done`` the lines already decided (``[channel, utterance]``, oldest first, the last
    few per session): a replayed or duplicated transcript of one of them gives nothing.

    >>> s = AssistantState("s", lines=(WakeMark(0, 3, 0.9, "hey scribe", 1200.0),),
    ...                    done=((0, 1), (0, 2)))
    >>> AssistantState.decode(s.encode()) == s
    True
    """

    SCHEMA = "assistant_state"

    session_id: str
    lines: tuple[WakeMark, ...] = ()
    waiting: tuple[WakeMark, ...] = ()
    done: tuple[tuple[int, int], ...] = ()
    schema_version: int = STATE_SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        return self.session_id.encode()

    @classmethod
    def decode(cls, data: bytes) -> AssistantState:
        doc = decode_json(data, cls.SCHEMA)
        return cls(
            session_id=doc["session_id"],
            lines=tuple(WakeMark(**m) for m in doc.get("lines", ())),
            waiting=tuple(WakeMark(**m) for m in doc.get("waiting", ())),
            done=tuple((int(c), int(u)) for c, u in doc.get("done", ())),
            schema_version=int(doc.get("schema_version", STATE_SCHEMA_VERSION)),
        )
