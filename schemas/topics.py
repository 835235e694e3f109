"""Topic names, partitioning and configs: the map of the pipeline.

Audio, utterances and transcripts use ``LogAppendTime``, so each record's timestamp says
when the broker stored it: the latency stages around the broker are measured there.

Every topic is keyed by session id and has the same partition count, so that a session's
chunks, utterances and transcripts sit on partitions with the same number (co-partitioned)
and the faust tables of a stage live beside the stream that feeds them.

Recorded speech is personal data: the topics that carry it (audio, utterances, and the
transcripts' text) keep it for a :class:`Retention` (7, 7 and 30 days unless set). Topics
built with one (:meth:`Topics.from_settings`: ``STREAMSCRIBE_AUDIO_RETENTION_HOURS``,
``..._UTTERANCES_...``, ``..._TRANSCRIPTS_...``) mark ``retention.ms`` as a config that
:func:`~streamscribe.core.admin.create_topics` also sets on a topic that already exists
(``streamscribe topics create``); without one, an existing topic keeps what it has.

Example::

    >>> t = Topics("streamscribe.")
    >>> t.audio, t.deadletter
    ('streamscribe.audio', 'streamscribe.deadletter')
    >>> audio = Topics("s.", Retention(audio_ms=3_600_000)).specs(4)[0]
    >>> audio.configs["retention.ms"], audio.alter_existing
    ('3600000', ('retention.ms',))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Protocol

DEFAULT_PREFIX: Final = "streamscribe."
HOUR_MS: Final = 3600 * 1000
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
MONTH_MS: Final = 30 * DAY_MS
RETENTION_MS: Final = "retention.ms"

AUDIO: Final = "audio"
UTTERANCES: Final = "utterances"
TRANSCRIPTS: Final = "transcripts"
EVENTS: Final = "events"
DEADLETTER: Final = "deadletter"
ALERTS: Final = "alerts"
COMMANDS: Final = "commands"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its full name, partitions and broker configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    doc: str = ""
    #: Keys of ``configs`` that are set on the topic even when it exists already.
    alter_existing: tuple[str, ...] = ()


class RetentionSettings(Protocol):
    """What :meth:`Topics.from_settings` reads (``streamscribe.core.settings.Settings``)."""

    @property
    def topic_prefix(self) -> str: ...
    @property
    def audio_retention_hours(self) -> float: ...
    @property
    def utterances_retention_hours(self) -> float: ...
    @property
    def transcripts_retention_hours(self) -> float: ...


@dataclass(frozen=True)
class Retention:
    """How long the topics that carry speech keep it (``retention.ms``), in ms.

    >>> Retention.from_hours(audio=1, utterances=0.5, transcripts=24).utterances_ms
    1800000
    """

    audio_ms: int = WEEK_MS
    utterances_ms: int = WEEK_MS
    transcripts_ms: int = MONTH_MS

    def __post_init__(self) -> None:
        for name in ("audio_ms", "utterances_ms", "transcripts_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.removesuffix('_ms')} retention must be positive")

    @classmethod
    def from_hours(cls, *, audio: float, utterances: float, transcripts: float) -> Retention:
        return cls(
            round(audio * HOUR_MS), round(utterances * HOUR_MS), round(transcripts * HOUR_MS)
        )


@dataclass(frozen=True)
class Topics:
    """The pipeline's topic names under one prefix (default ``streamscribe.``).

    ``retention`` None: the default :class:`Retention` for new topics, and an existing
    topic keeps its own; given: it is applied to existing topics too.
    """

    prefix: str = DEFAULT_PREFIX
    retention: Retention | None = None

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> Topics:
        """The topics under the settings' prefix, with the settings' retention."""
        return cls(
            settings.topic_prefix,
            Retention.from_hours(
                audio=settings.audio_retention_hours,
                utterances=settings.utterances_retention_hours,
                transcripts=settings.transcripts_retention_hours,
            ),
        )

    def _n(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def audio(self) -> str:
        return self._n(AUDIO)

    @property
    def utterances(self) -> str:
        return self._n(UTTERANCES)

    @property
    def transcripts(self) -> str:
        return self._n(TRANSCRIPTS)

    @property
    def events(self) -> str:
        return self._n(EVENTS)

    @property
    def deadletter(self) -> str:
        return self._n(DEADLETTER)

    @property
    def alerts(self) -> str:
        return self._n(ALERTS)

    @property
    def commands(self) -> str:
        return self._n(COMMANDS)

    def specs(self, partitions: int = 4) -> list[TopicSpec]:
        """All pipeline topics with their configs (speech kept for :attr:`retention`)."""
        keep_week = {RETENTION_MS: str(WEEK_MS)}
        keep_month = {RETENTION_MS: str(MONTH_MS)}
        kept = self.retention or Retention()
        alter = (RETENTION_MS,) if self.retention is not None else ()
        # Record timestamps are the broker's append time: the latency stages edge->broker and
        # broker->processor are then measured, not the producer client's clock.
        broker_time = {"message.timestamp.type": "LogAppendTime"}
        return [
            TopicSpec(
                self.audio,
                partitions,
                {
                    RETENTION_MS: str(kept.audio_ms),
                    **broker_time,
                    "max.message.bytes": "2097152",
                    "compression.type": "producer",
                },
                "AudioChunk (Avro), key = session id",
                alter,
            ),
            TopicSpec(
                self.utterances,
                partitions,
                {
                    RETENTION_MS: str(kept.utterances_ms),
                    **broker_time,
                    "max.message.bytes": "2097152",
                },
                "UtteranceMessage (Avro): speech-so-far deltas and finals, 16 kHz PCM16",
                alter,
            ),
            TopicSpec(
                self.transcripts,
                partitions,
                {RETENTION_MS: str(kept.transcripts_ms), **broker_time},
                "TranscriptEvent JSON",
                alter,
            ),
            TopicSpec(self.events, partitions, keep_week, "SessionEvent JSON"),
            TopicSpec(self.deadletter, partitions, keep_month, "DeadLetter JSON"),
            TopicSpec(self.alerts, partitions, keep_month, "Alert JSON"),
            TopicSpec(self.commands, partitions, keep_month, "CommandEvent JSON"),
        ]

    def all_names(self) -> list[str]:
        return [s.name for s in self.specs()]

    def kind_of(self, topic: str) -> str | None:
        """The base name (``audio``, ``transcripts``, ...) of a full topic name, if ours."""
        for base in (AUDIO, UTTERANCES, TRANSCRIPTS, EVENTS, DEADLETTER, ALERTS, COMMANDS):
            if topic == self._n(base) or topic.endswith("." + base) or topic == base:
                return base
        return None


# ----------------------------------------------------------------- the processors' tables
#: The processors' faust tables, each with the shape of its keys after the session id.
#: faust keeps a table in a compacted changelog topic (:func:`changelog_topic`), keys
#: JSON-encoded strings, each written to the partition of the session (the event that
#: changed it), not to its own key's hash. ``streamscribe forget`` erases a session's keys.
TABLE_KEY_SHAPES: Final[dict[str, str]] = {
    "segmenter-channels": r"#\d+",  # session#channel -> the channel's segmenter state
    "segmenter-sessions": r"",  # session -> its open channels
    "segmenter-ended": r"#\d+",  # session#channel -> end marker (refuses late chunks)
    "recognizer-lines": r"/\d+/\d+",  # session/channel/utterance -> the line's state
    "recognizer-audio": r"/\d+/\d+#\d+",  # session/channel/utterance#part -> PCM16 bytes
}


def changelog_topic(group_id: str, table: str) -> str:
    """The changelog topic of a faust table of the app (= consumer group) ``group_id``.

    >>> changelog_topic("streamscribe-processors", "segmenter-ended")
    'streamscribe-processors-segmenter-ended-changelog'
    """
    return f"{group_id}-{table}-changelog"


def is_session_key(table: str, key: str, session_id: str) -> bool:
    """Whether the (decoded) table ``key`` is one of ``session_id``'s keys: the exact id,
    then exactly the table's shape, so ``call-1`` never matches a key of ``call-10``.

    >>> is_session_key("segmenter-ended", "call-1#0", "call-1")
    True
    >>> is_session_key("segmenter-ended", "call-10#0", "call-1")
    False
    >>> is_session_key("recognizer-audio", "a/1/0/2#3", "a/1"), is_session_key(
    ...     "recognizer-audio", "a/1/0/2#3", "a")
    (True, False)
    """
    shape = TABLE_KEY_SHAPES[table]
    return key.startswith(session_id) and re.fullmatch(shape, key[len(session_id) :]) is not None
