"""One transcript line of the recognizer: all of its state in one pure object. No Kafka.

A line is one utterance of one channel (``session/channel/utterance``). It arrives as parts
(``update`` messages with the audio since the previous part, then one ``final``); a
:class:`RecognizerLine`

- **accepts a part** (:meth:`~RecognizerLine.verdict`): a part already applied (a replay
  after a crash) is a duplicate, any part after the line was finished is late; a gap in
  the ``part`` numbers is counted as missing audio and marks the final ``degraded``;
- **appends its audio** to an in-memory float32 buffer, converting each PCM16 part once
  (:func:`streamscribe.schemas.pcm.decode_payload`); a decode job gets a view of the buffer,
  never a re-joined copy;
- **says when a partial is due** (:class:`PartialPolicy`) and builds the :class:`DecodeJob`;
- **applies a decode result** through its :class:`LineStabilizer` (partials);
- **finishes** (:meth:`~RecognizerLine.finish`): the fields of the
  :class:`~streamscribe.schemas.transcripts.FinalTranscript`;
- holds its **speculation** (:class:`Speculation`, in memory only, never in a table): the
  final decode started on an ``end_candidate`` update, used by a final with an empty tail
  and the same end, dropped when more audio comes (a crash just loses it).

The part of the state that must survive a crash is its *changelog copy*: the small JSON
document of :meth:`~RecognizerLine.to_doc` (positions, counters, stabiliser) plus the raw
parts, each stored once under :func:`piece_key`. :meth:`RecognizerLine.restore` rebuilds
the same line from them.

Partial scheme (chosen with the figures in ``bench/README.md``, "cheaper partials"): a
partial is due every ``update_interval`` of new audio (:class:`PartialPolicy`; under load the
decode queue coalesces a line's partials, so its interval stretches instead of its queue
growing). It decodes only the line's **tail window**: the audio since the line's *anchor*.
The words before the anchor are the line's committed text. When the window reaches
``window`` seconds the job is cut at the centre of the window's quietest 32 ms frame
(between ``cut_min`` from its start and ``cut_margin`` before its end, so a cut falls
between words): the block before the cut and the rest are decoded as two segments (in
one batch), the block's text is committed and the anchor moves to the cut. So a partial
costs at most about ``window`` seconds of decoding however long the line is, and the
published text is ``committed text + tail text``. The final always decodes the whole line
(the same audio as the offline ``transcribe``).

Example::

    >>> import numpy as np
    >>> from streamscribe.schemas.pcm import encode_payload
    >>> line = RecognizerLine(role="agent", start_sample=16000)
    >>> line.verdict(0)
    'accept'
    >>> line.append(0, 24000, encode_payload(np.zeros(8000, np.float32), "pcm_s16le"))
    0
    >>> line.audio.shape, line.verdict(0)
    ((8000,), 'duplicate')
    >>> policy = PartialPolicy(interval_samples=8000)
    >>> line.partial_due(policy), line.partial_due(policy)   # taken: not due again
    (True, False)
    >>> job = line.job(final=False, policy=policy)
    >>> [len(seg) for seg in job.segments], job.cut    # shorter than the window: no cut
    ([8000], None)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamscribe.processors.stabilize import LineStabilizer
from streamscribe.schemas.pcm import PCM_S16LE, decode_payload

log = logging.getLogger(__name__)

RATE: Final = 16000
"""Sample rate of the utterance audio (Hz)."""
DEFAULT_GROWTH: Final = 0.0
FRAME: Final = 512
"""Samples per frame when looking for the quietest point of a window (32 ms)."""
MIN_BUFFER_SAMPLES: Final = RATE
"""Initial capacity of a line's audio buffer (it doubles when full)."""

Audio = npt.NDArray[np.float32]


class Verdict:
    """What to do with an arriving part."""

    FOREIGN: Final = "foreign"  # another processor group's segmentation: ignore
    DUPLICATE: Final = "duplicate"  # already applied (a replay): ignore
    LATE: Final = "late"  # the line is finished: ignore
    ACCEPT: Final = "accept"


