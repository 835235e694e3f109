"""Offline transcription: a file through the streaming segmenter core and the ASR core, no Kafka.

:func:`transcribe_file` is what ``streamscribe transcribe FILE`` runs. It feeds the file
through exactly the path a live session takes, so its utterances are the ones the worker
would produce for the same file:

1. the file is read with soundfile at its own sample rate, any number of channels;
2. each channel is cut into ``chunk_ms`` chunks of the source rate and encoded
   ``pcm_s16le``, as ``streamscribe produce`` publishes them (:func:`make_chunks`' path);
3. each channel runs through its own :class:`ChannelSegmenter` (validation, resampling to
   16 kHz, VAD, endpointing), VAD calls batched across channels by :func:`segment_many`;
4. an utterance's audio is the concatenation of its :class:`UtteranceUpdate` deltas and its
   :class:`UtteranceFinal` tail (16 kHz PCM16), decoded as ``int16 / 32768`` by
   :meth:`MoonshineAsr.transcribe` as soon as the utterance is final.

The file is read a chunk at a time, so memory stays bounded by the open utterances, not the
file length. Results are in stream order: by ``start_ms``, then channel.

Errors: an unreadable file raises :class:`~streamscribe.core.errors.ContractError`; a
chunk the validator rejects raises its :class:`ValidationError`; a model failure raises
:class:`AsrError` (all under ``StreamscribeError``).

Example::

    >>> from streamscribe.processors.asr import MoonshineAsr, bundled_recording
    >>> asr = MoonshineAsr.load(intra_threads=1)
    >>> results = transcribe_file(bundled_recording("beckett.wav"), asr=asr)
    >>> print(format_text(results[:2]))
    [00:00.1] ch0: Ever tried.
    [00:01.6] ch0: Ever failed.
    >>> sorted(results[0].to_dict())
    ['channel', 'confidence', 'end_ms', 'file', 'start_ms', 'text']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.core.errors import ContractError
from streamscribe.processors.reassembly import Chunk
from streamscribe.processors.segmenter import (
    ChannelSegmenter,
    Event,
    SegmenterConfig,
    UtteranceFinal,
    UtteranceUpdate,
    segment_many,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.schemas.pcm import PCM_S16LE, encode_payload

if TYPE_CHECKING:
    from streamscribe.processors.asr import MoonshineAsr

__all__ = [
    "DEFAULT_CHUNK_MS",
    "UtteranceText",
    "file_chunks",
    "format_json_lines",
    "format_text",
    "transcribe_file",
    "utterance_audio",
]

DEFAULT_CHUNK_MS: Final = 100
"""Chunk length a producer publishes by default (``streamscribe produce --chunk-ms``)."""

PCM16_SCALE: Final = np.float32(32768.0)


@dataclass(frozen=True)
class UtteranceText:
    """One transcribed utterance of one channel of a file.

    ``start_ms`` / ``end_ms`` are stream time from the channel's first sample;
    ``confidence`` is the ASR's ``exp(mean token log-probability)`` in (0, 1].
    """

    file: str
    channel: int
    start_ms: float
    end_ms: float
    text: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the six fields (``file`` ... ``confidence``), in order.

        >>> UtteranceText("a.wav", 1, 400.0, 1250.0, "Hello.", 0.875).to_dict()["end_ms"]
        1250.0
        """
        return asdict(self)


def format_text(results: Iterable[UtteranceText]) -> str:
    """One line per utterance, ``[MM:SS.s] chN: text`` (start time; tenths rounded down).

    >>> print(format_text([UtteranceText("a.wav", 1, 61_250.0, 63_000.0, "Hi there.", 0.9)]))
    [01:01.2] ch1: Hi there.
    """
    return "\n".join(f"[{_clock(r.start_ms)}] ch{r.channel}: {r.text}" for r in results)


def format_json_lines(results: Iterable[UtteranceText]) -> str:
    """One compact JSON object per utterance and line (see :meth:`UtteranceText.to_dict`).

    >>> print(format_json_lines([UtteranceText("a.wav", 0, 0.0, 500.0, "Yes.", 0.5)]))
    ... # doctest: +NORMALIZE_WHITESPACE
    {"file": "a.wav", "channel": 0, "start_ms": 0.0, "end_ms": 500.0, "text": "Yes.",
     "confidence": 0.5}
    """
    return "\n".join(json.dumps(r.to_dict(), ensure_ascii=False) for r in results)


