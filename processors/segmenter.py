"""The segmenter core's public names, in one place (each lives in its own small module).

validate -> resample -> energy gate -> VAD -> endpointing, per channel:

- :mod:`~streamscribe.processors.segmenter_types`: :class:`SegmenterConfig` and the events
  (:class:`SpeechStarted`, :class:`UtteranceUpdate`, :class:`UtteranceFinal`,
  :class:`SpeechEnded`, :class:`GapInserted`);
- :mod:`~streamscribe.processors.frontend`: validate -> resample -> gate -> 512-sample frames;
- :mod:`~streamscribe.processors.endpointer`: frame probabilities and power -> speech start,
  update, split and end decisions (pure);
- :mod:`~streamscribe.processors.channel_segmenter`: :class:`ChannelSegmenter` (one
  channel: frontend + VAD state + endpointer + audio) and :class:`Segmenters`, the batched
  call on the shared VAD (:func:`segment_many` is its shorthand);
- :mod:`~streamscribe.processors.offline`: :func:`make_chunks`, :func:`segment_file`,
  :class:`UtteranceSpan`.

Example::

    >>> from streamscribe.processors.asr import bundled_recording
    >>> [round(s.start_ms) for s in segment_file(bundled_recording("beckett.wav"))][:3]
    [152, 1688, 3320]
"""

from __future__ import annotations

from streamscribe.processors.channel_segmenter import ChannelSegmenter, Segmenters, segment_many
from streamscribe.processors.offline import (
    UtteranceSpan,
    make_chunks,
    segment_file,
    spans_from_events,
)
from streamscribe.processors.segmenter_types import (
    RATE,
    ChannelOutput,
    EndReason,
    Event,
    GapInserted,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
    UtteranceFinal,
    UtteranceUpdate,
)

__all__ = [
    "RATE",
    "ChannelOutput",
    "ChannelSegmenter",
    "EndReason",
    "Event",
    "GapInserted",
    "SegmenterConfig",
    "Segmenters",
    "SpeechEnded",
    "SpeechStarted",
    "UtteranceFinal",
    "UtteranceSpan",
    "UtteranceUpdate",
    "make_chunks",
    "segment_file",
    "segment_many",
    "spans_from_events",
]
