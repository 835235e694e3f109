"""Gateway processes for integration tests (stopped even when the test fails) and a raw
WebSocket helper that speaks the protocol of ``docs/websocket.md`` step by step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamscribe.broker import free_port
from streamscribe.schemas.topics import Topics
from tests.procs import Proc, streamscribe_cmd

READY = "gateway listening on"
TOKENS = ("tok-alpha", "tok-beta", "tok-gamma")


@dataclass
class GatewayProc:
    proc: Proc
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.http_url + path, timeout=10) as r:
            return r.read().decode()

    def health(self) -> dict[str, Any]:
        return json.loads(self.get("/healthz"))

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(f"streamscribe_gateway_{name}" + (f"{{{want}}}" if want else ""))
        m = re.search(rf"^{pattern} (\S+)$", self.get("/metrics"), re.M)
        return float(m.group(1)) if m else 0.0


@contextlib.contextmanager
def gateway(
    bootstrap: str, topics: Topics, tmp: Path, *, log_name: str = "gateway.log", **settings: str
) -> Iterator[GatewayProc]:
    """``streamscribe gateway`` on a free port with :data:`TOKENS` in a tokens file."""
    tokens = tmp / "tokens.txt"
    tokens.write_text("# test tokens\n" + "\n".join(TOKENS) + "\n")
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix,
        **{f"STREAMSCRIBE_{k.upper()}": v for k, v in settings.items()},
    }
    proc = Proc(
        streamscribe_cmd("gateway", "--port", str(port), "--tokens-file", str(tokens)),
        tmp / log_name,
        env=env,
    )
    try:
        proc.wait_for_log(READY, 60)
        yield GatewayProc(proc, port)
    finally:
        proc.stop()


def start_doc(**fields: Any) -> str:
    return json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", **fields})


class DroppingProxy:
    """A TCP proxy to the gateway whose connections can all be cut at once (RST both ways)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transports: list[asyncio.WriteTransport] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        self.transports += [writer.transport, up_w.transport]  # type: ignore[list-item]

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()  # one side ended: end the other (HTTP responses close their socket)

        await asyncio.gather(copy(reader, up_w), copy(up_r, writer))

    def drop_all(self) -> None:
        for t in self.transports:
            t.abort()
        self.transports.clear()


@contextlib.contextmanager
def proxy_thread(port: int) -> Iterator[tuple[DroppingProxy, int, asyncio.AbstractEventLoop]]:
    """A :class:`DroppingProxy` on its own event loop in a thread (for sync tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = DroppingProxy(port)
    listen = asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(timeout=10)
    try:
        yield proxy, listen, loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
