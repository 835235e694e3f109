"""``streamscribe metrics``: per-stage latency of finals as Prometheus metrics, and the
small exporter kit every long-running consumer (sink, alerts) shares.

A consumer group of its own (default ``<prefix stem>-metrics``) reads
``streamscribe.transcripts``; for every final it computes a
:class:`~streamscribe.schemas.events.LatencyRecord` with its own receive time as the sink
time (``publish_to_sink``; the sink stores its own ``stored_at_us``, which
``latency-report`` uses). Exposed at ``http://HOST:PORT/metrics`` (``--metrics-host``,
default ``127.0.0.1``; ``0.0.0.0`` in containers). The names follow Prometheus'
conventions (base units, ``_total`` counters, no ``_created`` series, histograms rather
than quantile gauges); ``docs/metrics.md`` lists every metric of every process:

==================================================  ======================================
``streamscribe_stage_latency_seconds{stage,origin}`` histogram per stage / span, 10 ms..10 s
``streamscribe_latency_clamped_total{stage}``       negative (clock-skew) steps clamped to 0
``streamscribe_sla_violation_ratio{series}``        share over the SLA threshold, window
``streamscribe_sla_ok{series}``                     1 if that share is within the allowed rate
``streamscribe_sla_threshold_seconds``              the threshold (``Settings.sla_ms``)
``streamscribe_latency_window_records``             finals in the sliding window
``streamscribe_latency_finals_total``               finals seen
``streamscribe_latency_partials_total``             partials seen
``streamscribe_partial_interval_seconds{origin}``   histogram: time between an utterance's
                                                    consecutive partials
``streamscribe_latency_undecodable_total``          values that did not decode (the sink
                                                    dead-letters them; this one only counts)
``process_*``                                       CPU seconds, memory, fds of the process
==================================================  ======================================

Live traffic and re-transcribed history are told apart by each transcript's ``origin``
(:func:`~streamscribe.consumers.latency.origin_class`: the live pipeline is the service's
``Settings.group_id``): the histograms carry ``origin="live"`` or ``origin="history"``, and
the sliding window behind the SLA gauges holds live finals only, so a re-transcription run
neither drops the SLA gauge nor turns end-to-end latency into minutes.

Offsets are committed by the one consume loop (:func:`streamscribe.core.kafka.consume_batches`)
after each batch is observed: the figures live in memory, so a restart starts new
histograms anyway (Prometheus handles counter resets), and a replayed batch only counts
twice in figures that a restart would have reset.

Example::

    streamscribe metrics --metrics-port 9108 --window 5m
    curl -s http://127.0.0.1:9108/metrics | grep streamscribe_stage_latency_seconds_count
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from streamscribe.consumers.decode import ReadCounts
from streamscribe.consumers.latency import (
    ALL_SERIES,
    LIVE,
    ORIGINS,
    STAGES,
    LatencyWindow,
    SlaSpec,
    check_sla,
    origin_class,
    parse_window,
    series_values,
    stage_latencies,
)
from streamscribe.core.errors import ContractError, SinkError
from streamscribe.core.kafka import LoopStats, Subscription, consume_batches
from streamscribe.core.metrics import LATENCY_BUCKETS_S, new_registry
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import LatencyRecord, now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, decode_transcript

log = logging.getLogger(__name__)

GROUP_ROLE: Final = "metrics"  # group <prefix stem>-metrics (Settings.group_for)
DEFAULT_WINDOW: Final = "1000"
CLIENT_ID: Final = "streamscribe-metrics"
BATCH_SIZE: Final = 500
MS: Final = 1000.0
US: Final = 1_000_000.0
#: Lines whose last partial time is remembered (oldest forgotten first); far above live lines.
MAX_OPEN_LINES: Final = 10_000


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` (``port`` 0: a free one) in a
    daemon thread; returns the server (``server.server_port``; ``shutdown()`` stops it)."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise SinkError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    log.info("metrics: http://%s:%d/metrics", host, server.server_port)
    return server


def stop_server(server: Any) -> None:
    server.shutdown()
    server.server_close()


class StatsCollector(Collector):
    """Counters read at scrape time from a stats dataclass a loop already keeps.

    ``counters`` maps a field of ``stats`` to ``(metric name without _total, help)``;
    nothing is counted twice and the loop needs no Prometheus code.

    >>> @dataclass
    ... class S:
    ...     rows: int = 0
    >>> s = S(); r = CollectorRegistry()
    >>> r.register(StatsCollector(lambda: s, {"rows": ("demo_rows", "Rows written")}))
    >>> s.rows = 3
    >>> r.get_sample_value("demo_rows_total")
    3.0
    """

    def __init__(self, stats: Callable[[], object], counters: Mapping[str, tuple[str, str]]):
        self._stats = stats
        self._counters = dict(counters)

    def describe(self) -> Iterator[Metric]:
        for name, help_text in self._counters.values():
            yield CounterMetricFamily(name, help_text)

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for field, (name, help_text) in self._counters.items():
            yield CounterMetricFamily(name, help_text, value=float(getattr(stats, field)))


#: The consume loop's own counters (:class:`~streamscribe.core.kafka.LoopStats`).
LOOP_HELP: Final = {
    "batches": "Batches handled and committed",
    "messages": "Messages consumed",
    "kafka_errors": "Kafka error events seen by the consumer",
    "offset_commits": "Offset commits that succeeded",
    "offset_commit_failures": "Offset commits that failed (the batch is replayed)",
}


def loop_counters(prefix: str) -> dict[str, tuple[str, str]]:
    """:data:`LOOP_HELP` as :class:`StatsCollector` counters named for one process."""
    return {k: (f"streamscribe_{prefix}_{k}", h) for k, h in LOOP_HELP.items()}


class PartialIntervals:
    """Wall time between consecutive partials of one utterance (``published_at_us``).

    >>> p = PartialIntervals()
    >>> [p.interval_s(("s", 0, 0), t) for t in (1_000_000, 1_500_000, 2_250_000)]
    [None, 0.5, 0.75]
    >>> p.end(("s", 0, 0)); p.interval_s(("s", 0, 0), 3_000_000) is None
    True
    """

    def __init__(self, max_lines: int = MAX_OPEN_LINES) -> None:
        self.max_lines = max_lines
        self._last: dict[tuple[str, int, int], int] = {}

    def interval_s(self, line: tuple[str, int, int], published_us: int) -> float | None:
        last = self._last.pop(line, None)
        self._last[line] = published_us  # re-inserted: the dict's order is last use
        if len(self._last) > self.max_lines:
            del self._last[next(iter(self._last))]
        return None if last is None or published_us < last else (published_us - last) / US

    def end(self, line: tuple[str, int, int]) -> None:
        self._last.pop(line, None)


class LatencyMetrics:
    """Prometheus collectors (in their own registry) fed with finals; no Kafka.

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> m = LatencyMetrics(LatencyWindow(max_records=10), SlaSpec(450.0, 0.05))
    >>> f = FinalTranscript(session_id="s", channel=0, role="agent", utterance=0, revision=1,
    ...                     text="hi", start_ms=0.0, end_ms=1.0,
    ...                     timestamps={"captured_at_us": 0, "published_at_us": 100_000})
    >>> m.observe(f, received_at_us=120_000).end_to_end_ms
    120.0
    >>> b"streamscribe_latency_finals_total 1.0" in m.exposition()
    True

    With ``live_group`` (the live processor group), a final of another origin is observed
    under ``origin="history"`` and kept out of the SLA window; None = everything is live.
    """

    def __init__(
        self,
        window: LatencyWindow,
        sla: SlaSpec,
        registry: CollectorRegistry | None = None,
        *,
        live_group: str | None = None,
    ) -> None:
        self.window = window
        self.sla = sla
        self.live_group = live_group
        self.registry = registry or new_registry()
        r = self.registry
        self.latency = Histogram(
            "streamscribe_stage_latency_seconds",
            "Latency of a final per pipeline stage or span, live or re-transcribed history",
            ["stage", "origin"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.clamped = Counter(
            "streamscribe_latency_clamped",
            "Negative stage latencies (clock skew) clamped to 0",
            ["stage"],
            registry=r,
        )
        self.violation_ratio = Gauge(
            "streamscribe_sla_violation_ratio",
            "Share of finals over the SLA threshold in the sliding window (0-1)",
            ["series"],
            registry=r,
        )
        self.sla_ok = Gauge(
            "streamscribe_sla_ok",
            "1 if the violation ratio is within the allowed rate",
            ["series"],
            registry=r,
        )
        self.threshold = Gauge(
            "streamscribe_sla_threshold_seconds", "The SLA threshold", registry=r
        )
        self.window_size = Gauge(
            "streamscribe_latency_window_records", "Finals in the sliding window", registry=r
        )
        self.finals = Counter("streamscribe_latency_finals", "Finals observed", registry=r)
        self.partials = Counter("streamscribe_latency_partials", "Partials observed", registry=r)
        self.partial_interval = Histogram(
            "streamscribe_partial_interval_seconds",
            "Wall time between consecutive partials of one utterance (published_at_us)",
            ["origin"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._intervals = PartialIntervals()
        self.undecodable = Counter(
            "streamscribe_latency_undecodable",
            "Transcript values that did not decode",
            registry=r,
        )
        self.threshold.set(sla.threshold_ms / MS)
        for origin in ORIGINS:  # every series exported from the start, at 0
            self.partial_interval.labels(origin=origin)
            for stage in ALL_SERIES:
                self.latency.labels(stage=stage, origin=origin)
        for stage in STAGES:
            self.clamped.labels(stage=stage)
        for series in sla.series:
            self.violation_ratio.labels(series=series).set(0.0)
            self.sla_ok.labels(series=series).set(1.0)

    def observe_partial(self, partial: PartialTranscript) -> None:
        """Count one partial and the time since the utterance's previous one."""
        self.partials.inc()
        published = partial.timestamps.get("published_at_us")
        if published is None:
            return
        line = (partial.session_id, partial.channel, partial.utterance)
        interval = self._intervals.interval_s(line, published)
        if interval is not None:
            self.partial_interval.labels(origin=self.origin_of(partial.origin)).observe(interval)

    def origin_of(self, origin: str | None) -> str:
        """``live`` or ``history`` for a transcript's ``origin``."""
        return LIVE if self.live_group is None else origin_class(origin, self.live_group)

    def observe(self, final: FinalTranscript, received_at_us: int) -> LatencyRecord | None:
        """Record one final; ``received_at_us`` ends the ``publish_to_sink`` stage.

        Its stages go to the histograms under its origin; only a live final enters the
        SLA window."""
        self.finals.inc()
        self._intervals.end((final.session_id, final.channel, final.utterance))
        rec = stage_latencies(
            final.session_id,
            final.channel,
            final.utterance,
            final.timestamps,
            stored_at_us=received_at_us,
        )
        if rec is None:
            return None
        origin = self.origin_of(final.origin)
        for stage, value_ms in series_values(rec).items():
            self.latency.labels(stage=stage, origin=origin).observe(value_ms / MS)
        for stage in rec.clamped:
            self.clamped.labels(stage=stage).inc()
        if origin == LIVE:
            self.window.add(rec)
        return rec

    def refresh(self) -> None:
        """Recompute the window gauges (after each batch, not per final)."""
        records = self.window.records()
        self.window_size.set(len(records))
        for res in check_sla(records, self.sla):
            self.violation_ratio.labels(series=res.series).set(res.rate)
            self.sla_ok.labels(series=res.series).set(1.0 if res.ok else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class MetricsStats(ReadCounts):
    """Counters of one :meth:`MetricsService.run` (``messages``, ``finals``, ...)."""

    latency_records: int = 0


class MetricsService:
    """The consumer loop plus the HTTP endpoint; ``port=0`` picks a free port.

    Example::

        svc = MetricsService(settings, port=0)
        port = svc.start_http()          # serving /metrics on settings.metrics_host:port
        svc.run(stop_event=stop)         # until stop is set
        svc.close()
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        group_id: str | None = None,
        from_earliest: bool = False,
        window: str = DEFAULT_WINDOW,
        sla: SlaSpec | None = None,
        addr: str | None = None,
    ) -> None:
        self.settings = settings
        self.addr = settings.metrics_host if addr is None else addr
        self.requested_port = settings.metrics_port if port is None else port
        self.port = 0
        self.group_id = group_id or settings.group_for(GROUP_ROLE)
        self.from_earliest = from_earliest
        self.metrics = LatencyMetrics(
            parse_window(window),
            sla or SlaSpec(settings.sla_ms, settings.sla_violation_rate),
            live_group=settings.group_id,
        )
        self.stats = MetricsStats()
        self.loop_stats = LoopStats()
        self.metrics.registry.register(
            StatsCollector(lambda: self.loop_stats, loop_counters("latency_loop"))
        )
        self._server: Any = None

    def start_http(self) -> int:
        self._server = serve_metrics(self.metrics.registry, self.addr, self.requested_port)
        self.port = int(self._server.server_port)
        return self.port

    def handle(self, values: Sequence[bytes | None], received_at_us: int) -> None:
        """Observe one batch of raw transcript values: finals' latency, partials' interval.

        A value that does not decode is counted and logged (the sink dead-letters it).
        """
        for raw in values:
            self.stats.messages += 1
            try:
                event = decode_transcript(raw if raw is not None else b"")
            except ContractError as exc:
                self.stats.undecodable += 1
                self.metrics.undecodable.inc()
                log.warning("undecodable transcript (the sink dead-letters it): %s", exc.reason)
                continue
            if isinstance(event, PartialTranscript):
                self.metrics.observe_partial(event)
                continue
            self.stats.finals += 1
            if self.metrics.observe(event, received_at_us) is not None:
                self.stats.latency_records += 1
        self.metrics.refresh()

    def run(
        self, *, stop_event: threading.Event | None = None, max_idle_s: float | None = None
    ) -> MetricsStats:
        """Observe transcripts until stopped (signal, ``stop_event`` or ``max_idle_s``)."""
        topics = Topics(self.settings.topic_prefix)
        sub = Subscription([topics.transcripts], self.group_id, CLIENT_ID, self.from_earliest)
        consume_batches(
            self.settings,
            sub,
            lambda msgs: self.handle([m.value() for m in msgs], now_us()),
            batch_size=BATCH_SIZE,
            max_idle_s=max_idle_s,
            stop_event=stop_event,
            stats=self.loop_stats,
        )
        return self.stats

    def close(self) -> None:
        if self._server is not None:
            stop_server(self._server)
            self._server = None


def run_metrics(
    settings: Settings,
    *,
    port: int | None = None,
    group_id: str | None = None,
    from_earliest: bool = False,
    window: str = DEFAULT_WINDOW,
    max_idle_s: float | None = None,
    stop_event: threading.Event | None = None,
) -> MetricsStats:
    """Serve ``/metrics`` and consume transcripts until stopped (SIGTERM/SIGINT, event, idle)."""
    svc = MetricsService(
        settings, port=port, group_id=group_id, from_earliest=from_earliest, window=window
    )
    svc.start_http()
    try:
        return svc.run(stop_event=stop_event, max_idle_s=max_idle_s)
    finally:
        svc.close()
