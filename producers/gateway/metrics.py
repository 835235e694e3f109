"""The gateway's Prometheus metrics, served at ``/metrics`` on the gateway's own port.

Names (all ``streamscribe_gateway_``): ``open_sessions`` (held, live or in grace),
``paused_seconds_total`` (reads paused for clients ahead of real time: backpressure),
``connections`` (open sockets), ``refused_total{reason}`` (the close reasons of
``protocol.CLOSE_REASONS``), ``audio_seconds_total``, ``events_out_total{type}``
(messages sent to clients), ``send_queue_depth`` (log entries not yet sent to their
socket, all sessions), ``final_latency_seconds`` (receipt of the chunk that ended the
speech to the final's arrival at the gateway). The scheme of ``docs/metrics.md``: base
units, ``_total`` counters, the speech-latency buckets (10 ms .. 10 s) of every process, no
``_created`` series, and the process's own ``process_*`` metrics.

Example::

    >>> m = GatewayMetrics(open_sessions=lambda: 2, queue=lambda: 0)
    >>> m.final_latency.observe(0.3)
    >>> m.registry.get_sample_value("streamscribe_gateway_final_latency_seconds_bucket",
    ...                             {"le": "0.3"})
    1.0
    >>> m.registry.get_sample_value("streamscribe_gateway_open_sessions")
    2.0
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from streamscribe.core.metrics import LATENCY_BUCKETS_S, new_registry
from streamscribe.producers.gateway.protocol import CLOSE_REASONS

PREFIX = "streamscribe_gateway_"
#: The messages the gateway sends to clients (``events_out{type}``, each at 0 from the start).
SERVER_MESSAGE_TYPES = ("ready", "transcript", "reply", "flow", "error", "session_end")
REFUSED_OTHER = "other"  # a close code without a name in CLOSE_REASONS


class GatewayMetrics:
    """The gateway's registry; the server updates the counters as sessions go."""

    def __init__(self, *, open_sessions: Callable[[], float], queue: Callable[[], float]):
        self.registry = new_registry()
        r = self.registry
        Gauge(
            PREFIX + "open_sessions", "sessions held (live or in grace)", registry=r
        ).set_function(open_sessions)
        Gauge(
            PREFIX + "send_queue_depth", "events not yet sent to their socket", registry=r
        ).set_function(queue)
        self.connections = Gauge(PREFIX + "connections", "open WebSocket connections", registry=r)
        self.refused = Counter(
            PREFIX + "refused", "connections refused or closed by a limit", ["reason"], registry=r
        )
        self.audio_seconds = Counter(
            PREFIX + "audio_seconds", "audio received (per channel)", registry=r
        )
        self.paused_seconds = Counter(
            PREFIX + "paused_seconds", "reads paused for clients ahead of real time", registry=r
        )
        self.events_out = Counter(
            PREFIX + "events_out", "messages sent to clients", ["type"], registry=r
        )
        self.final_latency = Histogram(
            PREFIX + "final_latency_seconds",
            "end-of-speech chunk receipt to final at the gateway",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        for reason in (*CLOSE_REASONS.values(), REFUSED_OTHER):  # every series from the start
            self.refused.labels(reason)
        for kind in SERVER_MESSAGE_TYPES:
            self.events_out.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)
