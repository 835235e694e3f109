"""Per-stage latency of a final transcript, percentiles and the SLA check (pure, no Kafka).

A final carries epoch-µs ``timestamps`` in :data:`TIMESTAMP_ORDER`; the sink (or the
metrics service) adds its own time as ``stored_at_us``. The stages are the consecutive
differences of that chain::

    captured ─edge_to_broker─► broker ─broker_to_processor─► received
      ─processor_to_decision─► decided ─decision_to_decode─► decode_start ─decode─►
      decode_end ─decode_to_publish─► published ─publish_to_sink─► stored

and ``end_to_end`` is captured → stored. Derived spans add consecutive stages; the default
SLA span ``eos_to_final`` (end of speech decided → final published) is
``decision_to_decode + decode + decode_to_publish``.

Clock skew (edge, broker and workers have different clocks) can make a step negative.
Such a stage is **clamped to 0 and counted** (named in ``LatencyRecord.clamped``), and the
chain carries on from the clamped time, i.e. the stages are the differences of the
running maximum of the timestamps. They therefore still telescope exactly::

    sum(stages) == end_to_end == max(timestamps) - captured_at_us

which is ``stored - captured`` whenever the sink's time is the latest one (the normal
case); the skew is absorbed by the stage after the clamped one instead of inflating the
total. A missing intermediate timestamp merges its span into the next present stage (the
stage that ends at the missing time is absent from ``stages_ms``).

**Speculative finals** (``STREAMSCRIBE_SPECULATIVE_FINALS``, on by default): the final's
``decode_start_us`` / ``decode_end_us`` are those of the decode started on the end-candidate
update, *before* the segmenter's silence decision (``decided_at_us``). So
``decision_to_decode`` is negative by design and is clamped to 0 (and named in ``clamped``,
like skew), and ``decode`` is the part of the decode still running after the decision (0,
also clamped, when it finished before it). Nothing is lost or double-counted:
``eos_to_final`` stays ``published - decided`` (what the caller waits after the decision,
now mostly the publish), and ``end_to_end`` stays ``stored - captured``. With speculation
on, a clamp of those two stages is the overlap, not clock skew; the decode's own duration is
``decode_end_us - decode_start_us`` in the raw timestamps.

Example::

    >>> ts = {"captured_at_us": 0, "broker_at_us": 2_000, "received_at_us": 1_000,
    ...       "decided_at_us": 5_000, "decode_start_us": 6_000, "decode_end_us": 56_000,
    ...       "published_at_us": 57_000}
    >>> rec = stage_latencies("s", 0, 1, ts, stored_at_us=60_000)
    >>> rec.stages_ms["broker_to_processor"], rec.clamped, rec.end_to_end_ms
    (0.0, ['broker_to_processor'], 60.0)
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from streamscribe.schemas.events import LatencyRecord
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER

log = logging.getLogger(__name__)

STORED_AT: Final = "stored_at_us"
#: The full timestamp chain: the contract's order plus the sink's time.
CHAIN: Final = (*TIMESTAMP_ORDER, STORED_AT)
#: Stage names, one per consecutive pair of :data:`CHAIN` (the stage ends at ``CHAIN[i+1]``).
STAGES: Final = (
    "edge_to_broker",
    "broker_to_processor",
    "processor_to_decision",
    "decision_to_decode",
    "decode",
    "decode_to_publish",
    "publish_to_sink",
)
END_TO_END: Final = "end_to_end"
EOS_TO_FINAL: Final = "eos_to_final"
#: Derived spans: sums of consecutive stages.
SPANS: Final[Mapping[str, tuple[str, ...]]] = {
    EOS_TO_FINAL: ("decision_to_decode", "decode", "decode_to_publish"),
}
#: Every name a report shows, in pipeline order.
ALL_SERIES: Final = (*STAGES, EOS_TO_FINAL, END_TO_END)
DEFAULT_SLA_SPAN: Final = EOS_TO_FINAL
QUANTILES: Final = (0.5, 0.95, 0.99)
#: ``numpy.quantile`` method of every percentile here (numpy's default, type 7).
QUANTILE_METHOD: Final = "linear"

assert len(STAGES) == len(CHAIN) - 1

#: Where a transcript comes from, as consumers tell it (the ``origin`` label of metrics).
LIVE: Final = "live"  # the live pipeline's processors (``Settings.group_id``)
HISTORY: Final = "history"  # a re-transcription group reading old audio
ORIGINS: Final = (LIVE, HISTORY)


def origin_class(origin: str | None, live_group: str) -> str:
    """:data:`LIVE` or :data:`HISTORY` for a transcript's ``origin`` (its processor group).

    The live pipeline's group is ``live_group`` (``Settings.group_id`` of the consumer: the
    same ``STREAMSCRIBE_GROUP_ID`` / topic prefix as its worker); any other group is a
    re-transcription of history (``streamscribe worker --group-id retranscribe-...``). An
    event without an origin (published before the field existed) counts as live.

    >>> origin_class("streamscribe-processors", "streamscribe-processors")
    'live'
    >>> origin_class("retranscribe-2026-11", "streamscribe-processors"), origin_class(None, "g")
    ('history', 'live')

    The first transcript of each other group is logged (a warning, once per group and
    process): were that group the live worker's, the consumer is set up with another live
    group (``--live-group`` / ``STREAMSCRIBE_GROUP_ID``) and would leave live traffic out.
    """
    if origin is None or origin == live_group:
        return LIVE
    if (live_group, origin) not in _REPORTED and len(_REPORTED) < MAX_REPORTED_ORIGINS:
        _REPORTED.add((live_group, origin))
        log.warning(
            "transcripts of processor group %r are taken as re-transcribed history (the live"
            " group is %r; if %r is the live worker's, give --live-group %s or"
            " STREAMSCRIBE_GROUP_ID)",
            origin,
            live_group,
            origin,
            origin,
        )
    return HISTORY


#: Foreign origins logged at most once each, up to this many per process.
MAX_REPORTED_ORIGINS: Final = 100
_REPORTED: set[tuple[str, str]] = set()


def stage_latencies(
    session_id: str,
    channel: int,
    utterance: int,
    timestamps: Mapping[str, int],
    *,
    stored_at_us: int | None = None,
) -> LatencyRecord | None:
    """The :class:`LatencyRecord` of one final, or ``None`` with fewer than 2 timestamps.

    ``stored_at_us`` is the sink's time (``publish_to_sink`` ends there); without it the
    chain ends at ``published_at_us``.
    """
    chain = dict(timestamps)
    if stored_at_us is not None:
        chain[STORED_AT] = stored_at_us
    present = [(i, int(chain[k])) for i, k in enumerate(CHAIN) if chain.get(k) is not None]
    if len(present) < 2:
        return None
    stages: dict[str, float] = {}
    clamped: list[str] = []
    _, level = present[0]
    start = level
    for i, t in present[1:]:
        name = STAGES[i - 1]
        if t < level:
            clamped.append(name)
            stages[name] = 0.0
        else:
            stages[name] = (t - level) / 1000.0
            level = t
    return LatencyRecord(
        session_id=session_id,
        channel=channel,
        utterance=utterance,
        stages_ms=stages,
        end_to_end_ms=(level - start) / 1000.0,
        clamped=clamped,
    )


def series_values(record: LatencyRecord) -> dict[str, float]:
    """Stages, derived spans (when all their stages are present) and end to end, in ms."""
    out = dict(record.stages_ms)
    for span, parts in SPANS.items():
        if all(p in record.stages_ms for p in parts):
            out[span] = sum(record.stages_ms[p] for p in parts)
    out[END_TO_END] = record.end_to_end_ms
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1), linear interpolation (``numpy.quantile``'s default); NaN if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    if not values:
        return math.nan
    return float(np.quantile(values, q, method=QUANTILE_METHOD))


@dataclass(frozen=True)
class StageSummary:
    """Count, p50/p95/p99 and max of one stage or span (ms)."""

    name: str
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, name: str, values: Sequence[float]) -> StageSummary:
        if not values:
            return cls(name, 0, math.nan, math.nan, math.nan, math.nan)
        p50, p95, p99 = np.quantile(values, QUANTILES, method=QUANTILE_METHOD).tolist()
        return cls(name=name, count=len(values), p50=p50, p95=p95, p99=p99, max=max(values))


def summarize(records: Iterable[LatencyRecord]) -> dict[str, StageSummary]:
    """Per-series summaries over ``records``, in :data:`ALL_SERIES` order (empty ones kept)."""
    values: dict[str, list[float]] = {name: [] for name in ALL_SERIES}
    for rec in records:
        for name, v in series_values(rec).items():
            values.setdefault(name, []).append(v)
    return {name: StageSummary.of(name, vs) for name, vs in values.items()}


@dataclass(frozen=True)
class SlaSpec:
    """Threshold (ms) on some series and the allowed share of records above it."""

    threshold_ms: float
    max_violation_rate: float
    series: tuple[str, ...] = (DEFAULT_SLA_SPAN, END_TO_END)


@dataclass(frozen=True)
class SlaResult:
    series: str
    threshold_ms: float
    count: int
    violations: int
    max_violation_rate: float

    @property
    def rate(self) -> float:
        return self.violations / self.count if self.count else 0.0

    @property
    def ok(self) -> bool:
        return self.rate <= self.max_violation_rate

    def line(self) -> str:
        if self.count == 0:
            return f"SLA {self.series} <= {self.threshold_ms:g} ms: NO DATA"
        verdict = "PASS" if self.ok else "FAIL"
        return (
            f"SLA {self.series} <= {self.threshold_ms:g} ms: {verdict} "
            f"({self.violations}/{self.count} over = {self.rate:.1%}, "
            f"allowed {self.max_violation_rate:.1%})"
        )


def check_sla(records: Iterable[LatencyRecord], spec: SlaSpec) -> list[SlaResult]:
    """One :class:`SlaResult` per series of ``spec`` (records lacking the series skipped)."""
    counts = {s: [0, 0] for s in spec.series}
    for rec in records:
        vals = series_values(rec)
        for s in spec.series:
            if s in vals:
                counts[s][0] += 1
                counts[s][1] += vals[s] > spec.threshold_ms
    return [
        SlaResult(s, spec.threshold_ms, n, bad, spec.max_violation_rate)
        for s, (n, bad) in counts.items()
    ]


@dataclass
class LatencyWindow:
    """The last ``max_records`` records and/or those of the last ``max_age_s`` seconds.

    >>> w = LatencyWindow(max_records=2)
    >>> for u in range(3):
    ...     w.add(stage_latencies("s", 0, u, {"captured_at_us": 0}, stored_at_us=1000 * u))
    >>> [r.utterance for r in w.records()]
    [1, 2]
    """

    max_records: int | None = 1000
    max_age_s: float | None = None
    _items: deque[tuple[float, LatencyRecord]] = field(default_factory=deque)

    def add(self, record: LatencyRecord | None, at_s: float | None = None) -> None:
        if record is None:
            return
        self._items.append((time.monotonic() if at_s is None else at_s, record))
        self._trim(at_s)

    def _trim(self, now_s: float | None = None) -> None:
        if self.max_records is not None:
            while len(self._items) > self.max_records:
                self._items.popleft()
        if self.max_age_s is not None:
            now = time.monotonic() if now_s is None else now_s
            while self._items and self._items[0][0] < now - self.max_age_s:
                self._items.popleft()

    def records(self, now_s: float | None = None) -> list[LatencyRecord]:
        self._trim(now_s)
        return [r for _, r in self._items]

    def __len__(self) -> int:
        return len(self._items)


def parse_window(text: str) -> LatencyWindow:
    """``"500"`` → the last 500 records; ``"90s"``, ``"5m"``, ``"1h"`` → a time window.

    >>> parse_window("5m").max_age_s, parse_window("200").max_records
    (300.0, 200)
    """
    text = text.strip().lower()
    if text.isdigit():
        n = int(text)
        if n <= 0:
            raise ValueError(f"window must be positive: {text!r}")
        return LatencyWindow(max_records=n)
    return LatencyWindow(max_records=None, max_age_s=parse_duration_s(text))


_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"250ms"`` → seconds.

    >>> parse_duration_s("15m")
    900.0
    """
    t = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            number = t[: -len(unit)]
            try:
                value = float(number) * _UNITS[unit]
            except ValueError:
                break
            if value <= 0 or not math.isfinite(value):
                break
            return value
    raise ValueError(f"not a duration (use e.g. 90s, 15m, 2h, 1d): {text!r}")
