"""The gateway's client: ``streamscribe stream FILE --url ws://HOST:PORT [--token T]``.

Streams a file (or the microphone) as binary frames of the hinted duration, at real-time
pace or as fast as the gateway reads (``asap``: the gateway's backpressure paces it),
follows ``flow`` hints, and collects the session's transcript events. A refusal (any close
code but 1000) raises :class:`~streamscribe.core.errors.GatewayRefusedError` with the code.

Latency of a final, as the client sees it: from the moment the client sent the frame that
holds the final's ``end_ms`` to the final's arrival (meaningful at real-time pace).

Example::

    import asyncio
    from streamscribe.producers.gateway.client import StreamJob, stream
    report = asyncio.run(stream(StreamJob("beckett.wav", "ws://127.0.0.1:8765/ws", token="t")))
    print(report.session_id, [f["text"] for f in report.finals])
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from streamscribe.core.errors import GatewayError, GatewayRefusedError
from streamscribe.producers.gateway.protocol import CLOSE_NORMAL
from streamscribe.producers.source import read_audio
from streamscribe.schemas.pcm import PCM_MULAW, PCM_S16LE

PACE_REALTIME: Final = "realtime"
PACE_ASAP: Final = "asap"
MIC_RATE: Final = 16000
MIC_BLOCK_S: Final = 0.02

OnMessage = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class StreamJob:
    path: str | None  # None with mic=True
    url: str
    token: str | None = None
    pace: str = PACE_REALTIME
    session_id: str | None = None
    chunk_ms: int | None = None  # None = follow the gateway's hints
    mic_seconds: float | None = None
    origin: str | None = None


@dataclass
class StreamReport:
    session_id: str = ""
    finals: list[dict[str, Any]] = field(default_factory=list)
    partials: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    chunk_ms_seen: list[int] = field(default_factory=list)
    frames_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""
    complete: bool = False


class _Sent:
    """Send times of frame ends, to find when the sample at a stream time was sent."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.ends: list[int] = []
        self.times: list[float] = []

    @property
    def total(self) -> int:
        return self.ends[-1] if self.ends else 0

    def add(self, end_sample: int, at: float) -> None:
        self.ends.append(end_sample)
        self.times.append(at)

    def sent_at(self, ms: float) -> float | None:
        i = bisect.bisect_left(self.ends, int(ms * self.rate / 1000))
        return self.times[i] if i < len(self.times) else None


def _start_message(job: StreamJob, rate: int, channels: int, encoding: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "start",
        "sample_rate": rate,
        "encoding": encoding,
        "channels": channels,
        "metadata": {"source": f"stream:{job.path or 'mic'}"},
    }
    if job.session_id:
        doc["session_id"] = job.session_id
    return doc


async def stream(job: StreamJob, on_message: OnMessage | None = None) -> StreamReport:
    """Run one session through the gateway; the report of what came back."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    if job.path is None:
        rate, channels, encoding = MIC_RATE, 1, PCM_S16LE
    else:
        src = read_audio(job.path)
        if src.encoding not in (PCM_S16LE, PCM_MULAW):
            raise GatewayError(f"{job.path}: {src.encoding} cannot be streamed")
        rate, channels, encoding = src.sample_rate, src.channels, src.encoding
    headers = {"Authorization": f"Bearer {job.token}"} if job.token else {}
    report = StreamReport()
    sent = _Sent(rate)
    try:
        ws = await connect(
            job.url,
            additional_headers=headers,
            origin=job.origin,
            max_size=None,  # type: ignore[arg-type]
            compression=None,
        )
    except (OSError, InvalidHandshake) as exc:
        raise GatewayError(f"cannot connect to {job.url}: {exc}") from None
    async with ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(_start_message(job, rate, channels, encoding)))
        chunk_ms = [job.chunk_ms or 100]
        ready = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                report.messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                if msg["type"] == "ready":
                    report.session_id = msg["session_id"]
                    if job.chunk_ms is None:
                        chunk_ms[0] = msg["chunk_ms"]
                    ready.set()
                elif msg["type"] == "flow" and job.chunk_ms is None:
                    chunk_ms[0] = msg["chunk_ms"]
                elif msg["type"] == "transcript":
                    ev = msg["event"]
                    if ev["kind"] == "final":
                        report.finals.append(ev)
                        at = sent.sent_at(float(ev["end_ms"]))
                        if at is not None:
                            report.latencies_ms.append((time.monotonic() - at) * 1000)
                    else:
                        report.partials += 1
                elif msg["type"] == "session_end":
                    report.complete = bool(msg["complete"])

        receiver = asyncio.create_task(receive())
        try:
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if ready.is_set():
                pieces = (
                    _mic_pieces(rate, chunk_ms, job.mic_seconds)
                    if job.path is None
                    else _file_pieces(src.samples, rate, encoding, job.pace, chunk_ms)
                )
                async for piece in pieces:
                    if chunk_ms[0] not in report.chunk_ms_seen:
                        report.chunk_ms_seen.append(chunk_ms[0])
                    await ws.send(piece.tobytes())
                    sent.add(sent.total + len(piece), time.monotonic())
                    report.frames_sent += 1
                await ws.send(json.dumps({"type": "end"}))
            await receiver
        except ConnectionClosed:
            pass
        finally:
            receiver.cancel()
        report.close_code = ws.close_code
        report.close_reason = ws.close_reason or ""
    if report.close_code != CLOSE_NORMAL:
        raise GatewayRefusedError(
            f"the gateway closed the session: {report.close_code} {report.close_reason}".strip(),
            close_code=report.close_code or 1006,
        )
    return report


async def _file_pieces(
    samples: np.ndarray[Any, Any], rate: int, encoding: str, pace: str, chunk_ms: list[int]
) -> AsyncIterator[np.ndarray[Any, Any]]:
    """The file in frames of the current hint, at real-time pace or as fast as read."""
    dtype = np.uint8 if encoding == PCM_MULAW else np.dtype("<i2")
    data = np.ascontiguousarray(samples.astype(dtype, copy=False))
    t0 = time.monotonic()
    pos = 0
    while pos < len(data):
        piece = data[pos : pos + max(1, rate * chunk_ms[0] // 1000)]
        if pace == PACE_REALTIME:
            await asyncio.sleep(max(0.0, t0 + (pos + len(piece)) / rate - time.monotonic()))
        pos += len(piece)
        yield piece


async def _mic_pieces(
    rate: int, chunk_ms: list[int], seconds: float | None
) -> AsyncIterator[np.ndarray[Any, Any]]:
    """The microphone, live, in frames of the current hint (until Ctrl-C or ``seconds``)."""
    from streamscribe.producers.mic import load_sounddevice

    sd = load_sounddevice()
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray[Any, Any]] = asyncio.Queue()

    def callback(indata: np.ndarray[Any, Any], frames: int, t: Any, status: Any) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, indata.copy())

    pending = np.zeros((0, 1), np.int16)
    deadline = time.monotonic() + seconds if seconds else None
    with sd.InputStream(samplerate=rate, channels=1, dtype="int16", callback=callback):
        while deadline is None or time.monotonic() < deadline:
            try:
                block = await asyncio.wait_for(blocks.get(), MIC_BLOCK_S * 10)
            except TimeoutError:
                continue
            pending = np.concatenate([pending, block])
            step = max(1, rate * chunk_ms[0] // 1000)
            while len(pending) >= step:
                yield pending[:step]
                pending = pending[step:]
    if len(pending):
        yield pending
