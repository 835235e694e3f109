"""Prometheus exposition of per-stage latency (`streamscribe metrics`): exact counts, sums,
SLA gauges, and the conventions (seconds, 10 ms..10 s buckets, no `_created`, no quantiles)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.consumers.latency import LatencyWindow, SlaSpec
from streamscribe.consumers.metrics import LatencyMetrics, MetricsService
from streamscribe.core.settings import Settings
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript, PartialTranscript

T0 = 1_700_000_000_000_000
LIVE = (("origin", "live"),)
LIVE_DECODE = (("origin", "live"), ("stage", "decode"))


def final(u: int, decode_ms: int, skew_us: int = 0) -> FinalTranscript:
    deltas = [1_000 + skew_us, 1_000, 300_000, 1_000, decode_ms * 1000, 1_000]
    ts, t = {TIMESTAMP_ORDER[0]: T0}, T0
    for key, d in zip(TIMESTAMP_ORDER[1:], deltas, strict=True):
        t += d
        ts[key] = t
    return FinalTranscript(
        session_id="s", channel=0, role="agent", utterance=u, revision=1, text="x",
        start_ms=0.0, end_ms=1.0, timestamps=ts,
    )  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def observed(m: LatencyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for u in range(10):
        # decode 100 ms x 8, 600 ms x 2; utterance 9 has the broker 3 ms behind the edge
        rec = m.observe(final(u, 600 if u >= 8 else 100, -4_000 if u == 9 else 0), T0 + 10**6)
        assert rec is not None
    m.refresh()
    return samples(m.exposition().decode())


def test_exposition_parses_with_exact_values() -> None:
    m = LatencyMetrics(LatencyWindow(max_records=100), SlaSpec(450.0, 0.05))
    s = observed(m)
    st = (("origin", "live"), ("stage", "decode"))
    assert s[("streamscribe_stage_latency_seconds_count", st)] == 10
    assert s[("streamscribe_stage_latency_seconds_sum", st)] == pytest.approx(8 * 0.1 + 2 * 0.6)
    assert s[("streamscribe_stage_latency_seconds_bucket", (("le", "0.45"), *st))] == 8
    assert s[("streamscribe_stage_latency_seconds_bucket", (("le", "+Inf"), *st))] == 10
    assert s[("streamscribe_latency_clamped_total", (("stage", "edge_to_broker"),))] == 1
    assert s[("streamscribe_latency_clamped_total", (("stage", "decode"),))] == 0
    assert s[("streamscribe_latency_finals_total", ())] == 10
    # eos_to_final = 1 + decode + 1 ms -> 2 of 10 over 450 ms
    assert s[("streamscribe_sla_violation_ratio", (("series", "eos_to_final"),))] == 0.2
    assert s[("streamscribe_sla_ok", (("series", "eos_to_final"),))] == 0.0
    assert s[("streamscribe_sla_threshold_seconds", ())] == 0.45
    assert s[("streamscribe_latency_window_records", ())] == 10
    e2e_count = s[
        ("streamscribe_stage_latency_seconds_count", (("origin", "live"), ("stage", "end_to_end")))
    ]
    assert e2e_count == 10


def test_conventions_base_units_buckets_no_created_no_quantiles() -> None:
    m = LatencyMetrics(LatencyWindow(max_records=100), SlaSpec(450.0, 0.05))
    text = m.exposition().decode()
    observed(m)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert "_created" not in text
    assert not any("quantile" in s.labels for f in families.values() for s in f.samples)
    assert not any(name.endswith("_ms") for name in families)
    bounds = [
        s.labels["le"]
        for s in families["streamscribe_stage_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels == {"le": s.labels["le"], **dict(LIVE_DECODE)}
    ]
    assert (bounds[0], bounds[-2], bounds[-1]) == ("0.01", "10.0", "+Inf")
    assert [s.value for s in families["process_cpu_seconds"].samples] != []
    assert families["streamscribe_latency_finals"].type == "counter"


def test_window_bounds_the_gauges_not_the_histograms() -> None:
    m = LatencyMetrics(LatencyWindow(max_records=2), SlaSpec(450.0, 0.05))
    s = observed(m)
    assert s[("streamscribe_latency_window_records", ())] == 2
    assert s[("streamscribe_sla_violation_ratio", (("series", "eos_to_final"),))] == 1.0
    assert s[("streamscribe_stage_latency_seconds_count", LIVE_DECODE)] == 10


def test_http_endpoint_serves_the_registry_and_counts_undecodable() -> None:
    svc = MetricsService(Settings(), port=0, window="50")
    port = svc.start_http()
    try:
        svc.handle([final(0, 100).encode(), b"not json", None, final(1, 200).encode()], T0 + 10**6)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            body = resp.read().decode()
    finally:
        svc.close()
    s = samples(body)
    assert s[("streamscribe_latency_finals_total", ())] == 2
    assert s[("streamscribe_latency_undecodable_total", ())] == 2
    decode_sum = s[("streamscribe_stage_latency_seconds_sum", LIVE_DECODE)]
    assert decode_sum == pytest.approx(0.3)
    assert s[("streamscribe_latency_loop_messages_total", ())] == 0  # handle() is not the loop
    assert (svc.stats.messages, svc.stats.finals, svc.stats.undecodable) == (4, 2, 2)


def partial(u: int, published_us: int) -> PartialTranscript:
    return PartialTranscript(
        session_id="s", channel=0, role="agent", utterance=u, revision=1, text="x",
        start_ms=0.0, end_ms=1.0, timestamps={"published_at_us": published_us},
    )  # fmt: skip


def test_partial_interval_per_utterance_until_its_final() -> None:
    svc = MetricsService(Settings(), port=0, window="50")
    values = [partial(0, T0), partial(0, T0 + 500_000), partial(1, T0 + 600_000)]
    values += [partial(0, T0 + 1_200_000), final(0, 100), partial(0, T0 + 2_000_000)]
    svc.handle([v.encode() for v in values], T0 + 3 * 10**6)
    s = samples(svc.metrics.exposition().decode())
    # utterance 0: 0.5 s then 0.7 s; utterance 1 has one partial; after the final, none
    assert s[("streamscribe_partial_interval_seconds_count", LIVE)] == 2
    assert s[("streamscribe_partial_interval_seconds_sum", LIVE)] == pytest.approx(1.2)
    assert s[("streamscribe_partial_interval_seconds_bucket", (("le", "0.6"), *LIVE))] == 1
    assert s[("streamscribe_latency_partials_total", ())] == 5
    assert s[("streamscribe_latency_finals_total", ())] == 1
    assert (svc.stats.messages, svc.stats.finals, svc.stats.undecodable) == (6, 1, 0)
