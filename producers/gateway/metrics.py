"""The gateway's Prometheus metrics, served at ``/metrics`` on the gateway's own port.

Names (all ``streamscribe_gateway_``): ``open_sessions`` (held, live or in grace),
``paused_seconds_total`` (reads paused for clients ahead of real time: backpressure),
``connections`` (open sockets), ``refused_total{reason}`` (the close reasons of
``protocol.CLOSE_REASONS``), ``audio_seconds_total``, ``events_out_total{type}``
(messages sent to clients), ``send_queue_depth`` (log entries not yet sent to their
socket, all sessions), ``final_latency_seconds`` (receipt of the chunk that ended the
speech to the final's arrival at the gateway).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "streamscribe_gateway_"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class GatewayMetrics:
    def __init__(self, *, open_sessions: Callable[[], float], queue: Callable[[], float]):
        self.registry = CollectorRegistry()
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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
