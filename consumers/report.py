"""``streamscribe latency-report``: per-stage latency from the store, the SLA verdict, a plot.

Reads the ``latency`` table the sink fills (stages computed from each final's timestamps
and the sink's ``stored_at_us``, see :mod:`streamscribe.consumers.latency`), optionally
only rows stored since an ISO time or a duration ago, and prints per stage / span: count,
p50, p95, p99 and max (ms), then one SLA line per checked series. The report is of the live
pipeline's finals; ``--origin history`` reports the finals re-transcribed by other processor
groups instead (the ``latency_history`` table, kept apart so they never mix with live ones).

Example::

    streamscribe latency-report --since 15m --png latency.png
    streamscribe latency-report --db postgresql+psycopg://u@db/ss --since 2025-01-31T12:00
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamscribe.consumers.latency import (
    ALL_SERIES,
    LIVE,
    SlaResult,
    SlaSpec,
    StageSummary,
    check_sla,
    parse_duration_s,
    series_values,
    summarize,
)
from streamscribe.consumers.store import TranscriptStore
from streamscribe.schemas.events import LatencyRecord, now_us


def parse_since(text: str, *, now_us_: int | None = None) -> int:
    """Epoch µs from an ISO time (naive = local time) or a duration ago (``15m``, ``2h``).

    >>> parse_since("90s", now_us_=100_000_000)
    10000000
    >>> parse_since("1970-01-01T00:00:10+00:00")
    10000000
    """
    now = now_us() if now_us_ is None else now_us_
    try:
        return now - round(parse_duration_s(text) * 1_000_000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since: neither an ISO time nor a duration (e.g. 2025-01-31T12:00, 15m): {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return round(when.astimezone(UTC).timestamp() * 1_000_000)


@dataclass(frozen=True)
class LatencyReport:
    records: list[LatencyRecord]
    summaries: dict[str, StageSummary]
    sla: list[SlaResult]
    clamped: dict[str, int]
    since_us: int | None = None
    origin: str = LIVE

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.sla)


def build_report(
    store: TranscriptStore, sla: SlaSpec, *, since_us: int | None = None, origin: str = LIVE
) -> LatencyReport:
    """The report of the stored finals of ``origin`` (``live`` or ``history``)."""
    records = store.latency_records(since_us=since_us, origin=origin)
    clamped: dict[str, int] = {}
    for rec in records:
        for stage in rec.clamped:
            clamped[stage] = clamped.get(stage, 0) + 1
    return LatencyReport(
        records, summarize(records), check_sla(records, sla), clamped, since_us, origin
    )


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def format_report(report: LatencyReport) -> str:
    """The table and the SLA lines, as printed by the command."""
    since = (
        ""
        if report.since_us is None
        else " since " + datetime.fromtimestamp(report.since_us / 1e6, UTC).isoformat()
    )
    what = "finals" if report.origin == LIVE else "re-transcribed finals (history)"
    lines = [f"latency of {len(report.records)} {what}{since} (ms)"]
    lines.append(
        f"{'stage':24s} {'count':>7s} {'p50':>9s} {'p95':>9s} {'p99':>9s} {'max':>9s} "
        f"{'clamped':>8s}"
    )
    for name, s in report.summaries.items():
        lines.append(
            f"{name:24s} {s.count:7d} {_ms(s.p50):>9s} {_ms(s.p95):>9s} {_ms(s.p99):>9s} "
            f"{_ms(s.max):>9s} {report.clamped.get(name, 0):8d}"
        )
    lines += [r.line() for r in report.sla]
    return "\n".join(lines)


def plot_report(report: LatencyReport, path: Path, *, threshold_ms: float | None = None) -> Path:
    """Per-series histograms with p50/p95/p99 marks, as a PNG (:func:`latency_figure`)."""
    import matplotlib.pyplot as plt

    fig = latency_figure(report, threshold_ms=threshold_ms)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_figure(report: LatencyReport, *, threshold_ms: float | None = None) -> Any:
    """The figure of :func:`plot_report`: one histogram panel per series with data.

    Every panel has numbered ticks on both axes and axis titles with units: the x axis is
    the latency in ms, logarithmic (ticks at 1-2-5 steps) when the values span more than a
    factor :data:`LOG_SPAN`, else linear; the y axis counts finals.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ALL_SERIES if report.summaries.get(n) and report.summaries[n].count]
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False)
    values: dict[str, list[float]] = {n: [] for n in names}
    for rec in report.records:
        for n, v in series_values(rec).items():
            if n in values:
                values[n].append(v)
    for ax, name in zip(axes.flat, names, strict=False):
        vs = [max(v, MIN_PLOT_MS) for v in values[name]]
        log_scale = _log_axis(min(vs), max(vs))
        ax.hist(vs, bins=_bins(min(vs), max(vs), log_scale), color="#4477aa")
        s = report.summaries[name]
        for q, v, style in ((50, s.p50, "-"), (95, s.p95, "--"), (99, s.p99, ":")):
            ax.axvline(max(v, MIN_PLOT_MS), color="#cc3311", linestyle=style, label=f"p{q} {v:.1f}")
        if threshold_ms is not None and name in {r.series for r in report.sla}:
            ax.axvline(threshold_ms, color="black", linewidth=1.5, label=f"SLA {threshold_ms:g}")
        _latency_axes(ax, log_scale)
        ax.set_title(f"{name} (n={s.count})", fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    what = "finals" if report.origin == LIVE else "re-transcribed finals (history)"
    fig.suptitle(f"streamscribe per-stage latency, {len(report.records)} {what}", fontsize=10)
    fig.tight_layout()
    return fig


#: Values are plotted from this many ms up (a clamped 0 ms stage has no place on a log axis).
MIN_PLOT_MS = 0.01
#: A panel's x axis is logarithmic when its largest value is over this times its smallest.
LOG_SPAN = 20.0


def _log_axis(lo: float, hi: float) -> bool:
    return hi > lo * LOG_SPAN


def _bins(lo: float, hi: float, log_scale: bool, n: int = 30) -> Sequence[float]:
    if hi <= lo:
        return [lo * 0.9, hi * 1.1]
    if log_scale:
        return _log_bins(lo, hi, n)
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _latency_axes(ax: Any, log_scale: bool) -> None:
    """Numbered ticks and titled axes (units) on one panel."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    if log_scale:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.set_xlabel("latency (ms)" + (", log scale" if log_scale else ""), fontsize=8)
    ax.set_ylabel("finals", fontsize=8)
    ax.tick_params(labelsize=8)


def _log_bins(lo: float, hi: float, n: int = 30) -> Sequence[float]:
    if hi <= lo:
        return [lo * 0.9, hi * 1.1]
    a, b = math.log10(lo), math.log10(hi)
    return [10 ** (a + (b - a) * i / n) for i in range(n + 1)]
