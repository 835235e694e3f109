"""The worker's ``/metrics``: what the built stages already count, read at scrape time.

The stages keep plain counters (:class:`~streamscribe.processors.recognizer_core.RecognizerStats`,
:class:`~streamscribe.processors.decode_scheduler.SchedulerStats`, the segmenter's
``stats`` dict) and need no Prometheus code: :class:`WorkerCollector` turns them into
counters and gauges when Prometheus scrapes, so nothing is counted twice and the stream
loop does no extra work. Consumer lag is read by :class:`LagProbe`, a faust timer that
asks the app's own consumer for its positions and the broker's high watermarks (both
already known to the client: no broker round trip) every ``LAG_INTERVAL_S``.

Names (all documented in ``docs/metrics.md``)::

    streamscribe_segmenter_{chunks,batches,dead_letters}_total, streamscribe_segmenter_channels
    streamscribe_recognizer_<RecognizerStats field>_total, streamscribe_recognizer_open_lines
    streamscribe_decode_<SchedulerStats field>_total, streamscribe_decode_queue_depth
    streamscribe_worker_messages_{received,sent}_total{topic}, streamscribe_worker_rebalances_total
    streamscribe_consumer_lag{topic,partition}, process_* (CPU seconds, memory)

The HTTP server runs in a daemon thread and only reads ints the event loop writes.

Example::

    streamscribe worker --metrics-host 0.0.0.0 --metrics-port 9109
    curl -s localhost:9109/metrics | grep streamscribe_decode_queue_depth
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from streamscribe.core.errors import ProcessorError
from streamscribe.core.settings import Settings

log = logging.getLogger(__name__)

LAG_INTERVAL_S: Final = 5.0

SEGMENTER_COUNTERS: Final = {
    "chunks": "Audio chunks accepted by the segmenter (rejected and replayed ones excluded)",
    "batches": "Batches of audio events handled by the segmenter",
    "dead_letters": "Messages the segmenter sent to the dead-letter topic",
}
RECOGNIZER_COUNTERS: Final = {
    "finals": "Finals published with a text",
    "partials": "Partials published",
    "duplicates": "Utterance messages ignored as duplicates or late parts",
    "errors": "Finals that failed to decode after retries (published with an error)",
    "foreign": "Utterance messages of another processor group, ignored",
    "speculations": "Speculative final decodes started at a pause",
    "speculative_finals": "Finals whose text came from a speculative decode",
    "speculations_discarded": "Speculative decodes discarded (speech went on)",
    "behind": "Updates older than the partial lag bound: no partial, no speculation",
}
DECODE_COUNTERS: Final = {
    "finals": "Final decodes run",
    "partials": "Partial decodes run",
    "coalesced": "Partial requests replaced by a newer one of the same line while queued",
    "shed": "Partial requests dropped as stale before decoding",
    "retries": "Decode retries after a model error",
    "speculative": "Speculative final decodes run",
    "speculative_dropped": "Speculative decodes dropped while queued (speech resumed)",
    "partial_batches": "Batched partial decoder runs (partials / partial_batches = batch size)",
    "speculative_skipped": "Speculative decodes not started: every finals slot was busy",
}


def _counters(prefix: str, stats: Any, helps: Mapping[str, str]) -> Iterator[Metric]:
    values = stats if isinstance(stats, Mapping) else vars(stats)
    for field, help_text in helps.items():
        value = values.get(field)
        if value is not None:
            yield CounterMetricFamily(f"{prefix}_{field}", help_text, value=float(value))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=float(value))


def _monitor(monitor: Any) -> Iterator[Metric]:
    """The faust app's own sensor (:class:`faust.Monitor`): messages per topic, rebalances."""
    for name, help_text, counts in (
        ("received", "Messages the worker consumed, per topic", monitor.messages_received_by_topic),
        ("sent", "Messages the worker produced, per topic", monitor.messages_sent_by_topic),
    ):
        family = CounterMetricFamily(
            f"streamscribe_worker_messages_{name}", help_text, labels=["topic"]
        )
        for topic, value in sorted(dict.copy(counts).items()):  # one atomic copy
            family.add_metric([str(topic)], float(value))
        yield family
    yield CounterMetricFamily(
        "streamscribe_worker_send_errors", "Produce requests that failed", value=monitor.send_errors
    )
    yield CounterMetricFamily(
        "streamscribe_worker_rebalances", "Consumer group rebalances seen", value=monitor.rebalances
    )


