"""Topic names, partitioning and configs: the map of the pipeline.

Audio, utterances and transcripts use ``LogAppendTime``, so each record's timestamp says
when the broker stored it: the latency stages around the broker are measured there.

Every topic is keyed by session id and has the same partition count, so that a session's
chunks, utterances and transcripts sit on partitions with the same number (co-partitioned)
and the faust tables of a stage live beside the stream that feeds them.

Example::

    >>> t = Topics("streamscribe.")
    >>> t.audio, t.deadletter
    ('streamscribe.audio', 'streamscribe.deadletter')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DEFAULT_PREFIX: Final = "streamscribe."
DAY_MS: Final = 24 * 3600 * 1000

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


@dataclass(frozen=True)
class Topics:
    """The pipeline's topic names under one prefix (default ``streamscribe.``)."""

    prefix: str = DEFAULT_PREFIX

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
        """All pipeline topics with their configs. Audio is kept 7 days for replay."""
        keep_week = {"retention.ms": str(7 * DAY_MS)}
        keep_month = {"retention.ms": str(30 * DAY_MS)}
        # Record timestamps are the broker's append time: the latency stages edge->broker and
        # broker->processor are then measured, not the producer client's clock.
        broker_time = {"message.timestamp.type": "LogAppendTime"}
        return [
            TopicSpec(
                self.audio,
                partitions,
                {
                    **keep_week,
                    **broker_time,
                    "max.message.bytes": "2097152",
                    "compression.type": "producer",
                },
                "AudioChunk (Avro), key = session id",
            ),
            TopicSpec(
                self.utterances,
                partitions,
                {**keep_week, **broker_time, "max.message.bytes": "2097152"},
                "UtteranceMessage (Avro): speech-so-far deltas and finals, 16 kHz PCM16",
            ),
            TopicSpec(
                self.transcripts, partitions, {**keep_month, **broker_time}, "TranscriptEvent JSON"
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