def piece_key(line_id: str, part: int) -> str:
    """Key of one part's raw audio in the audio table.

    >>> piece_key("s/0/3", 2)
    's/0/3#2'
    """
    return f"{line_id}#{part}"


@dataclass(frozen=True)
class PartialPolicy:
    """When a speech-so-far update deserves a decode, and how much of the line it decodes.

    >>> policy = PartialPolicy(interval_samples=8000)
    >>> policy.due(decoded=0, available=8000), policy.due(decoded=48000, available=52000)
    (True, False)
    >>> quiet = np.ones(4 * RATE, np.float32)
    >>> quiet[30208:30720] = 0.0          # the quietest 32 ms frame: samples 30208..30719
    >>> policy.cut(quiet)
    30464
    >>> policy.cut(quiet[:RATE]) is None               # shorter than the window
    True
    """

    interval_samples: int = RATE // 2
    growth: float = DEFAULT_GROWTH  # optional: also wait for growth * decoded new samples
    window_samples: int = 5 * RATE // 2
    cut_min_samples: int = RATE
    cut_margin_samples: int = 3 * RATE // 10

    def due(self, decoded: int, available: int) -> bool:
        return available - decoded >= max(self.interval_samples, int(self.growth * decoded))

    def cut(self, window: Audio) -> int | None:
        """Offset in ``window`` to commit at (see the module docstring), or None."""
        n = window.shape[0]
        if n < self.window_samples:
            return None
        first = -(-self.cut_min_samples // FRAME)
        last = (n - self.cut_margin_samples) // FRAME  # frames [first, last) end in range
        if last <= first:
            return None
        frames = window[first * FRAME : last * FRAME].reshape(-1, FRAME)
        energy = np.einsum("ij,ij->i", frames, frames)
        return (first + int(np.argmin(energy))) * FRAME + FRAME // 2


class _AudioBuffer:
    """Append-only float32 samples with amortised doubling.

    :meth:`view` returns the samples so far without copying; later appends write past
    the view's end (or into a new array), so a view handed to a decode never changes.
    """

    def __init__(self) -> None:
        self._data: Audio = np.empty(0, dtype=np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, samples: Audio) -> None:
        need = self._n + samples.shape[0]
        if need > self._data.shape[0]:
            grown = np.empty(max(need, 2 * self._data.shape[0], MIN_BUFFER_SAMPLES), np.float32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = samples
        self._n = need

    def view(self) -> Audio:
        return self._data[: self._n]


@dataclass
class Speculation:
    """A speculative final decode of the line's first ``samples`` (ending at ``end_sample``).

    ``handle`` is the edge's awaitable of its outcome (set when the decode is queued); the
    core only compares positions.
    """

    end_sample: int
    samples: int
    handle: Any = None

    def matches(self, end_sample: int, samples: int, tail_samples: int) -> bool:
        """Whether a final ending at ``end_sample`` with this tail decodes the same audio.

        >>> Speculation(16000, 8000).matches(16000, 8000, 0)
        True
        >>> Speculation(16000, 8000).matches(17600, 9600, 1600)
        False
        """
        return tail_samples == 0 and end_sample == self.end_sample and samples == self.samples


@dataclass(frozen=True)
class DecodeJob:
    """One decode of a line: a partial (its tail window) or the final (the whole line).

    ``samples`` is the line's length in stream samples when the job was built (partials
    publish ``end_ms`` from it); ``segments`` the read-only views to decode: the whole
    line for a final; for a partial the audio from ``anchor`` (one segment) or, when the
    window is cut at ``cut`` (an offset from the anchor), the block before the cut and the
    rest. ``prefix`` is the line's committed text when the job was built.
    """

    line: RecognizerLine
    segments: tuple[Audio, ...]
    samples: int
    final: bool
    anchor: int = 0
    cut: int | None = None
    prefix: str = ""
    parts: int = 0  # the line's parts when the job was built: a partial's revision

    @property
    def audio(self) -> Audio:
        """The first segment (for a final: the whole line)."""
        return self.segments[0]


def join_text(*parts: str) -> str:
    """Texts of consecutive segments as one line.

    >>> join_text("", "It was", " the best ")
    'It was the best'
    """
    return " ".join(p.strip() for p in parts if p.strip())


class RecognizerLine:
    """Everything the recognizer knows about one line (see the module docstring)."""

    def __init__(self, role: str, start_sample: int, *, partition: int | None = None) -> None:
        self.role = role
        self.start_sample = start_sample
        self.end_sample = start_sample
        self.next_part = 0
        self.decoded_samples = 0  # audio length of the last partial decode submitted
        self.missing_parts = 0
        self.missing: list[int] = []  # the parts that never came (gaps), ascending
        self.done = False
        self.evicted = False  # dropped from memory (partition revoked): its jobs publish nothing
        self.written: dict[str, Any] | None = None  # the changelog copy last written
        self.stored = False  # some part of it is in the audio table (False: not live)
        self.partition = partition
        self.stabilizer = LineStabilizer()
        self.speculation: Speculation | None = None  # in memory only
        self.anchor = 0  # buffer offset where partial windows start (module docstring)
        self.anchor_text = ""  # the committed text of the audio before the anchor
        self.revision = 0  # of the last partial published (in memory only)
        self._audio = _AudioBuffer()

    # ---------------------------------------------------------------- parts in
    @property
    def audio_samples(self) -> int:
        """Length of the line in stream samples (``end - start``; missing parts count)."""
        return self.end_sample - self.start_sample

    @property
    def audio(self) -> Audio:
        """The buffered audio of every part received, in part order (a view, not a copy)."""
        return self._audio.view()

    @property
    def open(self) -> bool:
        """Whether partial results may still be applied (not finished, not evicted)."""
        return not (self.done or self.evicted)

    def verdict(self, part: int) -> str:
        """:class:`Verdict` for an arriving ``part``."""
        if self.done:
            return Verdict.LATE
        if part < self.next_part:
            return Verdict.DUPLICATE
        return Verdict.ACCEPT

    def append(self, part: int, end_sample: int, payload: bytes) -> int:
        """Apply an accepted part (PCM16 bytes); returns how many parts before it are missing."""
        missing = max(0, part - self.next_part)
        self.missing_parts += missing
        self.missing.extend(range(self.next_part, part))
        self._audio.append(decode_payload(payload, PCM_S16LE))
        self.next_part = part + 1
        self.end_sample = max(self.end_sample, end_sample)
        return missing

    # ----------------------------------------------------------------- decoding
    def partial_due(self, policy: PartialPolicy) -> bool:
        """Whether the audio since the last partial deserves a decode; if so it is taken."""
        if not policy.due(self.decoded_samples, self.audio_samples):
            return False
        self.decoded_samples = self.audio_samples
        return True

    def job(self, *, final: bool, policy: PartialPolicy | None = None) -> DecodeJob:
        """A decode of the audio so far: the whole line (final) or its tail window."""
        audio = self.audio
        if final:
            return DecodeJob(self, (audio,), self.audio_samples, True, parts=self.next_part)
        window = audio[self.anchor :]
        cut = (policy or PartialPolicy()).cut(window)
        segments = (window,) if cut is None else (window[:cut], window[cut:])
        return DecodeJob(
            self,
            segments,
            self.audio_samples,
            False,
            self.anchor,
            cut,
            self.anchor_text,
            parts=self.next_part,
        )

    def apply_partial(self, job: DecodeJob, texts: list[str]) -> tuple[str, str, int] | None:
        """Stabilise a decoded partial job (one text per segment): ``(text, stable_text,
        revision)``, or None when the line no longer takes partials (finished, or evicted
        from this worker) or a partial of a later part went out already. A cut job commits
        its first segment's text, unless another job moved the anchor since it was built.

        The revision is the number of the line's parts the job saw (:meth:`finish`): it
        grows with every published partial, and it is the same whichever worker decodes.
        """
        if not self.open or self.stabilizer.closed or job.parts <= self.revision:
            return None
        if job.cut is not None and job.anchor == self.anchor:
            self.anchor_text = join_text(job.prefix, texts[0])
            self.anchor = job.anchor + job.cut
        view = self.stabilizer.update(join_text(job.prefix, *texts))
        self.revision = job.parts
        return view.text, view.stable_text, job.parts

    def finish(self, text: str | None) -> tuple[str, int]:
        """Close the line with the final text (None: decode failed, keep the stable prefix).

        Returns ``(text, revision)`` of the final; the audio buffer is released. The
        revision is the line's number of parts, the final's included: above every
        partial's, and a function of the line's messages only, so a final decoded again
        after a crash (by this worker or another) is the same event as the first copy.
        """
        final = self.stabilizer.finalize(self.stabilizer.stable_text if text is None else text)
        self.done = True
        self.speculation = None
        self._audio = _AudioBuffer()
        self.revision = self.next_part
        return final.text, self.next_part

    # ------------------------------------------------------- the changelog copy
    def to_doc(self) -> dict[str, Any]:
        """The JSON-able changelog copy of the line (the audio is stored per part)."""
        return {
            "role": self.role,
            "start_sample": self.start_sample,
            "next_part": self.next_part,
            "end_sample": self.end_sample,
            "decoded_samples": self.decoded_samples,
            "missing_parts": self.missing_parts,
            "done": self.done,
            "stabilizer": {} if self.done else self.stabilizer.to_dict(),
            "anchor": self.anchor,
            "anchor_text": self.anchor_text,
            **({"missing": list(self.missing)} if self.missing and not self.done else {}),
        }

    @staticmethod
    def done_doc(role: str, start_sample: int) -> dict[str, Any]:
        """The small marker left for a finished line: a replayed part of it is late."""
        line = RecognizerLine(role, start_sample)
        line.done = True
        line.end_sample = 0
        return line.to_doc()

    @classmethod
    def restore(
        cls,
        doc: Mapping[str, Any],
        piece: Callable[[int], bytes | None],
        *,
        partition: int | None = None,
    ) -> RecognizerLine:
        """Rebuild a line from its changelog copy; ``piece(part)`` returns a stored part.

        >>> line = RecognizerLine("agent", 0)
        >>> _ = line.append(0, 4, b"\\x00\\x40" * 4)
        >>> pieces = {0: b"\\x00\\x40" * 4}
        >>> again = RecognizerLine.restore(line.to_doc(), pieces.get)
        >>> again.to_doc() == line.to_doc(), again.audio.tolist()
        (True, [0.5, 0.5, 0.5, 0.5])
        """
        line = cls(str(doc["role"]), int(doc["start_sample"]), partition=partition)
        line.next_part = int(doc.get("next_part", 0))
        line.end_sample = int(doc.get("end_sample", line.start_sample))
        line.decoded_samples = int(doc.get("decoded_samples", 0))
        line.missing_parts = int(doc.get("missing_parts", 0))
        line.done = bool(doc.get("done", False))
        line.anchor = int(doc.get("anchor", 0))
        line.anchor_text = str(doc.get("anchor_text", ""))
        line.written = dict(doc)
        line.stored = True
        if line.done:
            return line
        state = doc.get("stabilizer")
        line.stabilizer = LineStabilizer.from_dict(state) if state else LineStabilizer()
        never = set(int(p) for p in doc.get("missing", ()))
        line.missing = sorted(never)
        # A copy written before the parts that never came were listed: absent is "never".
        legacy = "missing" not in doc and line.missing_parts > 0
        for part in range(line.next_part):
            if part in never:  # a part that never came was never stored
                continue
            payload = piece(part)
            if not payload and legacy:
                continue
            if not payload:
                # Stored after the line's copy said so and lost with a crash (the copy is
                # durable, the part was not): its message comes again with the replay of
                # everything after the last commit, so the line resumes before it.
                line.next_part = part
                line.missing = [p for p in line.missing if p < part]
                line.missing_parts = len(line.missing)
                break
            line._audio.append(decode_payload(payload, PCM_S16LE))
        return line
