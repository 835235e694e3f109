"""Offline use of the cores, no Kafka: segment or transcribe a file through the streaming path.

:func:`segment_file` is what ``streamscribe segment FILE`` runs (one
:class:`UtteranceSpan` per utterance, the reference the streaming stage is checked
against); :func:`make_chunks` cuts samples into chunks as an edge producer would.

:func:`transcribe_file` is what ``streamscribe transcribe FILE`` runs. It feeds the file
through exactly the path a live session takes, so its utterances are the ones the worker
would produce for the same file:

1. the file is read with soundfile at its own sample rate, any number of channels;
2. each channel is cut into ``chunk_ms`` chunks of the source rate and encoded
   ``pcm_s16le``, as ``streamscribe produce`` publishes them (:func:`make_chunks`' path);
3. each channel runs through its own :class:`ChannelSegmenter` (validation, resampling to
   16 kHz, VAD, endpointing), VAD calls batched across channels by
   :meth:`~streamscribe.processors.channel_segmenter.Segmenters.step`;
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
from streamscribe.processors.channel_segmenter import ChannelSegmenter, Segmenters
from streamscribe.processors.features import UtteranceSummary
from streamscribe.processors.postprocess import PostProcessor
from streamscribe.processors.reassembly import Chunk
from streamscribe.processors.segmenter_types import (
    EndReason,
    Event,
    SegmenterConfig,
    UtteranceFinal,
    UtteranceUpdate,
    sample_ms,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.schemas.pcm import PCM_S16LE, decode_payload, encode_payload

if TYPE_CHECKING:
    from streamscribe.processors.asr import MoonshineAsr

__all__ = [
    "DEFAULT_CHUNK_MS",
    "UtteranceSpan",
    "UtteranceText",
    "file_chunks",
    "format_json_lines",
    "format_text",
    "make_chunks",
    "segment_file",
    "spans_from_events",
    "transcribe_file",
    "utterance_audio",
]

DEFAULT_CHUNK_MS: Final = 100
"""Chunk length a producer publishes by default (``streamscribe produce --chunk-ms``)."""


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
    ``position`` like :func:`make_chunks`; the last one
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
    return decode_payload(b"".join(pcm16_parts), PCM_S16LE)


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
    post: PostProcessor | None = None,
) -> list[UtteranceText]:
    """Transcribe every utterance of every channel of ``path``; see the module docstring.

    The text is post-processed as the worker's finals are (``post``, default
    :class:`~streamscribe.processors.postprocess.PostProcessor` without redaction).
    ``config`` is the segmenter's (defaults as in the worker); a source rate outside its
    ``validation.sample_rates`` is admitted for this file, as
    :func:`segment_file` does. ``vad`` may be shared
    between calls (one is built otherwise).
    """
    cfg = config or SegmenterConfig()
    post = post or PostProcessor()
    model = vad or SileroVad()
    segmenters = Segmenters(model)
    segs: list[ChannelSegmenter] = []
    collectors: list[_ChannelAudio] = []
    results: list[UtteranceText] = []
    for rate, chunks in file_chunks(path, chunk_ms):
        if not segs:
            if rate not in cfg.validation.sample_rates:
                cfg = replace(cfg, validation=replace(cfg.validation, sample_rates=(rate,)))
            segs = [ChannelSegmenter(model, cfg) for _ in chunks]
            collectors = [_ChannelAudio() for _ in chunks]
        for channel, out in enumerate(segmenters.step(segs, chunks)):
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
                        text=post.apply(decoded.text),
                        confidence=decoded.confidence,
                    )
                )
    results.sort(key=lambda r: (r.start_ms, r.channel))
    return results


# --------------------------------------------------------------------------- segmentation


def make_chunks(
    samples: npt.ArrayLike,
    sample_rate: int,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    encoding: str = PCM_S16LE,
    end_of_stream: bool = True,
) -> list[Chunk]:
    """Cut one channel's float samples into contiguous chunks as an edge producer would.

    >>> [c.n_samples for c in make_chunks(np.zeros(250, np.float32), 1000)]
    [100, 100, 50]
    """
    x = np.asarray(samples, dtype=np.float32)
    step = max(1, sample_rate * chunk_ms // 1000)
    starts = list(range(0, len(x), step)) or [0]
    return [
        Chunk(
            seq=i,
            position=p,
            n_samples=len(x[p : p + step]),
            sample_rate=sample_rate,
            payload=encode_payload(x[p : p + step], encoding),
            encoding=encoding,
            end_of_stream=end_of_stream and i == len(starts) - 1,
        )
        for i, p in enumerate(starts)
    ]


@dataclass(frozen=True)
class UtteranceSpan:
    """One utterance found offline by :func:`segment_file`."""

    file: str
    channel: int
    utterance: int
    start_sample: int  # 16 kHz
    end_sample: int
    reason: EndReason
    degraded: bool
    summary: UtteranceSummary

    @property
    def start_ms(self) -> float:
        return sample_ms(self.start_sample)

    @property
    def end_ms(self) -> float:
        return sample_ms(self.end_sample)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``file``, ``channel``, ``start_ms``, ``end_ms`` and the rest."""
        return {
            "file": self.file,
            "channel": self.channel,
            "utterance": self.utterance,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "reason": self.reason,
            "degraded": self.degraded,
            "summary": self.summary.to_dict(),
        }


def spans_from_events(file: str, channel: int, events: Sequence[Event]) -> list[UtteranceSpan]:
    """The :class:`UtteranceSpan` of every :class:`UtteranceFinal` in ``events``."""
    return [
        UtteranceSpan(
            file=file,
            channel=channel,
            utterance=e.utterance,
            start_sample=e.start_sample,
            end_sample=e.end_sample,
            reason=e.reason,
            degraded=e.degraded,
            summary=e.summary,
        )
        for e in events
        if isinstance(e, UtteranceFinal)
    ]


def segment_file(
    path: str | Path,
    *,
    vad: SileroVad | None = None,
    config: SegmenterConfig | None = None,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    encoding: str = PCM_S16LE,
) -> list[UtteranceSpan]:
    """Segment an audio file offline through the streaming core (the reference for streaming).

    The file (any rate soundfile reads, mono or multichannel) is cut into ``chunk_ms`` chunks
    encoded as ``encoding`` — what a producer would publish — and each channel runs through
    its own :class:`ChannelSegmenter`, VAD batched across channels. Spans are ordered by
    channel, then time.

    >>> from streamscribe.processors.asr import bundled_recording
    >>> spans = segment_file(bundled_recording("beckett.wav"))
    >>> len(spans), spans[0].to_dict()["start_ms"], spans[0].to_dict()["end_ms"]
    (6, 152.0, 1316.0)
    """
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    cfg = config or SegmenterConfig()
    if rate not in cfg.validation.sample_rates:
        cfg = replace(cfg, validation=replace(cfg.validation, sample_rates=(int(rate),)))
    model = vad or SileroVad()
    segmenters = Segmenters(model)
    segs = [ChannelSegmenter(model, cfg) for _ in range(data.shape[1])]
    per_channel = [
        make_chunks(data[:, ch], int(rate), chunk_ms, encoding) for ch in range(len(segs))
    ]
    events: list[list[Event]] = [[] for _ in segs]
    for step in range(len(per_channel[0])):
        for ch, out in enumerate(segmenters.step(segs, [chunks[step] for chunks in per_channel])):
            if out.error is not None:
                raise out.error
            events[ch].extend(out.events)
    return [s for ch, ev in enumerate(events) for s in spans_from_events(str(path), ch, ev)]
