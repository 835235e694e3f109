"""``streamscribe metrics``: per-stage latency of finals as Prometheus metrics.

A consumer group of its own (default ``streamscribe-metrics``) reads
``streamscribe.transcripts``; for every final it computes a
:class:`~streamscribe.schemas.events.LatencyRecord` with its own receive time as the sink
time (``publish_to_sink``; the sink stores its own ``stored_at_us``, which
``latency-report`` uses). Exposed at ``http://127.0.0.1:PORT/metrics``:

=============================================  ==========================================
``streamscribe_stage_latency_ms{stage}``       histogram per stage / span, ms buckets
``streamscribe_latency_clamped_total{stage}``  negative (clock-skew) steps clamped to 0
``streamscribe_stage_latency_window_ms``       ``{stage, quantile}`` p50/p95/p99, window
``streamscribe_sla_violation_rate{series}``    share over the SLA threshold, window
``streamscribe_sla_ok{series}``                1 if that share is within the allowed rate
``streamscribe_sla_threshold_ms``              the threshold (``Settings.sla_ms``)
``streamscribe_finals_total``                  finals seen
``streamscribe_undecodable_total``             values that did not decode (the sink
                                               dead-letters them; this one only counts)
=============================================  ==========================================

Offsets are committed by the one consume loop (:func:`streamscribe.core.kafka.consume_batches`)
after each batch is observed: the figures live in memory, so a restart starts new
histograms anyway (Prometheus handles counter resets), and a replayed batch only counts
twice in figures that a restart would have reset.

Example::

    streamscribe metrics --port 9108 --window 5m
    curl -s http://127.0.0.1:9108/metrics | grep streamscribe_stage_latency_ms_count
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from streamscribe.consumers.decode import ReadCounts, finals_of
from streamscribe.consumers.latency import (
    ALL_SERIES,
    QUANTILES,
    STAGES,
    LatencyWindow,
    SlaSpec,
    check_sla,
    parse_window,
    series_values,
    stage_latencies,
    summarize,
)
from streamscribe.core.errors import SinkError
from streamscribe.core.kafka import LoopStats, Subscription, consume_batches
from streamscribe.core.settings import Settings
from streamscribe.schemas.events import LatencyRecord, now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript

log = logging.getLogger(__name__)

DEFAULT_GROUP_ID: Final = "streamscribe-metrics"
DEFAULT_WINDOW: Final = "1000"
CLIENT_ID: Final = "streamscribe-metrics"
BATCH_SIZE: Final = 500
#: Histogram buckets (ms): fine below the 450 ms SLA, coarse up to a minute.
BUCKETS_MS: Final = (
    1, 2.5, 5, 10, 25, 50, 75, 100, 150, 200, 300, 450, 600, 800, 1000, 1500, 2000, 3000,
    5000, 10000, 30000, 60000, math.inf,
)  # fmt: skip


class LatencyMetrics:
    """Prometheus collectors (in their own registry) fed with finals; no Kafka.

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> m = LatencyMetrics(LatencyWindow(max_records=10), SlaSpec(450.0, 0.05))
    >>> f = FinalTranscript(session_id="s", channel=0, role="agent", utterance=0, revision=1,
    ...                     text="hi", start_ms=0.0, end_ms=1.0,
    ...                     timestamps={"captured_at_us": 0, "published_at_us": 100_000})
    >>> m.observe(f, received_at_us=120_000).end_to_end_ms
    120.0
    >>> b"streamscribe_finals_total 1.0" in m.exposition()
    True
    """

    def __init__(
        self, window: LatencyWindow, sla: SlaSpec, registry: CollectorRegistry | None = None
    ) -> None:
        self.window = window
        self.sla = sla
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "streamscribe_stage_latency_ms",
            "Latency of a final per pipeline stage or span, ms",
            ["stage"],
            buckets=BUCKETS_MS,
            registry=r,
        )
        self.clamped = Counter(
            "streamscribe_latency_clamped",
            "Negative stage latencies (clock skew) clamped to 0",
            ["stage"],
            registry=r,
        )
        self.window_q = Gauge(
            "streamscribe_stage_latency_window_ms",
            "Stage latency quantiles over the sliding window, ms",
            ["stage", "quantile"],
            registry=r,
        )
        self.violation_rate = Gauge(
            "streamscribe_sla_violation_rate",
            "Share of finals over the SLA threshold in the sliding window",
            ["series"],
            registry=r,
        )
        self.sla_ok = Gauge(
            "streamscribe_sla_ok",
            "1 if the violation rate is within the allowed rate",
            ["series"],
            registry=r,
        )
        self.threshold = Gauge("streamscribe_sla_threshold_ms", "The SLA threshold, ms", registry=r)
        self.window_size = Gauge(
            "streamscribe_window_records", "Records in the sliding window", registry=r
        )
        self.finals = Counter("streamscribe_finals", "Finals observed", registry=r)
        self.undecodable = Counter(
            "streamscribe_undecodable", "Transcript values that did not decode", registry=r
        )
        self.threshold.set(sla.threshold_ms)
        for stage in ALL_SERIES:  # every series exported from the start, at 0
            self.latency.labels(stage=stage)
        for stage in STAGES:
            self.clamped.labels(stage=stage)
        for series in sla.series:
            self.violation_rate.labels(series=series).set(0.0)
            self.sla_ok.labels(series=series).set(1.0)

    def observe(self, final: FinalTranscript, received_at_us: int) -> LatencyRecord | None:
        """Record one final; ``received_at_us`` ends the ``publish_to_sink`` stage."""
        self.finals.inc()
        rec = stage_latencies(
            final.session_id,
            final.channel,
            final.utterance,
            final.timestamps,
            stored_at_us=received_at_us,
        )
        if rec is None:
            return None
        for stage, value in series_values(rec).items():
            self.latency.labels(stage=stage).observe(value)
        for stage in rec.clamped:
            self.clamped.labels(stage=stage).inc()
        self.window.add(rec)
        return rec

    def refresh(self) -> None:
        """Recompute the window gauges (after each batch, not per final)."""
        records = self.window.records()
        self.window_size.set(len(records))
        for name, summary in summarize(records).items():
            if summary.count == 0 or name not in ALL_SERIES:
                continue
            for q, v in zip(QUANTILES, (summary.p50, summary.p95, summary.p99), strict=True):
                self.window_q.labels(stage=name, quantile=f"{q:g}").set(v)
        for res in check_sla(records, self.sla):
            self.violation_rate.labels(series=res.series).set(res.rate)
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
        port = svc.start_http()          # serving /metrics on 127.0.0.1:port
        svc.run(stop_event=stop)         # until stop is set
        svc.close()
    """

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        group_id: str = DEFAULT_GROUP_ID,
        from_earliest: bool = False,
        window: str = DEFAULT_WINDOW,
        sla: SlaSpec | None = None,
        addr: str = "127.0.0.1",
    ) -> None:
        self.settings = settings
        self.addr = addr
        self.requested_port = settings.metrics_port if port is None else port
        self.port = 0
        self.group_id = group_id
        self.from_earliest = from_earliest
        self.metrics = LatencyMetrics(
            parse_window(window),
            sla or SlaSpec(settings.sla_ms, settings.sla_violation_rate),
        )
        self.stats = MetricsStats()
        self.loop_stats = LoopStats()
        self._server: Any = None

    def start_http(self) -> int:
        try:
            server, _thread = start_http_server(
                self.requested_port, addr=self.addr, registry=self.metrics.registry
            )
        except OSError as exc:
            where = f"{self.addr}:{self.requested_port}"
            raise SinkError(f"cannot serve metrics on {where}: {exc}") from None
        self._server = server
        self.port = int(server.server_port)
        log.info("metrics: http://%s:%d/metrics", self.addr, self.port)
        return self.port

    def handle(self, values: Sequence[bytes | None], received_at_us: int) -> None:
        """Observe one batch of raw transcript values (partials are ignored)."""
        undecodable = self.stats.undecodable
        for final in finals_of(values, self.stats):
            if self.metrics.observe(final, received_at_us) is not None:
                self.stats.latency_records += 1
        self.metrics.undecodable.inc(self.stats.undecodable - undecodable)
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
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def run_metrics(
    settings: Settings,
    *,
    port: int | None = None,
    group_id: str = DEFAULT_GROUP_ID,
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
