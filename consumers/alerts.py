"""``streamscribe alerts``: an analytics example — phrase alerts on final transcripts.

A consumer group of its own (default ``<prefix stem>-alerts``) reads finals; each configured
phrase found in a final's text (case- and punctuation-insensitive, on word boundaries)
becomes an :class:`~streamscribe.schemas.events.Alert` JSON on ``<prefix>alerts``, keyed by
session id.

Commit order: produce the batch's alerts (the kernel's idempotent
:class:`~streamscribe.core.kafka.DeliveryProducer`) → wait for and check every delivery
report (``deliver_all``) → the one consume loop (:func:`~streamscribe.core.kafka.consume_batches`)
commits the batch's offsets synchronously. Alerts are therefore at least once: a crash
before the offset commit re-sends that batch's alerts (consumers of alerts dedupe on
``(session_id, channel, utterance, phrase)``). Undecodable values are counted and logged;
the sink is the one that dead-letters them.

Alerts are for live traffic: a final re-transcribed from history by another processor
group (its ``origin`` is not the live pipeline's ``Settings.group_id``; see
:func:`~streamscribe.consumers.latency.origin_class`) raises none and is counted as
skipped, unless asked (``include_history``, ``streamscribe alerts --include-history``).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from streamscribe.consumers.decode import ReadCounts, finals_of
from streamscribe.consumers.latency import HISTORY, origin_class
from streamscribe.consumers.metrics import (
    StatsCollector,
    loop_counters,
    new_registry,
    serve_metrics,
    stop_server,
)
from streamscribe.core.errors import SinkError
from streamscribe.core.kafka import (
    DeliveryProducer,
    LoopStats,
    Publisher,
    Subscription,
    consume_batches,
)
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import Alert
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript

log = logging.getLogger(__name__)

GROUP_ROLE: Final = "alerts"  # group <prefix stem>-alerts (Settings.group_for)
CLIENT_ID: Final = "streamscribe-alerts"
BATCH_SIZE: Final = 500
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
class AlertStats(ReadCounts):
    """Counters of one :func:`run_alerts` (``messages``, ``finals``, ``undecodable``, ...)."""

    alerts: int = 0
    history_skipped: int = 0


#: :class:`AlertStats` fields exported as ``streamscribe_alerts_<name>_total`` (docs/metrics.md).
ALERT_COUNTERS: Final = {
    "finals": ("streamscribe_alerts_finals", "Finals read by the alerts consumer"),
    "undecodable": ("streamscribe_alerts_undecodable", "Transcript values that did not decode"),
    "alerts": ("streamscribe_alerts_published", "Alerts published (delivered) to the topic"),
    "history_skipped": (
        "streamscribe_alerts_history_skipped",
        "Finals re-transcribed from history (another processor group) that raised no alert",
    ),
}


def alert_registry(stats: AlertStats, loop_stats: LoopStats) -> CollectorRegistry:
    """The alerts consumer's metrics, read from its counters at scrape time."""
    registry = new_registry()
    registry.register(StatsCollector(lambda: stats, ALERT_COUNTERS))
    registry.register(StatsCollector(lambda: loop_stats, loop_counters("alerts")))
    return registry


def publish_alerts(
    values: Iterable[bytes | None],
    matcher: PhraseMatcher,
    out: Publisher,
    topic: str,
    stats: AlertStats,
    on_alert: Callable[[Alert], None] | None = None,
    *,
    live_group: str | None = None,
) -> None:
    """One batch: send an alert per phrase found in each final, then wait for delivery.

    Returns only when every alert of the batch is delivered (:class:`SinkError` if not),
    so the loop may then commit the batch's offsets; ``on_alert`` (the CLI prints) sees
    each alert of the batch after its delivery. With ``live_group``, finals of any other
    origin (re-transcribed history) raise no alert; None = alerts for every final.
    """
    sent: list[Alert] = []
    for final in finals_of(values, stats):
        if live_group is not None and origin_class(final.origin, live_group) == HISTORY:
            stats.history_skipped += 1
            continue
        for alert in alerts_for(final, matcher):
            out.send(topic, alert.key, alert.encode())
            sent.append(alert)
    out.deliver_all("alerts", error=SinkError)
    stats.alerts += len(sent)
    if on_alert is not None:
        for alert in sent:
            on_alert(alert)


def run_alerts(
    settings: Settings,
    *,
    phrases: Sequence[str],
    group_id: str | None = None,
    from_earliest: bool = False,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
    on_alert: Callable[[Alert], None] | None = None,
    include_history: bool = False,
) -> AlertStats:
    """Match phrases in finals and publish alerts until stopped (signal, event or idle).

    Only live traffic raises alerts (finals of ``settings.group_id``, the live processor
    group); ``include_history`` also matches finals re-transcribed by other groups.

    With ``settings.process_metrics_port`` set, serves :data:`ALERT_COUNTERS` and the
    loop's counters at ``/metrics``.
    """
    matcher = PhraseMatcher(phrases)
    topics = Topics(settings.topic_prefix)
    stats = AlertStats()
    loop_stats = LoopStats()
    server: Any = None
    if settings.process_metrics_port is not None:
        registry = alert_registry(stats, loop_stats)
        server = serve_metrics(registry, settings.metrics_host, settings.process_metrics_port)
    producer = DeliveryProducer.from_settings(settings, client_id=CLIENT_ID)
    live_group = None if include_history else settings.group_id

    def handle(messages: Sequence[Message]) -> None:
        values = [m.value() for m in messages]
        publish_alerts(
            values, matcher, producer, topics.alerts, stats, on_alert, live_group=live_group
        )

    log.info(
        "alerts: %d phrases -> %s (%s)",
        len(matcher.phrases),
        topics.alerts,
        "live and history" if include_history else f"live traffic of {settings.group_id} only",
    )
    group = group_id or settings.group_for(GROUP_ROLE)
    sub = Subscription([topics.transcripts], group, CLIENT_ID, from_earliest)
    try:
        consume_batches(
            settings,
            sub,
            handle,
            batch_size=BATCH_SIZE,
            max_idle_s=max_idle_s,
            stop_event=stop_event,
            stats=loop_stats,
        )
    finally:
        producer.close()
        if server is not None:
            stop_server(server)
    log.info("alerts: stopped: %s", stats)
    return stats
