"""The network edge of the gateway: WebSocket sessions, the live page, health and metrics.

One asyncio process (``websockets``) serves, on one port:

- ``/ws`` — the WebSocket protocol of ``docs/websocket.md``: auth and Origin are decided
  during the handshake (from its headers and query), before any message is read; a refused
  connection is closed at once with its code, and nothing of it is published;
- ``/`` and ``/static/*`` — the live page (plain files in ``static/``);
- ``/healthz`` — ``{"status": "ok", ...}``; ``/metrics`` — Prometheus (:mod:`.metrics`).

Delivery (the kernel's one producer, :class:`~streamscribe.core.kafka.DeliveryProducer`,
says the guarantee): each binary frame becomes one ``AudioChunk`` per channel, keyed by the
session id, sent as it arrives; delivery reports are served by a poll every
``POLL_EVERY_S`` and the producer is flushed on shutdown. The gateway holds a session's
``seq`` and ``position``, so a client that reconnects continues the same stream. What goes
back (transcripts, ``session_end``) is the session's numbered log, written by the router
and read by the socket's one writer task, which sends every message of the connection.

Backpressure: a session may be ``gateway_burst_s`` of audio ahead of real time (counted
from its first frame); beyond that the gateway stops reading its socket for the excess, so
TCP slows the client down and nothing is dropped.

Example::

    from streamscribe.producers.gateway.server import Gateway, GatewayOptions
    asyncio.run(Gateway(settings, GatewayOptions(tokens=Tokens.parse("t1"))).serve())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamscribe.core.admin import create_topics, probe_broker
from streamscribe.core.errors import GatewayProtocolError
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.core.settings import Settings
from streamscribe.producers.gateway.admission import (
    Admission,
    SessionHub,
    Tokens,
    bearer,
    origin_allowed,
)
from streamscribe.producers.gateway.flow import FlowPolicy
from streamscribe.producers.gateway.metrics import GatewayMetrics
from streamscribe.producers.gateway.protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_FRAME_TOO_LARGE,
    CLOSE_NORMAL,
    CLOSE_REASONS,
    CLOSE_SESSION_TOO_LONG,
    CLOSE_START_TIMEOUT,
    CLOSE_UNAUTHORIZED,
    ERR_AUDIO_AFTER_END,
    ERR_DUPLICATE_START,
    ERR_SESSION_TOO_LONG,
    EndMessage,
    Refusal,
    StartMessage,
    encode,
    error_message,
    parse_client_message,
)
from streamscribe.producers.gateway.router import KafkaRouter
from streamscribe.producers.gateway.session import GatewaySession
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.events import SessionEvent, now_us
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import KIND_FINAL

log = logging.getLogger(__name__)

WS_PATH: Final = "/ws"
CLIENT_ID: Final = "streamscribe-gateway"
POLL_EVERY_S: Final = 0.1
EXPIRE_EVERY_S: Final = 0.5
HARD_FRAME_FACTOR: Final = 4  # frames above factor × max_frame_bytes: the library's 1009
STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class GatewayOptions:
    tokens: Tokens
    origins: tuple[str, ...] = ()


@dataclass
class Live:
    """The network side of a held session: its socket's writer, flow policy, close code."""

    flow: FlowPolicy
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    direct: list[dict[str, Any]] = field(default_factory=list)  # not in the log
    cursor: int = 0  # log entries sent to the current socket
    close_code: int = CLOSE_NORMAL
    first_audio: float | None = None  # monotonic time of the session's first frame
    final_wait: asyncio.Task[None] | None = None

    def push(self, doc: dict[str, Any]) -> None:
        self.direct.append(doc)
        self.changed.set()


def _static(name: str) -> bytes:
    return resources.files("streamscribe.producers.gateway").joinpath("static", name).read_bytes()


def _response(status: int, body: bytes, content_type: str) -> Response:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "")
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status, reason, headers, body)