def _clock(ms: float) -> str:
    tenths = int(ms // 100)
    minutes, tenths = divmod(tenths, 600)
    return f"{minutes:02d}:{tenths // 10:02d}.{tenths % 10}"


def file_chunks(
    path: str | Path, chunk_ms: int = DEFAULT_CHUNK_MS
) -> Iterator[tuple[int, list[Chunk]]]:
    """Read ``path`` chunk by chunk: yields ``(sample_rate, [one Chunk per channel])``.

    Each chunk holds ``sample_rate * chunk_ms // 1000`` source samples (the last may be
    shorter), is encoded ``pcm_s16le`` with :func:`encode_payload` and carries ``seq`` /
    ``position`` like :func:`~streamscribe.processors.segmenter.make_chunks`; the last one
    of every channel carries ``end_of_stream``. An empty file yields one empty final chunk
    per channel.
    """
    import soundfile as sf

    if chunk_ms < 1:
        raise ValueError(f"chunk_ms must be >= 1, got {chunk_ms}")
    try:
        handle = sf.SoundFile(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ContractError(f"{path}: not a readable audio file ({exc})") from None
    with handle:
        rate, channels = int(handle.samplerate), int(handle.channels)
        step = max(1, rate * chunk_ms // 1000)
        seq, position = 0, 0
        block = handle.read(step, dtype="float32", always_2d=True)
        while True:
            upcoming = handle.read(step, dtype="float32", always_2d=True) if len(block) else block
            last = len(upcoming) == 0
            yield (
                rate,
                [
                    Chunk(
                        seq=seq,
                        position=position,
                        n_samples=len(block),
                        sample_rate=rate,
                        payload=encode_payload(block[:, ch], PCM_S16LE),
                        encoding=PCM_S16LE,
                        end_of_stream=last,
                    )
                    for ch in range(channels)
                ],
            )
            if last:
                return
            seq, position, block = seq + 1, position + len(block), upcoming


def utterance_audio(pcm16_parts: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """Join 16 kHz PCM16 LE pieces (update deltas, then the final tail) as float32 in [-1, 1).

    >>> utterance_audio([b"\\x00\\x40", b"\\x00\\xc0"]).tolist()
    [0.5, -0.5]
    """
    pcm = np.frombuffer(b"".join(pcm16_parts), dtype="<i2")
    return pcm.astype(np.float32) / PCM16_SCALE


class _ChannelAudio:
    """Collects one channel's utterance audio from segmenter events."""

    def __init__(self) -> None:
        self.parts: dict[int, list[bytes]] = {}

    def finals(self, events: Sequence[Event]) -> Iterator[tuple[UtteranceFinal, list[bytes]]]:
        """Yield every completed utterance in ``events`` with its audio pieces."""
        for event in events:
            if isinstance(event, UtteranceUpdate):
                self.parts.setdefault(event.utterance, []).append(event.pcm16_delta)
            elif isinstance(event, UtteranceFinal):
                parts = self.parts.pop(event.utterance, [])
                parts.append(event.pcm16_tail)
                yield event, parts


def transcribe_file(
    path: str | Path,
    *,
    asr: MoonshineAsr,
    config: SegmenterConfig | None = None,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    vad: SileroVad | None = None,
) -> list[UtteranceText]:
    """Transcribe every utterance of every channel of ``path``; see the module docstring.

    ``config`` is the segmenter's (defaults as in the worker); a source rate outside its
    ``validation.sample_rates`` is admitted for this file, as
    :func:`~streamscribe.processors.segmenter.segment_file` does. ``vad`` may be shared
    between calls (one is built otherwise).
    """
    cfg = config or SegmenterConfig()
    model = vad or SileroVad()
    segs: list[ChannelSegmenter] = []
    collectors: list[_ChannelAudio] = []
    results: list[UtteranceText] = []
    for rate, chunks in file_chunks(path, chunk_ms):
        if not segs:
            if rate not in cfg.validation.sample_rates:
                cfg = replace(cfg, validation=replace(cfg.validation, sample_rates=(rate,)))
            segs = [ChannelSegmenter(model, cfg) for _ in chunks]
            collectors = [_ChannelAudio() for _ in chunks]
        for channel, out in enumerate(segment_many(segs, chunks)):
            if out.error is not None:
                raise out.error
            for final, parts in collectors[channel].finals(out.events):
                decoded = asr.transcribe(utterance_audio(parts))
                results.append(
                    UtteranceText(
                        file=str(path),
                        channel=channel,
                        start_ms=final.start_ms,
                        end_ms=final.end_ms,
                        text=decoded.text,
                        confidence=decoded.confidence,
                    )
                )
    results.sort(key=lambda r: (r.start_ms, r.channel))
    return results
