"""Audio sources and chunking, pure of Kafka: a file becomes ``AudioChunk`` s.

A file (WAV/FLAC/OGG at any sample rate, via soundfile) is one session; each of its
channels is a channel of that session (default roles: mono ``speaker``; stereo ``agent``,
``customer``). µ-law files pass the edge untouched: the codes of a µ-law WAV or AU file
are read from the file as they are and become the ``pcm_mulaw`` chunk payloads byte for
byte (no decode to PCM16 and re-encode); only an explicit ``--encoding`` converts.

Example::

    >>> import numpy as np
    >>> src = AudioSource(np.zeros((1600, 1), dtype=np.int16), 16000, "pcm_s16le", "t.wav")
    >>> chunks = list(chunk_channel(src, 0, session_id="s", role="speaker", chunk_ms=40))
    >>> [c.seq for c in chunks], [c.n_samples for c in chunks], chunks[-1].end_of_stream
    ([0, 1, 2], [640, 640, 320], True)
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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

log = logging.getLogger(__name__)

MIN_CHUNK_MS = 10
MAX_CHUNK_MS = 1000
MONO_ROLE = "speaker"
STEREO_ROLES = ("agent", "customer")

WAVE_FORMAT_MULAW: Final = 0x0007
WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
AU_MAGIC: Final = b".snd"
AU_ENCODING_MULAW: Final = 1
AU_HEADER: Final = struct.Struct(">4sIIIII")  # magic, offset, size, encoding, rate, channels


@dataclass(frozen=True)
class AudioSource:
    """Audio of one file: samples [frames, channels] and their payload encoding.

    ``samples`` are int16 or float32 to be encoded as ``encoding``, or, for a µ-law
    source read as it is, the file's µ-law codes (uint8), which are sent untouched.
    """

    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    sample_rate: int
    encoding: str
    name: str

    def __post_init__(self) -> None:
        if self.samples.dtype == np.uint8 and self.encoding != PCM_MULAW:
            raise ProducerError(f"{self.name}: uint8 samples are µ-law codes, not {self.encoding}")

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
    if path.is_dir():
        raise ProducerError(f"{path}: is a directory; give the audio files in it")
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
    if encoding == PCM_MULAW and info.subtype == "ULAW":
        codes = _mulaw_codes(path, info)
        if codes is not None:
            return AudioSource(codes, int(info.samplerate), PCM_MULAW, path.name)
        log.warning(
            "%s: µ-law in %s is decoded and re-encoded (WAV, AU pass as is)", path, info.format
        )
    dtype = "float32" if encoding == PCM_F32LE else "int16"
    try:
        data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ProducerError(f"{path}: cannot decode audio ({exc})") from None
    return AudioSource(data, int(rate), encoding, path.name)


def _mulaw_codes(path: Path, info: Any) -> npt.NDArray[np.uint8] | None:
    """The µ-law codes of a WAV or AU file as stored, [frames, channels]; None if another
    container (or a layout this reader does not know)."""
    data = path.read_bytes()
    if info.format in ("WAV", "WAVEX"):
        raw = _wav_mulaw_data(data)
    elif info.format == "AU":
        raw = _au_mulaw_data(data)
    else:
        return None
    if raw is None:
        return None
    n = info.frames * info.channels
    if len(raw) < n:
        return None
    return np.frombuffer(raw[:n], dtype=np.uint8).reshape(info.frames, info.channels)


def _wav_mulaw_data(data: bytes) -> bytes | None:
    """The ``data`` chunk of a RIFF/WAVE file whose ``fmt `` chunk says 8-bit µ-law."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt_ok = 12, False
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt " and size >= 16:
            tag, bits = struct.unpack_from("<H", data, body)[0], data[body + 14]
            if tag == WAVE_FORMAT_EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format GUID
            fmt_ok = tag == WAVE_FORMAT_MULAW and bits == 8
        elif cid == b"data":
            return data[body : body + size] if fmt_ok else None
        pos = body + size + (size & 1)  # chunks are padded to an even length
    return None


def _au_mulaw_data(data: bytes) -> bytes | None:
    """The sample data of a big-endian Sun/NeXT AU file encoded as 8-bit µ-law."""
    if len(data) < AU_HEADER.size:
        return None
    magic, offset, size, encoding, _rate, _channels = AU_HEADER.unpack_from(data)
    if magic != AU_MAGIC or encoding != AU_ENCODING_MULAW:
        return None
    end = len(data) if size == 0xFFFFFFFF else offset + size
    return data[offset:end]


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
            payload=_payload(piece, src.encoding),
            end_of_stream=seq == n_chunks - 1,
            session_meta=meta if seq == 0 else None,
        )


def _payload(piece: npt.NDArray[Any], encoding: str) -> bytes:
    """One chunk's payload: µ-law codes as they are, other samples encoded."""
    if piece.dtype == np.uint8:
        return piece.tobytes()
    return encode_payload(piece, encoding)
