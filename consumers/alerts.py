"""``streamscribe alerts``: an analytics example — phrase alerts on final transcripts.

A consumer group of its own (default ``streamscribe-alerts``) reads finals; each configured
phrase found in a final's text (case- and punctuation-insensitive, on word boundaries)
becomes an :class:`~streamscribe.schemas.events.Alert` JSON on ``<prefix>alerts``, keyed by
session id.

Commit order: produce the batch's alerts (idempotent producer, ``acks=all``,
``murmur2_random``, delivery callbacks) → ``flush`` and check every delivery report →
commit the batch's offsets synchronously. Alerts are therefore at least once: a crash
before the offset commit re-sends that batch's alerts (consumers of alerts dedupe on
``(session_id, channel, utterance, phrase)``). Undecodable values are counted and logged;
the sink is the one that dead-letters them.

Example::

    streamscribe alerts --phrases "cancel my subscription,speak to a manager"

    >>> m = PhraseMatcher(["cancel my subscription", "Manager"])
    >>> m.find("Please, CANCEL my-subscription now! Or get me a manager.")
    ['cancel my subscription', 'Manager']
    >>> m.find("managerial")
    []
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, KafkaException, Producer

from streamscribe.consumers.kafka_io import (
    DeliveryTracker,
    IdleClock,
    consumer_config,
    flush,
    next_offsets,
    produce,
    producer_config,
    stop_on_signals,
)
from streamscribe.core.errors import ContractError, SinkError
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import Alert
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID: Final = "streamscribe-alerts"
BATCH_SIZE: Final = 500
POLL_TIMEOUT_S: Final = 0.5
FLUSH_TIMEOUT_S: Final = 30.0
_NON_WORD: Final = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Case-folded words separated by single spaces; punctuation is a separator.

    >>> normalize("  Don't   STOP—now!! ")
    'don t stop now'
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class PhraseMatcher:
    """Finds configured phrases in text on word boundaries (see :func:`normalize`)."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases: list[str] = []
        self._patterns: list[re.Pattern[str]] = []
        seen: set[str] = set()
        for phrase in phrases:
            norm = normalize(phrase)
            if not norm or norm in seen:
                continue
            seen.add(norm)
            self.phrases.append(phrase.strip())
            self._patterns.append(re.compile(r"(?:^| )" + re.escape(norm) + r"(?= |$)"))
        if not self.phrases:
            raise ValueError("no phrases to match (give --phrases or --phrases-file)")

    def find(self, text: str) -> list[str]:
        """The configured phrases found in ``text``, in configuration order, once each."""
        norm = normalize(text)
        return [p for p, pat in zip(self.phrases, self._patterns, strict=True) if pat.search(norm)]


def alerts_for(final: FinalTranscript, matcher: PhraseMatcher) -> list[Alert]:
    """One :class:`Alert` per phrase found in the final's text."""
    return [
        Alert(
            session_id=final.session_id,
            channel=final.channel,
            role=final.role,
            utterance=final.utterance,
            phrase=phrase,
            text=final.text,
            start_ms=final.start_ms,
        )
        for phrase in matcher.find(final.text)
    ]


def load_phrases(phrases: str | None = None, phrases_file: str | Path | None = None) -> list[str]:
    """Phrases from ``"a,b"`` and/or a file (one a line, ``#`` comments, blank lines skipped)."""
    out: list[str] = []
    if phrases:
        out += [p.strip() for p in phrases.split(",") if p.strip()]
    if phrases_file:
        path = Path(phrases_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SinkError(f"cannot read phrases file {path}: {exc.strerror}") from None
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return out


@dataclass
class AlertStats:
    messages: int = 0
    finals: int = 0
    alerts: int = 0
    undecodable: int = 0


def run_alerts(
    settings: Settings,
    *,
    phrases: Sequence[str],
    group_id: str = DEFAULT_GROUP_ID,
    from_earliest: bool = False,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
) -> AlertStats:
    """Match phrases in finals and publish alerts until stopped (signal, event or idle)."""
    matcher = PhraseMatcher(phrases)
    topics = Topics(settings.topic_prefix)
    stop = stop_event or threading.Event()
    stats = AlertStats()
    conf = consumer_config(
        settings, group_id=group_id, from_earliest=from_earliest, client_id="streamscribe-alerts"
    )
    consumer = Consumer(conf)
    producer = Producer(producer_config(settings, client_id="streamscribe-alerts"))
    tracker = DeliveryTracker("alerts")
    idle = IdleClock(max_idle_s)
    log.info("alerts: %d phrases -> %s", len(matcher.phrases), topics.alerts)
    try:
        consumer.subscribe([topics.transcripts], on_assign=idle.on_assign)
        with stop_on_signals(stop):
            while not stop.is_set():
                msgs = consumer.consume(num_messages=BATCH_SIZE, timeout=POLL_TIMEOUT_S)
                data = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        data.append(m)
                    elif err.fatal():
                        raise SinkError(f"fatal Kafka error: {err.str()}")
                    else:
                        log.warning("consumer error: %s", err.str())
                if not data:
                    if idle.expired():
                        break
                    continue
                idle.touch()
                for m in data:
                    stats.messages += 1
                    try:
                        event = decode_transcript(m.value() or b"")
                    except ContractError as exc:
                        stats.undecodable += 1
                        log.warning("undecodable transcript (the sink dead-letters it): %s", exc)
                        continue
                    if not isinstance(event, FinalTranscript):
                        continue
                    stats.finals += 1
                    for alert in alerts_for(event, matcher):
                        produce(producer, topics.alerts, alert.key, alert.encode(), tracker)
                        stats.alerts += 1
                flush(producer, tracker, FLUSH_TIMEOUT_S)
                try:
                    consumer.commit(offsets=next_offsets(data), asynchronous=False)
                except KafkaException as exc:
                    log.warning("offset commit failed (alerts may repeat): %s", exc)
    finally:
        consumer.close()
        producer.flush(FLUSH_TIMEOUT_S)
    log.info("alerts: stopped: %s", stats)
    return stats
