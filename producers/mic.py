"""Microphone session: ``streamscribe mic``.

sounddevice's callback (PortAudio thread) copies each block into a bounded queue; a
producer thread cuts the stream into chunks and publishes them. Ctrl-C ends the session:
the last chunk carries ``end_of_stream`` and the producer flushes. A full queue (the
producer cannot keep up) drops the block and counts it as an overrun.

Example::

    streamscribe mic --list-devices
    streamscribe mic --device 1 --seconds 10
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscribe.core.errors import ProducerError
from streamscribe.core.kafka import DeliveryProducer, DeliveryStats
from streamscribe.core.settings import Settings
from streamscribe.producers.source import chunk_samples
from streamscribe.schemas.audio import ROLE_MIC, AudioChunk, SessionMeta
from streamscribe.schemas.events import now_us
from streamscribe.schemas.pcm import PCM_S16LE, encode_payload
from streamscribe.schemas.topics import Topics

QUEUE_BLOCKS = 256
DEFAULT_RATE = 16000
BLOCK_WAIT_S = 0.2
CLIENT_ID = "streamscribe-mic"


def load_sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio into a one-line ProducerError."""
    try:
        import sounddevice as sd
    except OSError as exc:  # sounddevice raises OSError when libportaudio is absent
        raise ProducerError(
            f"PortAudio is not available ({exc}); install it with "
            "`apt-get install libportaudio2` to use the microphone"
        ) from None
    return sd


def list_devices() -> str:
    sd = load_sounddevice()
    devices = sd.query_devices()
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    if not inputs:
        raise ProducerError("no audio input device found")
    return "\n".join(
        f"{d['index']:3d}: {d['name']} ({d['max_input_channels']} ch, "
        f"{int(d['default_samplerate'])} Hz)"
        for d in inputs
    )


@dataclass
class MicReport:
    session_id: str
    chunks: int
    overruns: int
    delivery: DeliveryStats


def run_mic(
    settings: Settings,
    *,
    session_id: str | None = None,
    device: int | str | None = None,
    sample_rate: int = DEFAULT_RATE,
    chunk_ms: int = 100,
    seconds: float | None = None,
) -> MicReport:
    """Capture until Ctrl-C (or ``seconds``), publishing chunks keyed by the session to the
    audio topic of ``settings``."""
    sd = load_sounddevice()
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise ProducerError(f"no usable audio input device: {exc}") from None
    sid = session_id or f"mic-{uuid.uuid4().hex[:8]}"
    blocks: queue.Queue[np.ndarray[Any, Any] | None] = queue.Queue(maxsize=QUEUE_BLOCKS)
    overruns = 0

    def callback(indata: np.ndarray[Any, Any], frames: int, t: Any, status: Any) -> None:
        nonlocal overruns
        try:
            blocks.put_nowait(indata[:, 0].copy())
        except queue.Full:
            overruns += 1

    topic = Topics(settings.topic_prefix).audio
    producer = DeliveryProducer.from_settings(settings, client_id=CLIENT_ID)
    step = chunk_samples(sample_rate, chunk_ms)
    meta = SessionMeta(source=f"mic:{info['name']}", channels=1, roles=(ROLE_MIC,))
    state = {"seq": 0, "position": 0}
    pending = np.zeros(0, dtype=np.int16)

    def send(samples: np.ndarray[Any, Any], eos: bool) -> None:
        chunk = AudioChunk(
            session_id=sid,
            channel=0,
            role=ROLE_MIC,
            seq=state["seq"],
            position=state["position"],
            n_samples=len(samples),
            sample_rate=sample_rate,
            encoding=PCM_S16LE,
            captured_at_us=now_us(),
            payload=encode_payload(samples, PCM_S16LE),
            end_of_stream=eos,
            session_meta=meta if state["seq"] == 0 else None,
        )
        producer.send(topic, chunk.key, chunk.encode())
        state["seq"] += 1
        state["position"] += len(samples)

    stop = threading.Event()
    deadline = time.monotonic() + seconds if seconds else None
    try:
        with sd.InputStream(
            samplerate=sample_rate, channels=1, dtype="int16", device=device, callback=callback
        ):
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    block = blocks.get(timeout=BLOCK_WAIT_S)
                except queue.Empty:
                    continue
                if block is None:
                    break
                pending = np.concatenate([pending, block])
                while len(pending) >= step:
                    send(pending[:step], False)
                    pending = pending[step:]
    except KeyboardInterrupt:
        pass
    except sd.PortAudioError as exc:
        raise ProducerError(f"microphone failed: {exc}") from None
    finally:
        send(pending, True)
        stats = producer.close()
    return MicReport(sid, state["seq"], overruns, stats)
