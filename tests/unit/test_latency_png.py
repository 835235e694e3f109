"""Issue 16 item 5: every panel of the latency PNG (`latency-report --png`) has readable
axes: numbered ticks inside the plotted range on both axes, axis titles with units, for
narrow spans (linear axis), wide spans with clamped 0 ms stages (log axis) and one value."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streamscribe.consumers.latency import SlaSpec
from streamscribe.consumers.report import build_report, latency_figure, plot_report
from streamscribe.consumers.store import TranscriptStore
from streamscribe.schemas.transcripts import FinalTranscript
from tests.unit.test_consumers_latency import chain

MIN_TICKS = 2


def _store(tmp_path: Path, n: int, clamp_every: int = 0) -> TranscriptStore:
    rng = random.Random(7)
    store = TranscriptStore(f"sqlite:///{tmp_path / 'r.db'}")
    for u in range(n):
        to_decode = 0 if clamp_every and u % clamp_every == 0 else rng.randint(1_000, 60_000)
        ts = chain(
            rng.randint(500, 4_000),
            rng.randint(200, 3_000),
            rng.randint(250_000, 400_000),
            to_decode,
            rng.randint(60_000, 500_000),
            rng.randint(300, 2_500),
        )
        final = FinalTranscript("s", 0, "agent", u, 1, "x", 0.0, 1.0, timestamps=ts)
        store.write([final], stored_at_us=ts["published_at_us"] + rng.randint(2_000, 30_000))
    return store


def _visible_ticks(ax, axis: str) -> list[str]:  # type: ignore[no-untyped-def]
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [
        lab.get_text()
        for t, lab in zip(ticks, labels, strict=True)
        if lo <= t <= hi and lab.get_text().strip()
    ]


@pytest.mark.parametrize(("n", "clamp_every"), [(200, 0), (200, 3), (1, 0)])
def test_every_panel_has_numbered_ticks_and_titled_axes(
    tmp_path: Path, n: int, clamp_every: int
) -> None:
    import matplotlib.pyplot as plt

    store = _store(tmp_path, n, clamp_every)
    try:
        report = build_report(store, SlaSpec(450.0, 0.05))
    finally:
        store.close()
    fig = latency_figure(report, threshold_ms=450.0)
    try:
        fig.canvas.draw()  # tick labels are made at draw time
        panels = [ax for ax in fig.axes if ax.axison]
        assert len(panels) == 9  # 7 stages, eos_to_final, end_to_end
        for ax in panels:
            title = ax.get_title()
            assert ax.get_xlabel().startswith("latency (ms)"), title
            assert ax.get_ylabel() == "finals", title
            xs, ys = _visible_ticks(ax, "x"), _visible_ticks(ax, "y")
            assert len(xs) >= MIN_TICKS, (title, xs)
            assert len(ys) >= MIN_TICKS, (title, ys)
            assert all("$" not in t for t in xs), (title, xs)  # plain numbers, not 10^x
        log_panels = {ax.get_title().split()[0] for ax in panels if ax.get_xscale() == "log"}
        assert "processor_to_decision" not in log_panels  # 250-400 ms: a linear axis
        if clamp_every:  # 0 ms (clamped) next to tens of ms: only a log axis shows both
            assert "decision_to_decode" in log_panels
    finally:
        plt.close(fig)


def test_the_png_is_written(tmp_path: Path) -> None:
    store = _store(tmp_path, 20)
    try:
        report = build_report(store, SlaSpec(450.0, 0.05))
    finally:
        store.close()
    png = plot_report(report, tmp_path / "out" / "latency.png", threshold_ms=450.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
