"""The worker's ``/metrics``: what the built stages already count, read at scrape time.

The stages keep plain counters (:class:`~streamscribe.processors.recognizer_core.RecognizerStats`,
:class:`~streamscribe.processors.decode_scheduler.SchedulerStats`, the segmenter's
``stats`` dict) and need no Prometheus code: :class:`WorkerCollector` turns them into
counters and gauges when Prometheus scrapes, so nothing is counted twice and the stream
loop does no extra work. Consumer lag is read by :class:`LagProbe`, a faust timer that
asks the app's own consumer for its positions and the broker's high watermarks (both
already known to the client: no broker round trip) every ``LAG_INTERVAL_S``. Two durations
are histograms (:class:`WorkerTimings`): a batched partial decode, timed around the
scheduler's batch call in the executor thread, and a table restore, from faust's
``on_partitions_assigned`` signal (tables' recovery starts) to its ``on_rebalance_complete``
signal (every active table caught up with its changelog).

Names (all documented in ``docs/metrics.md``)::

    streamscribe_segmenter_{chunks,batches,dead_letters}_total, streamscribe_segmenter_channels
    streamscribe_segmenter_sessions (live sessions)
    streamscribe_recognizer_<RecognizerStats field>_total, streamscribe_recognizer_open_lines
    streamscribe_decode_<SchedulerStats field>_total, streamscribe_decode_queue_depth
    streamscribe_decode_partial_batch_seconds, streamscribe_worker_table_restore_seconds
    streamscribe_stage_dead_letters_total{stage,reason}
    streamscribe_stage_dead_letter_send_failures_total{stage}
    streamscribe_worker_messages_{received,sent}_total{topic}, streamscribe_worker_rebalances_total
    streamscribe_consumer_lag{topic,partition}, process_* (CPU seconds, memory)

The HTTP server runs in a daemon thread and only reads ints the event loop writes.

Example::

    streamscribe worker --metrics-host 0.0.0.0 --metrics-port 9109
    curl -s localhost:9109/metrics | grep streamscribe_decode_queue_depth
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from streamscribe.core.errors import ProcessorError
from streamscribe.core.metrics import LATENCY_BUCKETS_S, new_registry
from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import DEAD_LETTER_FAILURES, DEAD_LETTERS

log = logging.getLogger(__name__)

LAG_INTERVAL_S: Final = 5.0
SEGMENTER_STAGE: Final = "segmenter"  # the ``stage`` of the agents' dead letters
RECOGNIZER_STAGE: Final = "recognizer"
#: Buckets (seconds) of a table restore: an empty changelog takes milliseconds, a big one
#: minutes; the speech-latency buckets would put every long restore in +Inf.
RESTORE_BUCKETS_S: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"),
)  # fmt: skip
#: The low-cardinality ``reason`` of a dead letter, from the error type that caused it
#: (the exception tree of ``streamscribe/core/errors.py``); any other type is ``other``.
DEAD_LETTER_REASONS: Final = {
    "ContractError": "undecodable",  # a value breaks the contract (not an AudioChunk, ...)
    "ValidationError": "invalid_audio",  # NaN, bad length, unknown rate, forged position...
    "SegmenterError": "segmenter_failed",  # a channel's state could not be advanced
    "AsrError": "asr_failed",  # a final failed to decode after retries
    "AsrModelError": "asr_failed",
    "AsrInputError": "asr_failed",
}
DEAD_LETTER_OTHER: Final = "other"
#: Every reason label, in the order the series are exported (each at 0 from the start).
DEAD_LETTER_REASON_LABELS: Final = (
    *dict.fromkeys(DEAD_LETTER_REASONS.values()),
    DEAD_LETTER_OTHER,
)

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
    "not_live": "Updates of sessions not watched live (replays): no partial, no speculation",
    "retired": "Done markers of finished lines tombstoned (no replay needs them any more)",
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
    "final_batches": "Batched decoder runs of finals (replays, or live ones while behind)",
    "behind_batches": "Of those, batches of live finals: a final had waited final_behind_ms",
    "batched_finals": "Finals decoded in a batch (batched_finals / final_batches = batch size)",
}


DRAFT_COUNTERS: Final = {
    "decodes": "Segments decoded by the model (finals, speculations, partial segments)",
    "drafted": "Of those, decoded with a draft: the tokens of the line's earlier decodes",
    "tokens": "Tokens those decodes gave",
    "draft_tokens": "Of those, taken from a draft (checked in one run, not one by one)",
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


def dead_letter_reason(error_type: str) -> str:
    """The ``reason`` label of a dead letter caused by ``error_type``.

    >>> dead_letter_reason("ValidationError"), dead_letter_reason("KeyError")
    ('invalid_audio', 'other')
    """
    return DEAD_LETTER_REASONS.get(error_type, DEAD_LETTER_OTHER)


def _dead_letters(
    sent: dict[tuple[str, str], int], failed: dict[str, int], stages: Iterable[str] = ()
) -> Iterator[Metric]:
    """Dead letters by stage and reason, and those that could not be sent, by stage; every
    series of the ``stages`` this worker runs is exported from the start, at 0."""
    stages = list(stages)
    by_reason = {(s, r): 0 for s in stages for r in DEAD_LETTER_REASON_LABELS}
    failed = {**dict.fromkeys(stages, 0), **dict.copy(failed)}
    for (stage, error_type), n in dict.copy(sent).items():  # one atomic copy
        key = (stage, dead_letter_reason(error_type))
        by_reason[key] = by_reason.get(key, 0) + n
    family = CounterMetricFamily(
        "streamscribe_stage_dead_letters",
        "Messages sent to the dead-letter topic, by stage and reason",
        labels=["stage", "reason"],
    )
    for (stage, reason), n in sorted(by_reason.items()):
        family.add_metric([stage, reason], float(n))
    yield family
    failures = CounterMetricFamily(
        "streamscribe_stage_dead_letter_send_failures",
        "Dead letters that could not be sent, even without their raw bytes (logged)",
        labels=["stage"],
    )
    for stage, n in sorted(failed.items()):
        failures.add_metric([stage], float(n))
    yield failures


class WorkerTimings:
    """The worker's duration histograms, in ``registry``.

    ``streamscribe_decode_partial_batch_seconds``: one batched partial decoder run (the
    scheduler's ``decode_batch``, in the partial executor's thread; queueing excluded).
    ``streamscribe_worker_table_restore_seconds``: from the assignment of partitions (faust's
    ``on_partitions_assigned``, sent once the tables' recovery has been started) to the end
    of recovery (``on_rebalance_complete``): the time to read every active table's
    changelog up to its high watermark; a rebalance during recovery restarts the clock.
    """

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.partial_batch = Histogram(
            "streamscribe_decode_partial_batch_seconds",
            "One batched partial decoder run (queueing excluded)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.table_restore = Histogram(
            "streamscribe_worker_table_restore_seconds",
            "Partitions assigned to every active table restored from its changelog",
            buckets=RESTORE_BUCKETS_S,
            registry=registry,
        )
        self._assigned_at: float | None = None

    def time_partial_batches(self, scheduler: Any) -> None:
        """Time ``scheduler.decode_batch`` (idempotent: a timed batch call is not re-wrapped)."""
        batch = scheduler.decode_batch
        if getattr(batch, "_timed_by", None) is self:
            return
        observe = self.partial_batch.observe

        def timed(items: Any) -> Any:
            start = time.perf_counter()
            try:
                return batch(items)
            finally:
                observe(time.perf_counter() - start)

        timed._timed_by = self  # type: ignore[attr-defined]
        scheduler.decode_batch = timed

    def restore_started(self, *_args: Any, **_kw: Any) -> None:
        self._assigned_at = self.clock()

    def restore_completed(self, *_args: Any, **_kw: Any) -> None:
        if self._assigned_at is not None:
            self.table_restore.observe(max(0.0, self.clock() - self._assigned_at))
            self._assigned_at = None

    def install(self, app: Any) -> None:
        """Connect the restore clock to ``app``'s rebalance signals (a faust app)."""

        async def assigned(*args: Any, **kw: Any) -> None:
            self.restore_started()

        async def complete(*args: Any, **kw: Any) -> None:
            self.restore_completed()

        app.on_partitions_assigned.connect(assigned, weak=False)
        app.on_rebalance_complete.connect(complete, weak=False)


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
        names: list[str] = []
        for stage in self.stages:
            if hasattr(stage, "scheduler") and hasattr(stage, "core"):
                names.append(RECOGNIZER_STAGE)
                yield from self._recognizer(stage)
            elif isinstance(getattr(stage, "stats", None), Mapping):
                names.append(SEGMENTER_STAGE)
                yield from _counters("streamscribe_segmenter", stage.stats, SEGMENTER_COUNTERS)
                yield _gauge(
                    "streamscribe_segmenter_channels",
                    "Channel states held in memory by the segmenter",
                    len(stage.states),
                )
                yield _gauge(
                    "streamscribe_segmenter_sessions",
                    "Live sessions of this worker: sessions with a channel state held",
                    stage.states.session_count(),
                )
        yield from _dead_letters(DEAD_LETTERS, DEAD_LETTER_FAILURES, names)
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
        if (drafts := getattr(stage, "drafts", None)) is not None:
            yield from _counters("streamscribe_asr_draft", drafts.stats, DRAFT_COUNTERS)
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
    """A registry with :class:`WorkerCollector`, the process collector and the
    :class:`WorkerTimings` histograms; no ``_created``.

    The recognizer's partial batches are timed from here on; the restore clock is connected
    to ``app``'s signals when it is a faust app.
    """
    stages = list(stages)
    registry = new_registry(auto_describe=False)
    registry.register(WorkerCollector(stages, lag, app))
    timings = WorkerTimings(registry)
    for stage in stages:
        if hasattr(stage, "scheduler"):
            timings.time_partial_batches(stage.scheduler)
    if app is not None and hasattr(app, "on_rebalance_complete"):
        timings.install(app)
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
