"""Stage latencies (sums, clamping, gaps), percentiles, windows, the SLA check, the report."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from streamscribe.consumers.latency import (
    ALL_SERIES,
    STAGES,
    LatencyWindow,
    SlaSpec,
    check_sla,
    parse_duration_s,
    parse_window,
    percentile,
    series_values,
    stage_latencies,
    summarize,
)
from streamscribe.consumers.report import build_report, format_report, parse_since, plot_report
from streamscribe.consumers.store import TranscriptStore
from streamscribe.schemas.events import LatencyRecord
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript

T0 = 1_700_000_000_000_000  # epoch µs


def chain(*deltas_us: int) -> dict[str, int]:
    """Timestamps in TIMESTAMP_ORDER from consecutive deltas (µs) after T0."""
    out, t = {TIMESTAMP_ORDER[0]: T0}, T0
    for key, d in zip(TIMESTAMP_ORDER[1:], deltas_us, strict=True):
        t += d
        out[key] = t
    return out


def test_stages_are_consecutive_differences() -> None:
    ts = chain(3_000, 1_500, 350_000, 2_000, 120_000, 800)
    rec = stage_latencies("s", 1, 4, ts, stored_at_us=ts["published_at_us"] + 4_200)
    assert rec is not None
    assert rec.stages_ms == {
        "edge_to_broker": 3.0,
        "broker_to_processor": 1.5,
        "processor_to_decision": 350.0,
        "decision_to_decode": 2.0,
        "decode": 120.0,
        "decode_to_publish": 0.8,
        "publish_to_sink": 4.2,
    }
    assert rec.end_to_end_ms == 481.5
    assert rec.clamped == []
    assert series_values(rec)["eos_to_final"] == pytest.approx(122.8)
    assert list(rec.stages_ms) == list(STAGES)


def test_random_chains_with_skew_sum_to_end_to_end_within_1ms() -> None:
    rng = random.Random(7)
    for _ in range(500):
        deltas = [rng.randint(-20_000, 400_000) for _ in range(6)]
        ts = chain(*deltas)
        stored = ts["published_at_us"] + rng.randint(-5_000, 50_000)
        rec = stage_latencies("s", 0, 0, ts, stored_at_us=stored)
        assert rec is not None
        assert abs(sum(rec.stages_ms.values()) - rec.end_to_end_ms) < 1.0
        assert all(v >= 0.0 for v in rec.stages_ms.values())
        assert rec.end_to_end_ms == (max([*ts.values(), stored]) - T0) / 1000
        if stored >= max(ts.values()):
            assert rec.end_to_end_ms == (stored - T0) / 1000


def test_negative_step_is_clamped_counted_and_absorbed_by_the_next_stage() -> None:
    # the broker's clock is 2 ms behind the edge: broker_at < captured_at
    ts = chain(-2_000, 5_000, 300_000, 1_000, 100_000, 1_000)
    rec = stage_latencies("s", 0, 0, ts, stored_at_us=ts["published_at_us"] + 2_000)
    assert rec is not None
    assert rec.clamped == ["edge_to_broker"]
    assert rec.stages_ms["edge_to_broker"] == 0.0
    assert rec.stages_ms["broker_to_processor"] == 3.0  # measured from captured, not broker
    assert rec.end_to_end_ms == 407.0  # == stored - captured
    assert sum(rec.stages_ms.values()) == pytest.approx(rec.end_to_end_ms)


def test_sink_behind_publisher_is_clamped() -> None:
    ts = chain(1_000, 1_000, 1_000, 1_000, 1_000, 1_000)
    rec = stage_latencies("s", 0, 0, ts, stored_at_us=ts["published_at_us"] - 500)
    assert rec is not None
    assert rec.clamped == ["publish_to_sink"]
    assert (rec.stages_ms["publish_to_sink"], rec.end_to_end_ms) == (0.0, 6.0)


def test_missing_timestamps_merge_into_the_next_present_stage() -> None:
    ts = {"captured_at_us": 0, "decided_at_us": 400_000, "published_at_us": 550_000}
    rec = stage_latencies("s", 0, 0, ts, stored_at_us=560_000)
    assert rec is not None
    assert rec.stages_ms == {
        "processor_to_decision": 400.0,
        "decode_to_publish": 150.0,
        "publish_to_sink": 10.0,
    }
    assert rec.end_to_end_ms == 560.0
    assert "eos_to_final" not in series_values(rec)
    assert stage_latencies("s", 0, 0, {}, stored_at_us=5) is None
    assert stage_latencies("s", 0, 0, {"captured_at_us": 5}) is None


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(3)
    xs = [rng.uniform(0, 1000) for _ in range(101)]
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q * 100)))
    assert percentile([5.0], 0.99) == 5.0


def rec(e2e: float, eos: float = 1.0, clamped: list[str] | None = None) -> LatencyRecord:
    stages = {"decision_to_decode": 0.0, "decode": eos, "decode_to_publish": 0.0}
    stages["publish_to_sink"] = e2e - eos
    return LatencyRecord("s", 0, 0, stages, e2e, clamped or [])


def test_sla_check_counts_violations() -> None:
    records = [rec(100.0, 50.0)] * 18 + [rec(900.0, 500.0), rec(460.0, 100.0)]
    res = check_sla(records, SlaSpec(threshold_ms=450.0, max_violation_rate=0.05))
    assert [(r.series, r.count, r.violations, r.ok) for r in res] == [
        ("eos_to_final", 20, 1, True),
        ("end_to_end", 20, 2, False),
    ]
    assert res[1].line() == ("SLA end_to_end <= 450 ms: FAIL (2/20 over = 10.0%, allowed 5.0%)")


def test_summaries_and_windows() -> None:
    records = [rec(float(v)) for v in range(1, 101)]
    s = summarize(records)
    assert list(s) == list(ALL_SERIES)
    assert (s["end_to_end"].count, s["end_to_end"].p50, s["end_to_end"].max) == (100, 50.5, 100.0)
    assert s["edge_to_broker"].count == 0
    w = LatencyWindow(max_records=None, max_age_s=10.0)
    for i, r in enumerate(records[:5]):
        w.add(r, at_s=float(i * 5))  # at 0, 5, 10, 15, 20 s
    assert [r.end_to_end_ms for r in w.records(now_s=20.0)] == [3.0, 4.0, 5.0]
    assert parse_window("20").max_records == 20
    assert parse_window("2m").max_age_s == 120.0
    assert parse_duration_s("250ms") == 0.25
    for bad in ("0", "abc", "-5m", "m"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_parse_since() -> None:
    assert parse_since("15m", now_us_=T0) == T0 - 900_000_000
    assert parse_since("2023-11-14T22:13:20+00:00") == 1_700_000_000_000_000
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_report_from_the_store_and_png(tmp_path: Path) -> None:
    store = TranscriptStore(f"sqlite:///{tmp_path / 'r.db'}")
    finals = []
    for u in range(40):
        ts = chain(1_000, 1_000, 300_000, 1_000, (100 + 10 * u) * 1000, 1_000)
        finals.append(
            FinalTranscript(
                session_id="s", channel=0, role="agent", utterance=u, revision=1, text="x",
                start_ms=0.0, end_ms=1.0, timestamps=ts,
            )
        )  # fmt: skip
    store.write(finals[:20], stored_at_us=T0 + 10_000_000)
    store.write(finals[20:], stored_at_us=T0 + 20_000_000)
    spec = SlaSpec(450.0, 0.05)
    report = build_report(store, spec)
    assert report.summaries["decode"].count == 40
    assert report.summaries["decode"].max == 490.0
    # eos_to_final = 1 + decode + 1 ms: over 450 ms when decode > 448 ms: u = 35..39
    assert [(r.series, r.violations) for r in report.sla] == [
        ("eos_to_final", 5),
        ("end_to_end", 40),
    ]
    assert not report.ok
    text = format_report(report)
    assert "decode                        40     295.0" in text
    assert "SLA eos_to_final <= 450 ms: FAIL (5/40 over = 12.5%, allowed 5.0%)" in text
    recent = build_report(store, spec, since_us=T0 + 15_000_000)
    assert len(recent.records) == 20
    png = plot_report(report, tmp_path / "out" / "lat.png", threshold_ms=450.0)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    store.close()


def test_a_speculative_decode_before_the_decision_is_clamped_and_eos_to_final_stays_true() -> None:
    """Speculative finals: the decode ran before the silence decision (documented overlap)."""
    ts = chain(3_000, 1_500, 350_000, 2_000, 120_000, 800)
    decided = ts["decided_at_us"]
    ts["decode_start_us"] = decided - 150_000
    ts["decode_end_us"] = decided - 30_000  # finished 30 ms before the decision
    ts["published_at_us"] = decided + 900
    rec = stage_latencies("s", 1, 4, ts, stored_at_us=decided + 5_000)
    assert rec is not None
    assert rec.clamped == ["decision_to_decode", "decode"]
    assert rec.stages_ms["decision_to_decode"] == rec.stages_ms["decode"] == 0.0
    assert rec.stages_ms["decode_to_publish"] == pytest.approx(0.9)
    assert series_values(rec)["eos_to_final"] == pytest.approx(0.9)  # published - decided
    assert rec.end_to_end_ms == pytest.approx((decided + 5_000 - T0) / 1000)
    ts["decode_end_us"] = decided + 40_000  # still running at the decision
    ts["published_at_us"] = decided + 41_000
    rec = stage_latencies("s", 1, 4, ts, stored_at_us=decided + 45_000)
    assert rec is not None and rec.clamped == ["decision_to_decode"]
    assert rec.stages_ms["decode"] == pytest.approx(40.0)
    assert series_values(rec)["eos_to_final"] == pytest.approx(41.0)
