"""Voice commands on ``streamscribe.commands``: ``CommandEvent`` JSON, key = session id.

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

from streamscribe.schemas.json_codec import JsonRecord

COMMAND_SCHEMA_VERSION: Final = 1
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
    see ``schemas.transcripts.TIMESTAMP_ORDER``) plus ``command_at_us``.
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
