"""Audio files written byte by byte for tests, so that their data bytes are known."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

WAVE_FORMAT_MULAW = 7
ODD_CHUNK = b"INFOabc"  # an odd-sized chunk before the data: readers must skip its pad byte


def write_mulaw_wav(path: Path, codes: npt.NDArray[np.uint8], rate: int) -> bytes:
    """Write µ-law ``codes`` [frames, channels] as a WAV file; returns its data bytes.

    The file has the layout libsndfile writes (an 18-byte ``fmt `` chunk, ``fact``) plus an
    odd-sized ``LIST`` chunk with its pad byte before ``data``.
    """
    frames, channels = codes.shape
    data = np.ascontiguousarray(codes, dtype=np.uint8).tobytes()
    fmt = struct.pack(
        "<HHIIHHH", WAVE_FORMAT_MULAW, channels, rate, rate * channels, channels, 8, 0
    )
    chunks = [
        b"fmt " + struct.pack("<I", len(fmt)) + fmt,
        b"fact" + struct.pack("<II", 4, frames),
        b"LIST" + struct.pack("<I", len(ODD_CHUNK)) + ODD_CHUNK + b"\0",
        b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b""),
    ]
    body = b"WAVE" + b"".join(chunks)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return data


def beckett_arrivals(session: str) -> list[Any]:
    """beckett.wav as the producer chunks it, as segmenter arrivals (handle = chunk seq)."""
    from importlib import resources

    from streamscribe.processors.stream_segmenter import Arrival, Stamps
    from streamscribe.producers.source import chunk_channel, read_audio

    path = Path(str(resources.files("moonshine_voice").joinpath("assets", "beckett.wav")))
    src = read_audio(path)
    return [
        Arrival(c, Stamps(1, 2, 3), ref=c.seq)
        for c in chunk_channel(src, 0, session_id=session, role="agent")
    ]
