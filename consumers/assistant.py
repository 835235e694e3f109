"""``streamscribe assistant``: voice commands from transcripts → ``streamscribe.commands``.

A consumer group of its own (default ``<prefix stem>-assistant``) reads partials and finals
from ``<prefix>transcripts``; :class:`~streamscribe.consumers.assistant_core.AssistantCore`
finds the wake phrase, captures the command and matches it against the intents file; each
command is a :class:`~streamscribe.schemas.commands.CommandEvent` JSON on
``<prefix>commands``, keyed by session id.

Commit order (the delivery guarantee is made here)::

    0. on start, before the group is joined: the group's state topic
       (``<group>-sessions-changelog``, compacted, :mod:`.assistant_state`) is read to
       its end and every session's state is put back into the core
    1. consume a batch — the one consume loop, :func:`streamscribe.core.kafka.consume_batches`
    2. decode each value (an undecodable one is counted and logged; the sink dead-letters it)
       and hand it to the core, in partition order
    3. produce the batch's commands, then the state record of every session the batch
       changed (the kernel's idempotent DeliveryProducer)
    4. wait for and check every delivery report (``deliver_all``; SinkError if one failed)
    5. the loop commits the batch's offsets synchronously

So the state a restart reads back is never older than the committed offsets: a wake
phrase heard in a committed partial, or a wake-only line, is still armed after a crash,
and its command comes once when the rest of the line arrives. A line's command and its
"decided" mark are written in one step (3-4), so a replay of the batch after a crash past
step 4 publishes nothing again. Commands are at least once only in the instant between
the two delivery reports of step 4 (a crash there: the same ``command_id`` again, on which
a reader dedupes); none is lost. The state is restored once, at start, for every
session: a group of several assistants hands a partition to another member at a
rebalance without the changes written since that member started (run one assistant per
group, or restart them together).

Example::

    streamscribe assistant --wake "hey scribe" --intents intents.yaml

    >>> from streamscribe.core.settings import Settings
    >>> stats = run_assistant(Settings.from_env(), from_earliest=True,
    ...                       max_idle_s=5.0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confluent_kafka import Message
from prometheus_client import CollectorRegistry, Histogram

from streamscribe.consumers.assistant_core import AssistantConfig, AssistantCore
from streamscribe.consumers.assistant_intents import IntentMatcher, load_intents
from streamscribe.consumers.assistant_reply import Speaker
from streamscribe.consumers.assistant_state import ensure_state_topic, read_states
from streamscribe.consumers.latency import HISTORY, origin_class
from streamscribe.consumers.metrics import StatsCollector, loop_counters, serve_metrics, stop_server
from streamscribe.core.errors import ContractError, SinkError
from streamscribe.core.kafka import (
    DeliveryProducer,
    LoopStats,
    Publisher,
    Subscription,
    consume_batches,
)
from streamscribe.core.metrics import LATENCY_BUCKETS_S, new_registry
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import decode_transcript

log = logging.getLogger(__name__)

GROUP_ROLE: Final = "assistant"  # group <prefix stem>-assistant (Settings.group_for)
CLIENT_ID: Final = "streamscribe-assistant"
BATCH_SIZE: Final = 500


@dataclass
class AssistantStats(LoopStats):
    """Counters of one :func:`run_assistant` (the loop's, and these)."""

    transcripts: int = 0
    undecodable: int = 0
    commands: int = 0
    states_restored: int = 0
    states_unreadable: int = 0
    states_written: int = 0
    history_skipped: int = 0  # transcripts re-transcribed by another processor group


#: :class:`AssistantStats` fields exported as ``streamscribe_assistant_<name>_total``.
ASSISTANT_COUNTERS: Final = {
    "transcripts": ("streamscribe_assistant_transcripts", "Transcripts (partials, finals) read"),
    "undecodable": ("streamscribe_assistant_undecodable", "Transcript values that did not decode"),
    "commands": ("streamscribe_assistant_commands", "Voice commands published (delivered)"),
    "history_skipped": (
        "streamscribe_assistant_history_skipped",
        "Transcripts re-transcribed from history (another processor group), not acted on",
    ),
    "states_written": ("streamscribe_assistant_states_written", "Session state records written"),
    "states_restored": (
        "streamscribe_assistant_states_restored",
        "Session states read back from the state topic at start",
    ),
    "states_unreadable": (
        "streamscribe_assistant_states_unreadable",
        "State records that did not decode at start (skipped)",
    ),
    **loop_counters("assistant"),
}


class AssistantMetrics:
    """The assistant's registry: its counters (read from ``stats`` at scrape time) and
    ``streamscribe_assistant_command_latency_seconds``, the recognizer's publish of the
    transcript that completed a command to the command's publish (``command_at_us``).

    >>> m = AssistantMetrics(AssistantStats(commands=1))
    >>> m.observe({"published_at_us": 1_000_000, "command_at_us": 1_250_000})
    >>> m.registry.get_sample_value("streamscribe_assistant_command_latency_seconds_sum")
    0.25
    >>> m.registry.get_sample_value("streamscribe_assistant_commands_total")
    1.0
    """

    def __init__(self, stats: AssistantStats) -> None:
        self.registry: CollectorRegistry = new_registry()
        self.registry.register(StatsCollector(lambda: stats, ASSISTANT_COUNTERS))
        self.latency = Histogram(
            "streamscribe_assistant_command_latency_seconds",
            "Transcript published by the recognizer to its command published",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def observe(self, timestamps: dict[str, int]) -> None:
        published, at = timestamps.get("published_at_us"), timestamps.get("command_at_us")
        if published is not None and at is not None and at >= published:
            self.latency.observe((at - published) / 1e6)


def config_from_settings(
    settings: Settings, *, wake: str | None = None, timeout_s: float | None = None
) -> AssistantConfig:
    """The core's config from ``STREAMSCRIBE_ASSISTANT_*`` (``wake``/``timeout_s`` override)."""
    return AssistantConfig(
        wake=wake or settings.assistant_wake,
        wake_threshold=settings.assistant_wake_threshold,
        intent_threshold=settings.assistant_intent_threshold,
        timeout_ms=1000.0 * (settings.assistant_timeout_s if timeout_s is None else timeout_s),
    )


class AssistantHandler:
    """Steps 2 to 4 of the commit order for one batch (the consume loop's ``handle``)."""

    def __init__(
        self,
        core: AssistantCore,
        out: Publisher,
        topic: str,
        stats: AssistantStats,
        *,
        live_group: str | None = None,
        state_topic: str | None = None,
        speaker: Speaker | None = None,
        metrics: AssistantMetrics | None = None,
    ) -> None:
        self.core, self.out, self.topic, self.stats = core, out, topic, stats
        self.metrics = metrics  # None: no /metrics
        self.live_group = live_group  # None: every transcript; else live traffic only
        self.state_topic = state_topic  # None: the state is not kept (tests of the core)
        self.speaker = speaker  # None: no spoken reply (no --speak)

    def handle_values(self, values: Iterable[bytes | None]) -> None:
        sent = 0
        for raw in values:
            try:
                event = decode_transcript(raw if raw is not None else b"")
            except ContractError as exc:
                self.stats.undecodable += 1
                log.warning("undecodable transcript (the sink dead-letters it): %s", exc.reason)
                continue
            self.stats.transcripts += 1
            if (
                self.live_group is not None
                and origin_class(event.origin, self.live_group) == HISTORY
            ):
                self.stats.history_skipped += 1  # an old call re-transcribed: no new command
                continue
            for command in self.core.accept(event, now_us=now_us()):
                if self.speaker is not None:
                    command = self.speaker.answer(command)
                # The slots are words of the speech: not in the log (docs/privacy.md).
                log.info(
                    "command %s: %s (%.2f)",
                    command.command_id,
                    command.intent,
                    command.confidence,
                )
                self.out.send(self.topic, command.key, command.encode())
                if self.metrics is not None:
                    self.metrics.observe(command.timestamps)
                sent += 1
        states = self.core.changed()
        if self.state_topic is not None:
            for state in states:
                self.out.send(self.state_topic, state.key, state.encode())
            self.stats.states_written += len(states)
        if sent or (states and self.state_topic is not None):
            self.out.deliver_all("commands and session states", error=SinkError)
        self.stats.commands += sent

    def __call__(self, messages: Sequence[Message]) -> None:
        self.handle_values([m.value() for m in messages])


def run_assistant(
    settings: Settings,
    *,
    wake: str | None = None,
    intents_file: str | Path | None = None,
    timeout_s: float | None = None,
    group_id: str | None = None,
    from_earliest: bool = False,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
    include_history: bool = False,
    speak_dir: str | Path | None = None,
) -> AssistantStats:
    """Publish voice commands until stopped (signal, ``stop_event`` or ``max_idle_s``).

    Commands come from live traffic only (transcripts of ``settings.group_id``); a
    re-transcription of old calls by another processor group publishes none unless
    ``include_history``. With ``speak_dir``, each command is answered through espeak-ng:
    a WAV in that directory, and the same WAV in the command (``reply_audio_b64``)."""
    matcher = IntentMatcher(load_intents(intents_file or settings.assistant_intents or None))
    speaker = Speaker(speak_dir) if speak_dir is not None else None
    core = AssistantCore(matcher, config_from_settings(settings, wake=wake, timeout_s=timeout_s))
    topics = Topics(settings.topic_prefix)
    group_id = group_id or settings.group_for(GROUP_ROLE)
    stats = AssistantStats()
    state_topic = ensure_state_topic(settings, group_id)
    states, stats.states_unreadable = read_states(settings, state_topic)
    stats.states_restored = core.restore(states.values())
    log.info("assistant: %d session states restored from %s", stats.states_restored, state_topic)
    producer = DeliveryProducer.from_settings(settings, client_id=CLIENT_ID)
    live_group = None if include_history else settings.group_id
    metrics, server = None, None
    if settings.process_metrics_port is not None:
        metrics = AssistantMetrics(stats)
        server = serve_metrics(
            metrics.registry, settings.metrics_host, settings.process_metrics_port
        )
    handler = AssistantHandler(
        core,
        producer,
        topics.commands,
        stats,
        live_group=live_group,
        state_topic=state_topic,
        speaker=speaker,
        metrics=metrics,
    )
    log.info(
        "assistant: wake %r, intents %s: %s -> %s (group %s)%s",
        core.wake.phrase,
        ", ".join(matcher.intents),
        topics.transcripts,
        topics.commands,
        group_id,
        f", replies spoken into {speaker.out_dir}" if speaker else "",
    )
    sub = Subscription([topics.transcripts], group_id, CLIENT_ID, from_earliest)
    try:
        consume_batches(
            settings,
            sub,
            handler,
            batch_size=BATCH_SIZE,
            max_idle_s=max_idle_s,
            stop_event=stop_event,
            stats=stats,
        )
    finally:
        producer.close()
        if server is not None:
            stop_server(server)
    log.info("assistant: stopped: %s", stats)
    return stats


__all__ = [
    "GROUP_ROLE",
    "AssistantHandler",
    "AssistantMetrics",
    "AssistantStats",
    "config_from_settings",
    "run_assistant",
]
