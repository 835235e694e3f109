"""What every process's ``/metrics`` shares: the registry and the buckets for speech latency.

Each long-running process (worker, sink, alerts, metrics, gateway, assistant) builds its own
registry with :func:`new_registry` and times what it does into histograms with
:data:`LATENCY_BUCKETS_S`; the names follow ``docs/metrics.md`` (prefix ``streamscribe_``,
base units, ``_total`` counters, no ``_created`` series).

Example::

    >>> from prometheus_client import Histogram
    >>> r = new_registry()
    >>> h = Histogram("demo_seconds", "A demo", buckets=LATENCY_BUCKETS_S, registry=r)
    >>> h.observe(0.2); r.get_sample_value("demo_seconds_bucket", {"le": "0.2"})
    1.0
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

#: Histogram buckets (seconds) for speech latency: fine around the 450 ms SLA, 10 ms..10 s.
LATENCY_BUCKETS_S: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0, float("inf"),
)  # fmt: skip


def new_registry(*, auto_describe: bool = True) -> CollectorRegistry:
    """A registry of our own with the process collector (``process_cpu_seconds_total``...).

    ``_created`` series are switched off (:func:`prometheus_client.disable_created_metrics`:
    a process-wide switch of the client, so it is made here, where every exporter starts).
    """
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=auto_describe)
    ProcessCollector(registry=registry)
    return registry
