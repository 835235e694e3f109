"""Audio sources and chunking, pure of Kafka: a file becomes ``AudioChunk`` s.

A file (WAV/FLAC/OGG at any sample rate, via soundfile) is one session; each of its
channels is a channel of that session (default roles: mono ``speaker``; stereo ``agent``,
``customer``). µ-law files are sent as they are (``pcm_mulaw``), without conversion.

Example::

    >>> import numpy as np
    >>> src = AudioSource(np.zeros((1600, 1), dtype=np.int16), 16000, "pcm_s16le", "t.wav")
    >>> chunks = list(chunk_channel(src, 0, session_id="s", role="speaker", chunk_ms=40))
    >>> [c.seq for c in chunks], [c.n_samples for c in chunks], chunks[-1].end_of_stream
    ([0, 1, 2], [640, 640, 320], True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import ProducerError
from streamscribe.schemas.audio import AudioChunk, SessionMeta
from streamscribe.schemas.pcm import (
    ENCODINGS,
    PCM_F32LE,
    PCM_MULAW,
    PCM_S16LE,
    SUPPORTED_SAMPLE_RATES,
    encode_payload,
)

MIN_CHUNK_MS = 10
MAX_CHUNK_MS = 1000
MONO_ROLE = "speaker"
STEREO_ROLES = ("agent", "customer")


@dataclass(frozen=True)
class AudioSource:
    """Decoded audio of one file: samples [frames, channels] and how to encode them."""

    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    sample_rate: int
    encoding: str
    name: str

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def default_roles(channels: int) -> tuple[str, ...]:
    if channels == 1:
        return (MONO_ROLE,)
    if channels == 2:
        return STEREO_ROLES
    return tuple(f"channel{i}" for i in range(channels))


def read_audio(path: str | Path, encoding: str | None = None) -> AudioSource:
    """Read an audio file; :class:`ProducerError` with a one-line reason if it can't."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise ProducerError(f"{path}: no such file")
    if encoding is not None and encoding not in ENCODINGS:
        raise ProducerError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ProducerError(f"{path}: not a readable audio file ({exc})") from None
    if info.samplerate not in SUPPORTED_SAMPLE_RATES:
        raise ProducerError(
            f"{path}: sample rate {info.samplerate} Hz not supported "
            f"({', '.join(map(str, SUPPORTED_SAMPLE_RATES))})"
        )
    if encoding is None:
        encoding = PCM_MULAW if info.subtype == "ULAW" else PCM_S16LE
    dtype = "float32" if encoding == PCM_F32LE else "int16"
    try:
        data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ProducerError(f"{path}: cannot decode audio ({exc})") from None
    return AudioSource(data, int(rate), encoding, path.name)


def check_chunk_ms(chunk_ms: int) -> int:
    if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
        raise ProducerError(f"--chunk-ms {chunk_ms}: must be {MIN_CHUNK_MS}..{MAX_CHUNK_MS}")
    return chunk_ms


def chunk_samples(sample_rate: int, chunk_ms: int) -> int:
    return max(1, round(sample_rate * chunk_ms / 1000))


def chunk_channel(
    src: AudioSource,
    channel: int,
    *,
    session_id: str,
    role: str,
    chunk_ms: int = 100,
    meta: SessionMeta | None = None,
    captured_at_us: int = 0,
) -> Iterator[AudioChunk]:
    """The chunks of one channel, seq from 0; the last one carries ``end_of_stream``.

    ``captured_at_us`` is a placeholder; the sender stamps the real edge time.
    """
    step = chunk_samples(src.sample_rate, chunk_ms)
    col = src.samples[:, channel]
    n_chunks = max(1, -(-src.frames // step))
    for seq in range(n_chunks):
        start = seq * step
        piece = col[start : start + step]
        yield AudioChunk(
            session_id=session_id,
            channel=channel,
            role=role,
            seq=seq,
            position=start,
            n_samples=len(piece),
            sample_rate=src.sample_rate,
            encoding=src.encoding,
            captured_at_us=captured_at_us,
            payload=encode_payload(piece, src.encoding),
            end_of_stream=seq == n_chunks - 1,
            session_meta=meta if seq == 0 else None,
        )
