"""The Grafana dashboard and Prometheus config under deploy/ name only metrics the processes
export, and docs/metrics.md describes every metric they export (no broker)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamscribe.consumers.alerts import AlertStats, alert_registry
from streamscribe.consumers.assistant import AssistantMetrics, AssistantStats
from streamscribe.consumers.metrics import MetricsService
from streamscribe.consumers.sink import SinkStats, sink_metrics
from streamscribe.core.kafka import LoopStats
from streamscribe.core.settings import Settings
from streamscribe.processors.worker import build_worker
from streamscribe.processors.worker_metrics import LagProbe, worker_registry
from streamscribe.producers.gateway.metrics import GatewayMetrics
from tests.unit.test_metrics_processes import FakeApp, FakeConsumer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamscribe.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCS = ROOT / "docs" / "metrics.md"
#: A metric name in PromQL: ours start with streamscribe_, the client's with process_.
METRIC = re.compile(r"\b(?:streamscribe|process)_[a-z0-9_]+\b")


def _families(registry: CollectorRegistry) -> list[Any]:
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Family name -> sample names (``_bucket``, ``_total``...) over every process."""
    _app, stages = build_worker(Settings(worker_data_dir=tmp_path_factory.mktemp("w")))
    lag = LagProbe()
    asyncio.run(lag.refresh(FakeConsumer()))  # so the lag family has samples
    registries = [
        worker_registry(stages, lag, FakeApp()),
        sink_metrics(SinkStats(), lambda _msgs: None)[0],
        alert_registry(AlertStats(), LoopStats()),
        MetricsService(Settings(), port=0).metrics.registry,
        GatewayMetrics(open_sessions=lambda: 0, queue=lambda: 0).registry,
        AssistantMetrics(AssistantStats()).registry,
    ]
    for stage in stages:
        stage.executor.shutdown(wait=False)
    out: dict[str, set[str]] = {}
    for registry in registries:
        for fam in _families(registry):
            out.setdefault(fam.name, set()).update(s.name for s in fam.samples)
    return out


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_every_dashboard_query_names_exported_metrics(exported: dict[str, set[str]]) -> None:
    names = set().union(*exported.values())
    exprs = _exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        used = METRIC.findall(expr)
        assert used, f"no metric in {expr!r}"
        assert set(used) <= names, f"{expr!r}: {set(used) - names} not exported"


def test_dashboard_covers_the_issue_panels() -> None:
    text = " ".join(_exprs())
    for needed in (
        "streamscribe_consumer_lag",
        'stage="eos_to_final"',
        "streamscribe_partial_interval_seconds_bucket",
        "streamscribe_decode_queue_depth",
        "streamscribe_segmenter_dead_letters_total",
        "process_cpu_seconds_total",
        "streamscribe_segmenter_channels",
        "streamscribe_segmenter_sessions",
        "streamscribe_stage_dead_letters_total",
        "streamscribe_decode_partial_batch_seconds_bucket",
        "streamscribe_worker_table_restore_seconds",
        'origin="live"',
    ):
        assert needed in text


def test_docs_describe_every_exported_metric(exported: dict[str, set[str]]) -> None:
    docs = DOCS.read_text()
    documented = set(re.findall(r"`((?:streamscribe|process)_[a-z0-9_]+)", docs))
    ours = {
        sample
        for fam, samples in exported.items()
        if fam.startswith("streamscribe_")
        for sample in samples
        if not sample.endswith(("_bucket", "_count", "_sum"))
    }
    assert ours - documented == set()
    histograms = {f for f, s in exported.items() if f"{f}_bucket" in s}
    assert histograms - documented == set()
    stale = {n for n in documented if n.startswith("streamscribe_")} - ours - histograms
    assert stale == set()


def test_conventions_hold_for_every_process(exported: dict[str, set[str]]) -> None:
    for fam, samples in exported.items():
        assert not fam.endswith(("_ms", "_milliseconds")), fam
        assert not any(s.endswith("_created") for s in samples), fam


def test_prometheus_scrapes_each_process_port_of_the_compose_file() -> None:
    jobs = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in jobs}
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for job, (target,) in targets.items():
        service, port = target.split(":")
        command = services[service]["command"]
        if command[1] == "gateway":  # /metrics on the gateway's own listener
            assert command[command.index("--port") + 1] == port, job
            assert command[command.index("--host") + 1] == "0.0.0.0", job
            continue
        assert command[command.index("--metrics-port") + 1] == port, job
        assert command[command.index("--metrics-host") + 1] == "0.0.0.0", job
