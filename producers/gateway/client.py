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
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from streamscribe.core.errors import GatewayError, GatewayRefusedError
from streamscribe.producers.gateway.protocol import CLOSE_NORMAL, CLOSE_SESSION_BUSY
from streamscribe.producers.source import read_audio
from streamscribe.schemas.pcm import PCM_MULAW, PCM_S16LE

PACE_REALTIME: Final = "realtime"
PACE_ASAP: Final = "asap"
MIC_RATE: Final = 16000
MIC_BLOCK_S: Final = 0.02
CLOSE_ABNORMAL: Final = 1006  # the connection was lost without a close frame
RETRY_S: Final = 0.2

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
    reconnects: int = 0


class _Sent:
    """Send times of frame ends, to find when the sample at a stream time was sent."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.ends: list[int] = []
        self.times: list[float] = []

    @property
    def total(self) -> int:
        return self.ends[-1] if self.ends else 0

    def rewind(self, end_sample: int) -> None:
        """Forget frames after ``end_sample`` (the gateway did not get them)."""
        i = bisect.bisect_right(self.ends, end_sample)
        del self.ends[i:], self.times[i:]

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


class _FileFrames:
    """The file in frames of the current hint, at real-time pace or as fast as sent.

    ``pos`` is the next sample frame to send; a resumed session sets it to the gateway's
    ``received_samples``. Real-time pace keeps the first connection's clock, so what could
    not be sent while the socket was down goes out at once after a reconnect.
    """

    def __init__(self, samples: np.ndarray[Any, Any], rate: int, encoding: str, pace: str):
        dtype = np.uint8 if encoding == PCM_MULAW else np.dtype("<i2")
        self.data = np.ascontiguousarray(samples.astype(dtype, copy=False))
        self.rate = rate
        self.pace = pace
        self.pos = 0
        self.t0: float | None = None

    async def pieces(self, chunk_ms: list[int]) -> AsyncIterator[np.ndarray[Any, Any]]:
        if self.t0 is None:
            self.t0 = time.monotonic()
        while self.pos < len(self.data):
            piece = self.data[self.pos : self.pos + max(1, self.rate * chunk_ms[0] // 1000)]
            if self.pace == PACE_REALTIME:
                due = self.t0 + (self.pos + len(piece)) / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            yield piece
            self.pos += len(piece)


async def stream(job: StreamJob, on_message: OnMessage | None = None) -> StreamReport:
    """Run one session through the gateway; the report of what came back.

    A connection lost without a close frame (1006) is retried for the session's grace
    period and resumed (``resume_from`` = the last event number received; the file goes on
    from the gateway's ``received_samples``); the microphone is not resumed.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.typing import Origin

    if job.path is None:
        rate, channels, encoding = MIC_RATE, 1, PCM_S16LE
        frames = None
    else:
        src = read_audio(job.path)
        if src.encoding not in (PCM_S16LE, PCM_MULAW):
            raise GatewayError(f"{job.path}: {src.encoding} cannot be streamed")
        rate, channels, encoding = src.sample_rate, src.channels, src.encoding
        frames = _FileFrames(src.samples, rate, encoding, job.pace)
    headers = {"Authorization": f"Bearer {job.token}"} if job.token else {}
    report = StreamReport()
    sent = _Sent(rate)
    chunk_ms = [job.chunk_ms or 100]
    last_n = 0
    retry_until: float | None = None  # set while resuming a lost connection
    grace_s = 0.0
    while True:
        try:
            ws = await connect(
                job.url,
                additional_headers=headers,
                origin=Origin(job.origin) if job.origin else None,
                max_size=None,
                compression=None,
            )
        except (OSError, InvalidHandshake) as exc:
            if retry_until is not None and time.monotonic() < retry_until:
                await asyncio.sleep(RETRY_S)
                continue
            raise GatewayError(f"cannot connect to {job.url}: {exc}") from None
        start = _start_message(job, rate, channels, encoding)
        if retry_until is not None:
            start.update(session_id=report.session_id, resume_from=last_n)
        ready = asyncio.Event()

        async def receive(ws: Any = ws, ready: asyncio.Event = ready) -> None:
            nonlocal last_n, grace_s
            async for raw in ws:
                msg = json.loads(raw)
                last_n = msg.get("n", last_n)
                report.messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                if msg["type"] == "ready":
                    report.session_id = msg["session_id"]
                    grace_s = float(msg["grace_s"])
                    if job.chunk_ms is None:
                        chunk_ms[0] = msg["chunk_ms"]
                    if frames is not None and msg["resumed"]:
                        frames.pos = int(msg["received_samples"])
                        sent.rewind(frames.pos)
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

        async with ws:
            receiver = asyncio.create_task(receive())
            try:
                await ws.send(json.dumps(start))
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if ready.is_set():
                    pieces = (
                        _mic_pieces(rate, chunk_ms, job.mic_seconds)
                        if frames is None
                        else frames.pieces(chunk_ms)
                    )
                    async for piece in pieces:
                        if chunk_ms[0] not in report.chunk_ms_seen:
                            report.chunk_ms_seen.append(chunk_ms[0])
                        await ws.send(piece.tobytes())
                        sent.add(
                            frames.pos + len(piece) if frames else sent.total + len(piece),
                            time.monotonic(),
                        )
                        report.frames_sent += 1
                    await ws.send(json.dumps({"type": "end"}))
                await receiver
            except ConnectionClosed:
                pass
            finally:
                receiver.cancel()
        report.close_code = ws.close_code
        report.close_reason = ws.close_reason or ""
        busy = report.close_code == CLOSE_SESSION_BUSY  # the gateway has not seen the drop yet
        if retry_until is not None and busy and time.monotonic() < retry_until:
            await asyncio.sleep(RETRY_S)
            continue
        lost = report.close_code == CLOSE_ABNORMAL and report.session_id and not report.complete
        if not lost or frames is None:
            break
        report.reconnects += 1
        retry_until = time.monotonic() + grace_s
    if report.close_code != CLOSE_NORMAL:
        raise GatewayRefusedError(
            f"the gateway closed the session: {report.close_code} {report.close_reason}".strip(),
            close_code=report.close_code or CLOSE_ABNORMAL,
        )
    return report


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