class LagProbe:
    """Consumer lag per assigned partition, refreshed from the faust app's consumer.

    ``refresh`` runs on the event loop (a faust timer): ``lag = high watermark - position``
    for every assigned partition with both known; :attr:`lag` is a fresh dict each time, so
    the scrape thread reads a consistent snapshot.
    """

    def __init__(self) -> None:
        self.lag: dict[tuple[str, int], int] = {}

    async def refresh(self, consumer: Any) -> None:
        tps = list(consumer.assignment())
        highwaters = await consumer.highwaters(*tps) if tps else {}
        lag: dict[tuple[str, int], int] = {}
        for tp in tps:
            high, position = highwaters.get(tp), await consumer.position(tp)
            if high is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, int(high) - int(position))
        self.lag = lag

    def install(self, app: Any, interval_s: float = LAG_INTERVAL_S) -> None:
        """Register the refresh as a timer of ``app`` (before the app is finalised)."""

        @app.timer(interval=interval_s)
        async def consumer_lag() -> None:
            if app.started:
                await self.refresh(app.consumer)


class WorkerCollector(Collector):
    """The stages' own counters as Prometheus metrics, read at each scrape.

    A stage is recognised by what it carries: ``core.stats`` and ``scheduler`` (the
    recognizer), ``states`` and a ``stats`` dict (the segmenter).
    """

    def __init__(self, stages: Iterable[Any], lag: LagProbe | None = None, app: Any = None) -> None:
        self.stages = list(stages)
        self.lag = lag
        self.app = app

    def collect(self) -> Iterator[Metric]:
        for stage in self.stages:
            if hasattr(stage, "scheduler") and hasattr(stage, "core"):
                yield from self._recognizer(stage)
            elif isinstance(getattr(stage, "stats", None), Mapping):
                yield from _counters("streamscribe_segmenter", stage.stats, SEGMENTER_COUNTERS)
                yield _gauge(
                    "streamscribe_segmenter_channels",
                    "Channel states held in memory by the segmenter",
                    len(stage.states),
                )
        if self.app is not None and self.app.started:  # its monitor exists once started
            yield from _monitor(self.app.monitor)
        if self.lag is not None:
            lag = GaugeMetricFamily(
                "streamscribe_consumer_lag",
                "Messages behind the high watermark, per assigned partition",
                labels=["topic", "partition"],
            )
            for (topic, partition), value in sorted(self.lag.lag.items()):
                lag.add_metric([topic, str(partition)], float(value))
            yield lag

    def _recognizer(self, stage: Any) -> Iterator[Metric]:
        core, scheduler = stage.core, stage.scheduler
        yield from _counters("streamscribe_recognizer", core.stats, RECOGNIZER_COUNTERS)
        yield from _counters("streamscribe_decode", scheduler.stats, DECODE_COUNTERS)
        yield _gauge(
            "streamscribe_recognizer_open_lines",
            "Open lines (utterances being recognised) held in memory",
            len(core),
        )
        yield _gauge(
            "streamscribe_decode_queue_depth",
            "Decode jobs waiting (finals, speculative finals and partials)",
            scheduler.backlog,
        )


def worker_registry(
    stages: Iterable[Any], lag: LagProbe | None = None, app: Any = None
) -> CollectorRegistry:
    """A registry with :class:`WorkerCollector` and the process collector; no ``_created``."""
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(WorkerCollector(stages, lag, app))
    return registry


def start_worker_metrics(app: Any, stages: Iterable[Any], settings: Settings) -> Any:
    """Serve the worker's metrics on ``settings.metrics_host:process_metrics_port`` (a daemon
    thread) and install the lag timer on ``app``; returns the HTTP server."""
    lag = LagProbe()
    lag.install(app)
    port = settings.process_metrics_port or 0
    try:
        server, _thread = start_http_server(
            port, addr=settings.metrics_host, registry=worker_registry(stages, lag, app)
        )
    except OSError as exc:
        where = f"{settings.metrics_host}:{port}"
        raise ProcessorError(f"cannot serve metrics on {where}: {exc}") from None
    log.info("worker metrics: http://%s:%d/metrics", settings.metrics_host, server.server_port)
    return server
