"""Issue 13, item 12 (pure parts, no broker): transcripts carry their processor group as
``origin``; consumers tell live traffic from re-transcribed history and keep both apart —
latency rows, latency histograms and the SLA window, alerts, voice commands."""

from __future__ import annotations

from typing import Any

import pytest

from streamscribe.consumers.alerts import AlertStats, PhraseMatcher, publish_alerts
from streamscribe.consumers.latency import HISTORY, LIVE, LatencyWindow, SlaSpec, origin_class
from streamscribe.consumers.metrics import LatencyMetrics
from streamscribe.consumers.store import TranscriptStore
from streamscribe.schemas.transcripts import TIMESTAMP_ORDER, FinalTranscript, decode_transcript
from tests.unit.test_recognizer_core import GROUP, Harness, line_messages, noise

LIVE_GROUP = "streamscribe-processors"
T0 = 1_700_000_000_000_000


def final(u: int, origin: str | None, decode_ms: int, captured_us: int = T0) -> FinalTranscript:
    ts, t = {}, captured_us
    steps = (0, 1_000, 1_000, 1_000, 1_000, decode_ms * 1000, 500)
    for key, d in zip(TIMESTAMP_ORDER, steps, strict=True):
        t += d
        ts[key] = t
    return FinalTranscript(
        "s", 0, "agent", u, 1, f"u{u} call my manager", 0.0, 1.0, timestamps=ts, origin=origin
    )


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def deliver_all(self, what: str, *, error: Any = None) -> None:
        return None


def test_origin_classes() -> None:
    assert origin_class(LIVE_GROUP, LIVE_GROUP) == LIVE
    assert origin_class(None, LIVE_GROUP) == LIVE  # published before the field existed
    assert origin_class("retranscribe-2026-11", LIVE_GROUP) == HISTORY
    assert origin_class("t1-processors", LIVE_GROUP) == HISTORY


def test_the_recognizer_stamps_its_group_as_origin_and_it_survives_the_wire() -> None:
    events = Harness().run(line_messages(noise(2.0)))
    final_event = events[-1].event
    assert final_event.origin == GROUP
    assert decode_transcript(final_event.encode()).origin == GROUP
    assert all(p.origin == GROUP for p in events[:-1])


def test_a_re_transcription_leaves_the_live_latency_row_alone() -> None:
    store = TranscriptStore("sqlite://", live_group=LIVE_GROUP)
    live = [final(u, LIVE_GROUP, 100) for u in range(3)]
    store.write(live, stored_at_us=T0 + 1_000_000)
    before = store.latency_records()
    # Two re-transcription runs later, each published later than the live finals.
    for i, group in enumerate(("retranscribe-a", "retranscribe-b")):
        later = T0 + (i + 1) * 600_000_000
        redo = [final(u, group, 800, captured_us=later) for u in range(3)]
        assert store.write(redo, stored_at_us=later + 1_000_000).finals_written == 3
    assert store.latency_records() == before
    assert [r.stages_ms["decode"] for r in store.latency_records()] == [100.0] * 3
    history = store.latency_records(origin=HISTORY)
    assert len(history) == 6 and {r.stages_ms["decode"] for r in history} == {800.0}
    # ... and an old final without an origin is live, as before the field existed.
    store.write([final(0, None, 50, captured_us=T0 + 10**10)], stored_at_us=T0 + 10**10 + 10**6)
    assert sorted(r.stages_ms["decode"] for r in store.latency_records()) == [50.0, 100.0, 100.0]
    assert len(store.latency_records(origin=HISTORY)) == 6


def test_a_history_final_without_timestamps_drops_only_its_own_row() -> None:
    store = TranscriptStore("sqlite://", live_group=LIVE_GROUP)
    store.write([final(0, LIVE_GROUP, 100)], stored_at_us=T0 + 10**6)
    store.write([final(0, "redo", 800, captured_us=T0 + 10**9)], stored_at_us=T0 + 10**9 + 10**6)
    bare = FinalTranscript("s", 0, "agent", 0, 2, "again", 0.0, 1.0, origin="redo")
    store.write([bare], stored_at_us=T0 + 10**10)
    assert store.latency_records(origin=HISTORY) == []
    assert [r.stages_ms["decode"] for r in store.latency_records()] == [100.0]


def test_a_store_without_a_live_group_treats_every_final_as_live() -> None:
    store = TranscriptStore("sqlite://")
    store.write([final(0, "any-group", 100)], stored_at_us=T0 + 10**6)
    assert len(store.latency_records()) == 1 and store.latency_records(origin=HISTORY) == []


def test_history_is_labelled_and_kept_out_of_the_sla_window() -> None:
    m = LatencyMetrics(LatencyWindow(max_records=100), SlaSpec(450.0, 0.05), live_group=LIVE_GROUP)
    for u in range(4):
        m.observe(final(u, LIVE_GROUP, 100), received_at_us=T0 + 200_000)
        m.observe(final(u, "redo", 800), received_at_us=T0 + 900_000)
    m.refresh()
    r = m.registry
    count = "streamscribe_stage_latency_seconds_count"
    assert r.get_sample_value(count, {"stage": "decode", "origin": LIVE}) == 4
    assert r.get_sample_value(count, {"stage": "decode", "origin": HISTORY}) == 4
    assert r.get_sample_value("streamscribe_latency_window_records") == 4
    # eos_to_final: live 101.5 ms, history 801.5 ms: the SLA sees only the live ones
    ratio = r.get_sample_value("streamscribe_sla_violation_ratio", {"series": "eos_to_final"})
    assert ratio == 0.0


@pytest.mark.parametrize(("live_group", "alerts", "skipped"), [(LIVE_GROUP, 1, 1), (None, 2, 0)])
def test_alerts_only_for_live_traffic_unless_asked(
    live_group: str | None, alerts: int, skipped: int
) -> None:
    out, stats = FakePublisher(), AlertStats()
    values = [final(0, LIVE_GROUP, 100).encode(), final(0, "redo", 100).encode()]
    matcher = PhraseMatcher(["manager"])
    publish_alerts(values, matcher, out, "t.alerts", stats, live_group=live_group)
    assert (len(out.sent), stats.alerts, stats.history_skipped, stats.finals) == (
        alerts,
        alerts,
        skipped,
        2,
    )


def test_the_assistant_acts_on_live_traffic_only() -> None:
    from streamscribe.consumers.assistant import AssistantHandler, AssistantStats

    class Core:
        def __init__(self) -> None:
            self.seen: list[str | None] = []

        def accept(self, event: Any, now_us: int) -> list[Any]:
            self.seen.append(event.origin)
            return []

        def changed(self) -> list[Any]:
            return []

    core, stats = Core(), AssistantStats()
    handler = AssistantHandler(core, FakePublisher(), "t.commands", stats, live_group=LIVE_GROUP)  # type: ignore[arg-type]
    handler.handle_values([final(0, LIVE_GROUP, 1).encode(), final(1, "redo", 1).encode()])
    assert core.seen == [LIVE_GROUP] and stats.history_skipped == 1 and stats.transcripts == 2


def test_each_foreign_origin_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    """A consumer set up with another live group than the worker's would drop live traffic
    as history: the first transcript of each other group says so, once."""
    with caplog.at_level("WARNING", logger="streamscribe.consumers.latency"):
        for _ in range(3):
            assert origin_class("demo-7f3a", "t9-processors") == HISTORY
        assert origin_class("demo-other", "t9-processors") == HISTORY
        assert origin_class("t9-processors", "t9-processors") == LIVE
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "'demo-7f3a'" in lines[0] and "--live-group demo-7f3a" in lines[0]