class Gateway:
    """One gateway process: a hub of sessions, a router, a producer, a WebSocket server."""

    def __init__(self, settings: Settings, options: GatewayOptions) -> None:
        self.settings = settings
        self.options = options
        self.topics = Topics(settings.topic_prefix)
        self.hub = SessionHub(
            max_sessions=settings.gateway_max_sessions,
            max_per_token=settings.gateway_max_sessions_per_token,
            grace_s=settings.gateway_grace_s,
        )
        self.live: dict[str, Live] = {}
        self.metrics = GatewayMetrics(
            open_sessions=lambda: len(self.hub.held), queue=self._queue_depth
        )
        self._verdicts: weakref.WeakKeyDictionary[ServerConnection, str | Refusal] = (
            weakref.WeakKeyDictionary()
        )
        self.producer: DeliveryProducer | None = None
        self.port: int | None = None

    # ----------------------------------------------------------------- lifecycle
    async def serve(
        self,
        stop: asyncio.Future[None] | None = None,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Run until ``stop`` resolves (default: SIGTERM / SIGINT); ``on_ready(url)`` once
        the port listens."""
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = loop.create_future()
            done = stop

            def on_signal() -> None:
                if not done.done():
                    done.set_result(None)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
        probe_broker(self.settings.bootstrap)  # a refused login ends it here, in one line
        create_topics(self.settings.bootstrap, self.topics.specs(self.settings.partitions))
        self.producer = DeliveryProducer.from_settings(self.settings, client_id=CLIENT_ID)
        router = KafkaRouter(
            self.settings, wanted=self.hub.held.__contains__, deliver=self._deliver
        )
        router.start(loop)
        tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._expire())]
        s = self.settings
        try:
            async with serve(
                self._handle,
                s.gateway_host,
                s.gateway_port,
                process_request=self._process_request,
                max_size=HARD_FRAME_FACTOR * s.gateway_max_frame_bytes,
                compression=None,
            ) as server:
                self.port = _port(server)
                if on_ready is not None:
                    on_ready(f"http://{s.gateway_host}:{self.port}")
                await stop
        finally:
            for t in tasks:
                t.cancel()
            for session in list(self.hub.held.values()):
                self._publish(session.session.finish(now_us=now_us()))
            router.stop()
            stats = self.producer.close()
            log.info("gateway stopped: %d chunks sent, %d failed", stats.sent, stats.failed)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_EVERY_S)
            if self.producer is not None:
                self.producer.poll(0)

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            for session in self.hub.expired(time.monotonic()):
                log.info("session %s: grace ran out", session.session_id)
                self._publish(session.finish(now_us=now_us()))
                self._drop(session.session_id)

    def _drop(self, sid: str) -> None:
        live = self.live.pop(sid, None)
        if live is not None and live.final_wait is not None:
            live.final_wait.cancel()

    def _queue_depth(self) -> float:
        return float(
            sum(
                len(h.session.log) - self.live[sid].cursor
                for sid, h in self.hub.held.items()
                if sid in self.live
            )
        )

    def _publish(self, chunks: list[AudioChunk]) -> None:
        assert self.producer is not None
        for c in chunks:
            self.producer.send(self.topics.audio, c.key, c.encode())

    # ------------------------------------------------------------------ HTTP side
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == WS_PATH and "websocket" in request.headers.get("Upgrade", "").lower():
            self._verdicts[connection] = self._verdict(request, url.query)
            return None
        if url.path == "/":
            return _response(200, _static("index.html"), STATIC["index.html"])
        if url.path.startswith("/static/") and url.path[8:] in STATIC:
            name = url.path[8:]
            return _response(200, _static(name), STATIC[name])
        if url.path == "/healthz":
            body = json.dumps({"status": "ok", "sessions": len(self.hub.held)}).encode()
            return _response(200, body, "application/json")
        if url.path == "/metrics":
            return _response(200, self.metrics.render(), "text/plain; version=0.0.4")
        return _response(404, b"not found\n", "text/plain")

    def _verdict(self, request: Request, query: str) -> str | Refusal:
        """The token id, or why the connection is refused (decided in the handshake)."""
        h = request.headers
        if not origin_allowed(h.get("Origin"), host=h.get("Host"), allowed=self.options.origins):
            return Refusal(CLOSE_FORBIDDEN_ORIGIN, f"origin {h.get('Origin')} not allowed")
        query_token = next(iter(parse_qs(query).get("token", [])), None)
        token = bearer(h.get("Authorization"), query_token)
        tid = self.options.tokens.check(token)
        if tid is None:
            return Refusal(CLOSE_UNAUTHORIZED, "no token" if not token else "wrong token")
        return tid

    # ------------------------------------------------------------- WebSocket side
    async def _handle(self, ws: ServerConnection) -> None:
        self.metrics.connections.inc()
        try:
            await self._session(ws)
        except ConnectionClosed:
            pass
        finally:
            self.metrics.connections.dec()

    async def _refuse(self, ws: ServerConnection, refusal: Refusal) -> None:
        self.metrics.refused.labels(CLOSE_REASONS.get(refusal.code, "other")).inc()
        log.info("refused %s: %s", ws.remote_address, refusal.reason)
        await ws.close(refusal.code, refusal.reason)

    async def _start(self, ws: ServerConnection) -> StartMessage | Refusal:
        try:
            first = await asyncio.wait_for(ws.recv(), self.settings.gateway_start_timeout_s)
        except TimeoutError:
            return Refusal(CLOSE_START_TIMEOUT, "no start message")
        if isinstance(first, bytes):
            return Refusal(CLOSE_BAD_REQUEST, "audio before start")
        try:
            msg = parse_client_message(first)
        except GatewayProtocolError as exc:
            return Refusal(CLOSE_BAD_REQUEST, str(exc))
        if not isinstance(msg, StartMessage):
            return Refusal(CLOSE_BAD_REQUEST, "the first message must be start")
        return msg

    async def _session(self, ws: ServerConnection) -> None:
        verdict = self._verdicts.pop(ws, Refusal(CLOSE_UNAUTHORIZED, "no handshake"))
        if isinstance(verdict, Refusal):
            return await self._refuse(ws, verdict)
        start = await self._start(ws)
        if isinstance(start, Refusal):
            return await self._refuse(ws, start)
        adm = self.hub.admit(start, verdict)
        if isinstance(adm, Refusal):
            return await self._refuse(ws, adm)
        session = adm.session
        if adm.resumed and _format(session.start) != _format(start):
            self.hub.detach(session.session_id, time.monotonic())
            return await self._refuse(ws, Refusal(CLOSE_BAD_REQUEST, "resume in another format"))
        live = self._attach(session, start, adm)
        await ws.send(encode(self._ready(session, live, adm)))
        self.metrics.events_out.labels("ready").inc()
        writer = asyncio.create_task(self._writer(ws, session, live))
        try:
            await self._reader(ws, session, live)
        finally:
            if session.completed and live.cursor >= len(session.log):
                self.hub.release(session.session_id)
                self._drop(session.session_id)
            elif session.session_id in self.hub.held:
                self.hub.detach(session.session_id, time.monotonic())
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    def _attach(self, session: GatewaySession, start: StartMessage, adm: Admission) -> Live:
        live = self.live.get(session.session_id)
        if live is None:
            s = self.settings
            flow = FlowPolicy(s.chunk_ms, s.gateway_flow_high_ms, s.gateway_flow_low_ms)
            live = self.live[session.session_id] = Live(flow)
        live.direct.clear()
        live.cursor = min(start.resume_from or 0, len(session.log)) if adm.resumed else 0
        live.changed.set()
        return live

    def _ready(self, session: GatewaySession, live: Live, adm: Admission) -> dict[str, Any]:
        return {
            "type": "ready",
            "session_id": session.session_id,
            "resumed": adm.resumed,
            "chunk_ms": live.flow.chunk_ms,
            "next_seq": session.seq,
            "received_samples": session.samples,
            "grace_s": self.settings.gateway_grace_s,
            "max_frame_bytes": self.settings.gateway_max_frame_bytes,
        }

    async def _writer(self, ws: ServerConnection, session: GatewaySession, live: Live) -> None:
        """The connection's one sender: direct messages, then the log from the cursor."""
        while True:
            await live.changed.wait()
            live.changed.clear()
            while live.direct:
                doc = live.direct.pop(0)
                await ws.send(encode(doc))
                self.metrics.events_out.labels(doc["type"]).inc()
            while live.cursor < len(session.log):
                doc = session.log[live.cursor]
                await ws.send(encode(doc))
                live.cursor += 1
                self.metrics.events_out.labels(doc["type"]).inc()
                if doc["type"] == "session_end":
                    await ws.close(live.close_code, CLOSE_REASONS[live.close_code])
                    return

    async def _reader(self, ws: ServerConnection, session: GatewaySession, live: Live) -> None:
        s = self.settings
        while True:
            try:
                msg = await ws.recv()
            except ConnectionClosed:
                return
            if isinstance(msg, bytes):
                if len(msg) > s.gateway_max_frame_bytes:
                    self._publish(session.finish(now_us=now_us()))
                    self.hub.release(session.session_id)
                    self._drop(session.session_id)
                    detail = f"{len(msg)} > {s.gateway_max_frame_bytes} bytes"
                    return await self._refuse(ws, Refusal(CLOSE_FRAME_TOO_LARGE, detail))
                await self._audio(session, live, msg)
                continue
            try:
                parsed = parse_client_message(msg)
            except GatewayProtocolError as exc:
                live.push(error_message(exc.code, str(exc)))
                continue
            if isinstance(parsed, StartMessage):
                live.push(error_message(ERR_DUPLICATE_START, "the session has already started"))
            elif isinstance(parsed, EndMessage):
                self._end(session, live)

    async def _audio(self, session: GatewaySession, live: Live, data: bytes) -> None:
        if session.ended:
            live.push(error_message(ERR_AUDIO_AFTER_END, "audio after end is ignored"))
            return
        try:
            chunks = session.frame(data, now_us=now_us())
        except GatewayProtocolError as exc:
            live.push(error_message(exc.code, str(exc)))
            return
        self._publish(chunks)
        self.metrics.audio_seconds.inc(chunks[0].n_samples / chunks[0].sample_rate)
        now = time.monotonic()
        if live.first_audio is None:
            live.first_audio = now
        if session.audio_s >= self.settings.gateway_max_session_s:
            live.close_code = CLOSE_SESSION_TOO_LONG
            live.push(error_message(ERR_SESSION_TOO_LONG, "session duration limit reached"))
            self.metrics.refused.labels(CLOSE_REASONS[CLOSE_SESSION_TOO_LONG]).inc()
            self._end(session, live)
            return
        ahead = session.audio_s - (now - live.first_audio) - self.settings.gateway_burst_s
        if ahead > 0:
            self.metrics.paused_seconds.inc(ahead)
            await asyncio.sleep(ahead)  # reads paused: TCP backpressure on the client

    def _end(self, session: GatewaySession, live: Live) -> None:
        self._publish(session.finish(now_us=now_us()))
        if live.final_wait is None:
            live.final_wait = asyncio.create_task(self._final_wait(session, live))
        self._check_complete(session, live)

    async def _final_wait(self, session: GatewaySession, live: Live) -> None:
        await asyncio.sleep(self.settings.gateway_final_wait_s)
        if session.complete(complete=False) is not None:
            log.warning("session %s: finals still missing after the wait", session.session_id)
            live.changed.set()

    def _check_complete(self, session: GatewaySession, live: Live) -> None:
        if session.all_finals_in and session.complete() is not None:
            live.changed.set()

    # ----------------------------------------------------------- from the router
    def _deliver(self, sid: str, kind: str, item: Any) -> None:
        session = self.hub.get(sid)
        live = self.live.get(sid)
        if session is None or live is None:
            return
        if kind == "transcript":
            entry = session.transcript(item)
            if entry is None:
                return
            live.changed.set()
            captured = (item.get("timestamps") or {}).get("captured_at_us")
            if item["kind"] == KIND_FINAL and captured:
                latency_ms = (now_us() - int(captured)) / 1000
                self.metrics.final_latency.observe(latency_ms / 1000)
                before = live.flow.chunk_ms
                changed = live.flow.observe(latency_ms)
                if changed is not None:
                    reason = "latency_high" if changed > before else "latency_low"
                    live.push(
                        {
                            "type": "flow",
                            "chunk_ms": changed,
                            "reason": reason,
                            "latency_ms": round(latency_ms, 1),
                        }
                    )
        elif kind == "command":
            if session.reply(item) is not None:
                live.changed.set()
        elif isinstance(item, SessionEvent):
            session.session_event(item.kind, item.channel, item.utterance)
        self._check_complete(session, live)


def _format(s: StartMessage) -> tuple[int, str, int, tuple[str, ...]]:
    return (s.sample_rate, s.encoding, s.channels, s.roles)


def _port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])
