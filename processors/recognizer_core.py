"""The recognizer stage core: utterance messages in; decodes, transcripts and table writes out.

No Kafka, no faust. The same shape as ``StreamSegmenter.process``: state + input → output
+ state. The state is the map of open lines (:class:`RecognizerLine`, each holding all of
its line's state) kept in memory; the tables hold only its changelog copy, read back on
a miss (after a restart or a rebalance). One message goes through it as follows (the
agent, :mod:`recognizer_agent`, only decodes, sends and writes)::

    msg = decode_message(value, key)         # ContractError -> dead letter
    step = core.accept(msg, partition)       # Accepted: writes, and maybe a Decode
    # writes -> tables; step.decode: a partial goes to the DecodeScheduler and, when
    # decoded, core.partial_event(decode, outcome) is published; a final is decoded
    # before the loop moves on, then
    done = core.finish(decode, outcome)      # Finished: the final, writes, dead letter

- Only utterances written by this group's own segmenter are taken (``origin``): a
  re-transcription group started from the earliest offset does not decode the first
  group's copies of the same lines.
- A replayed part is dropped by its ``part`` index; a part of a finished line is late.
- A line of a session **not watched live** (``live`` false) writes nothing but its done
  marker: its audio is in memory only, its messages are ``Accepted.held`` (the agent acks
  them with the final), so after a crash the topic gives the line again from its first
  message; nothing of it is in the tables then, and it is rebuilt from those messages.
- **Speculative finals** (``speculative_finals``): an update flagged ``end_candidate`` asks
  for a final decode of the line's audio so far (``Decode.speculative``; the agent queues
  it with final priority and does not wait). A final with an empty tail and the same end
  carries that :class:`Speculation` (``Decode.speculation``): its outcome, when it did not
  fail, is the final's text and decode timestamps (decoding identical audio is
  deterministic). Any new audio discards it (``Accepted.discarded``). It lives in the
  line, in memory only: after a crash the final is decoded as before.
- **Behind**: an update captured more than ``max_lag`` ago (the worker is overloaded, or
  a recording is replayed faster than real time) gets neither a partial nor a
  speculation — the CPU goes to the segmenter and to finals until the worker catches up.
- **Post-processing** (:class:`~streamscribe.processors.postprocess.PostProcessor`, the
  same as the offline ``transcribe``): partials and finals are published cleaned,
  sentence-cased and (if configured) redacted; the model's own text is kept in
  ``raw_text``. The stabiliser works on the model's text.
- A failed final (the scheduler has retried it once) is published with ``error`` set and
  the stable prefix as its text, and asks for a dead letter; :attr:`RecognizerCore.budget`
  says when failures pass ``max_error_rate`` (the worker then exits before the ack).

Example::

    >>> from streamscribe.core.settings import Settings
    >>> from streamscribe.processors.asr import Decoded
    >>> from streamscribe.processors.decode_scheduler import DecodeOutcome
    >>> from streamscribe.schemas.utterances import UtteranceMessage
    >>> core = RecognizerCore(RecognizerConfig.from_settings(Settings()), {}, {})
    >>> msg = UtteranceMessage("s", 0, "agent", 0, "final", 0, 0, 0, 8000, b"\\0\\0" * 8000)
    >>> step = core.accept(msg, partition=0)
    >>> step.verdict, [w.key for w in step.writes], step.decode.final
    ('accept', ['s/0/0#0'], True)
    >>> decoded = Decoded("hi there", [], 0.0, 0.9, False, 0.0, 0.0, 0.5)
    >>> done = core.finish(step.decode, DecodeOutcome(decoded))
    >>> done.event.text, done.event.raw_text, done.event.end_ms, done.dead_letter, len(core)
    ('Hi there', 'hi there', 500.0, None, 0)
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from streamscribe.core.errors import AsrError, ContractError
from streamscribe.core.settings import Settings
from streamscribe.processors.decode_scheduler import DecodeOutcome
from streamscribe.processors.postprocess import PostProcessor
from streamscribe.processors.recognizer_line import (
    DEFAULT_GROWTH,
    RATE,
    Audio,
    DecodeJob,
    PartialPolicy,
    RecognizerLine,
    Speculation,
    Verdict,
    piece_key,
)
from streamscribe.schemas.events import now_us
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript
from streamscribe.schemas.utterances import KIND_FINAL, UtteranceMessage, line_id

__all__ = [
    "AUDIO_TABLE",
    "DEFAULT_GROWTH",
    "LINES_TABLE",
    "RATE",
    "Accepted",
    "Decode",
    "ErrorBudget",
    "Finished",
    "PartialPolicy",
    "RecognizerConfig",
    "RecognizerCore",
    "RecognizerStats",
    "Speculation",
    "TableWrite",
    "Verdict",
    "decode_message",
    "injected_failures",
    "piece_key",
]

log = logging.getLogger(__name__)

LINES_TABLE: Final = "recognizer-lines"
"""Line id -> the line's changelog copy (:meth:`RecognizerLine.to_doc`)."""
AUDIO_TABLE: Final = "recognizer-audio"
""":func:`piece_key` -> the raw PCM16 bytes of one part, written once."""
ERROR_WINDOW: Final = 50
ERROR_MIN_ATTEMPTS: Final = 10
ASR_ERROR_TYPE: Final = "AsrError"


class KeyReader(Protocol):
    """What the core reads the stored copy through: a faust table, or a dict in tests."""

    def get(self, key: str, /) -> Any: ...


@dataclass
class ErrorBudget:
    """Recent decode outcomes; :meth:`exceeded` when failures pass the allowed rate.

    >>> budget = ErrorBudget(max_rate=0.5, window=4, min_attempts=2)
    >>> budget.record(False)
    >>> budget.exceeded()
    False
    >>> budget.record(False)
    >>> budget.exceeded()
    True
    """

    max_rate: float
    window: int = ERROR_WINDOW
    min_attempts: int = ERROR_MIN_ATTEMPTS
    outcomes: list[bool] = field(default_factory=list)

    def record(self, ok: bool) -> None:
        """Add one decode outcome (the oldest beyond ``window`` is forgotten)."""
        self.outcomes.append(ok)
        del self.outcomes[: -self.window]

    def exceeded(self) -> bool:
        """Whether failures are over ``max_rate`` of at least ``min_attempts`` outcomes."""
        n = len(self.outcomes)
        return n >= self.min_attempts and self.outcomes.count(False) / n > self.max_rate


@dataclass(frozen=True)
class RecognizerConfig:
    """The settings the core uses."""

    group_id: str
    policy: PartialPolicy
    max_error_rate: float
    fail_patterns: tuple[str, ...] = ()
    slow_patterns: tuple[str, ...] = ()
    slow_s: float = 0.0
    speculative_finals: bool = True
    max_lag_us: int = 1_000_000  # an update older than this gets no partial / speculation
    post: PostProcessor = field(default_factory=PostProcessor)
    done_ttl_us: int = 300_000_000  # a channel's last done marker is kept this long

    @classmethod
    def from_settings(cls, settings: Settings) -> RecognizerConfig:
        """``update_interval_s``, ``partial_growth``, ``partial_window_s``, ``max_error_rate``,
        ``asr_fail_lines`` and ``asr_slow_lines`` (comma-separated ``fnmatch`` patterns of
        line ids), ``asr_slow_s``, the group id."""
        return cls(
            group_id=settings.group_id,
            policy=PartialPolicy(
                interval_samples=int(settings.update_interval_s * RATE),
                growth=settings.partial_growth,
                window_samples=int(settings.partial_window_s * RATE),
            ),
            max_error_rate=settings.max_error_rate,
            fail_patterns=tuple(p for p in settings.asr_fail_lines.split(",") if p),
            slow_patterns=tuple(p for p in settings.asr_slow_lines.split(",") if p),
            slow_s=settings.asr_slow_s,
            speculative_finals=settings.speculative_finals,
            max_lag_us=int(settings.partial_max_lag_s * 1e6),
            post=PostProcessor.from_settings(settings),
            done_ttl_us=int(settings.line_done_ttl_s * 1e6),
        )


@dataclass(frozen=True)
class TableWrite:
    """One write to a table: ``value`` None deletes ``key``."""

    table: str
    key: str
    value: Any = None


@dataclass(frozen=True)
class Decode:
    """A decode to run: the job and the message it answers.

    ``speculative``: a final decode started on an end candidate (the line is still open);
    ``speculation``: that decode (on a speculative job) or the one a final may use.
    """

    line_id: str
    job: DecodeJob
    msg: UtteranceMessage
    speculative: bool = False
    speculation: Speculation | None = None

    @property
    def audio(self) -> Audio:
        """The samples to decode (a view of the line's buffer)."""
        return self.job.audio

    @property
    def final(self) -> bool:
        """Whether this is the line's (real, not speculative) final decode."""
        return self.job.final and not self.speculative

    @property
    def batchable(self) -> bool:
        """A final of a session not watched live: it may be decoded in a batch."""
        return self.final and not self.msg.live


@dataclass(frozen=True)
class Accepted:
    """What one message asks for: table writes, and a decode (None: nothing to decode).

    ``discarded``: the line's speculation no longer applies (drop it if still queued).
    ``held``: the message's audio was not stored (a session not watched live): ack it only
    when its line's final is acked, so that the topic keeps it until then.
    """

    verdict: str
    writes: tuple[TableWrite, ...] = ()
    decode: Decode | None = None
    discarded: bool = False
    held: bool = False


@dataclass(frozen=True)
class Finished:
    """A finished line: the final to publish, table writes, and a dead-letter reason."""

    event: FinalTranscript
    writes: tuple[TableWrite, ...]
    dead_letter: str | None = None


@dataclass
class RecognizerStats:
    """Counts of what the core did (finals, partials, ignored duplicates/late parts, failed
    finals, messages of another group, speculations started / used by a final / discarded)."""

    finals: int = 0
    partials: int = 0
    duplicates: int = 0
    errors: int = 0
    foreign: int = 0
    speculations: int = 0
    speculative_finals: int = 0
    speculations_discarded: int = 0
    behind: int = 0  # updates older than max_lag: no partial, no speculation
    not_live: int = 0  # updates of sessions not watched live: no partial, no speculation
    retired: int = 0  # done markers tombstoned (the agent's sweep)


def decode_message(value: bytes, key: bytes | None) -> UtteranceMessage:
    """Decode an utterance message; its key must be its session id (else ContractError).

    >>> value = UtteranceMessage("s", 0, "agent", 0, "final", 0, 0, 0, 2, b"\\0\\0" * 2).encode()
    >>> decode_message(value, b"s").line_id
    's/0/0'
    >>> decode_message(value, b"other")
    Traceback (most recent call last):
    ...
    streamscribe.core.errors.ContractError: message key b'other' is not the session id
    """
    msg = UtteranceMessage.decode(value)
    if key is None or bytes(key).decode("utf-8", "replace") != msg.session_id:
        raise ContractError(f"message key {key!r} is not the session id", raw=value)
    return msg


def injected_failures(
    transcribe: Callable[[Audio], Any],
    patterns: Sequence[str],
    slow: Sequence[str] = (),
    slow_s: float = 0.0,
) -> Callable[[str, Audio], Any]:
    """The scheduler's decode function: ``transcribe``, failing on lines matching a pattern
    of ``patterns``, and first sleeping ``slow_s`` on lines matching one of ``slow`` (fault
    injection for tests: a final that takes long).

    >>> decode = injected_failures(len, ["fail-*/0/1"])
    >>> decode("ok/0/1", [0.0, 0.0])
    2
    >>> decode("fail-b/0/1", [])
    Traceback (most recent call last):
    ...
    streamscribe.core.errors.AsrError: injected inference failure for line fail-b/0/1
    """

    def decode(lid: str, audio: Audio) -> Any:
        if any(fnmatch.fnmatchcase(lid, p) for p in patterns):
            raise AsrError(f"injected inference failure for line {lid}")
        if slow_s > 0 and any(fnmatch.fnmatchcase(lid, p) for p in slow):
            time.sleep(slow_s)  # in the decode thread, like a long decode
        return transcribe(audio)

    return decode


def _timestamps(msg: UtteranceMessage, out: DecodeOutcome, published_us: int) -> dict[str, int]:
    ts = {
        "captured_at_us": msg.captured_at_us,
        "broker_at_us": msg.broker_at_us,
        "received_at_us": msg.received_at_us,
        "decided_at_us": msg.decided_at_us,
        "decode_start_us": out.start_us,
        "decode_end_us": out.end_us,
        "published_at_us": published_us,
    }
    return {k: int(v) for k, v in ts.items() if v and v > 0}


class RecognizerCore:
    """The open lines of this worker and the rules of the stage (module docstring).

    ``lines`` and ``pieces`` read the changelog copy (the two tables) on a miss; the
    writes the core returns keep that copy current.
    """

    def __init__(
        self,
        config: RecognizerConfig,
        lines: KeyReader,
        pieces: KeyReader,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.config = config
        self.budget = ErrorBudget(config.max_error_rate)
        self.stats = RecognizerStats()
        self._stored_lines = lines
        self._stored_pieces = pieces
        self._clock = clock
        self._open: dict[str, RecognizerLine] = {}
        self._parked: dict[str, RecognizerLine] = {}  # lines of revoked partitions
        self._assigned: set[int] = set()  # utterance partitions this worker holds

    def __len__(self) -> int:
        """Open lines held in memory."""
        return len(self._open)

    @property
    def parked(self) -> int:
        """Lines dropped at a revoke, kept until their partition is known to be elsewhere."""
        return len(self._parked)

    def line(self, lid: str) -> RecognizerLine | None:
        """The open line ``lid`` held in memory, if any."""
        return self._open.get(lid)

    # ------------------------------------------------------------------ input
    def accept(self, msg: UtteranceMessage, partition: int | None = None) -> Accepted:
        """Apply one utterance message (see the module docstring)."""
        if msg.origin is not None and msg.origin != self.config.group_id:
            self.stats.foreign += 1  # another processor group's segmentation
            return Accepted(Verdict.FOREIGN)
        lid = msg.line_id
        line = self._lookup(lid, partition)
        verdict = Verdict.ACCEPT if line is None else line.verdict(msg.part)
        if verdict != Verdict.ACCEPT:
            self.stats.duplicates += 1
            if msg.kind == KIND_FINAL:  # rare (a replay after a crash): worth a line
                log.info("final message of line %s ignored: %s", lid, verdict)
            if verdict == Verdict.LATE and msg.kind == KIND_FINAL:
                # A final replayed after a crash between its done marker (durable first)
                # and the deletion of its audio: delete what may be left (no-ops otherwise).
                left = tuple(
                    TableWrite(AUDIO_TABLE, piece_key(lid, i)) for i in range(msg.part + 1)
                )
                return Accepted(verdict, left)
            return Accepted(verdict)
        if line is None:
            line = RecognizerLine(msg.role, msg.start_sample, partition=partition)
            self._open[lid] = line
        first = line.next_part
        if missing := line.append(msg.part, msg.end_sample, msg.payload):
            log.warning("line %s: parts %d..%d missing", lid, first, first + missing - 1)
        # A line of a session not watched live keeps its audio in memory only: its
        # messages stay unacked until its final is (Accepted.held), so after a crash or a
        # rebalance the topic brings them all again and the line is rebuilt from them.
        piece = TableWrite(AUDIO_TABLE, piece_key(lid, msg.part), msg.payload)
        pieces = (piece,) if msg.live else ()
        line.stored = line.stored or bool(pieces)
        spec, line.speculation = line.speculation, None
        if msg.kind == KIND_FINAL:
            tail = len(msg.payload) // 2
            stale = spec is not None and not spec.matches(msg.end_sample, line.audio_samples, tail)
            if stale:
                spec = None
                self.stats.speculations_discarded += 1
            final = Decode(lid, line.job(final=True), msg, speculation=spec)
            return Accepted(verdict, pieces, final, discarded=stale)
        discarded = spec is not None
        self.stats.speculations_discarded += discarded
        decode = None
        lag = self._clock() - msg.captured_at_us if msg.captured_at_us > 0 else 0
        if not msg.live:
            # The session is not watched live (a recording replayed as fast as it is read):
            # finals only, the CPU goes to them; nothing is written (see above).
            self.stats.not_live += 1
            return Accepted(verdict, (), None, discarded=discarded, held=True)
        if lag > self.config.max_lag_us:
            # Behind (overload, or a recording replayed faster than real time): nobody is
            # waiting on this line's partials now; its final comes soon and costs less.
            self.stats.behind += 1
        elif msg.end_candidate and self.config.speculative_finals:
            line.speculation = Speculation(msg.end_sample, line.audio_samples)
            self.stats.speculations += 1
            job = line.job(final=True)
            decode = Decode(lid, job, msg, speculative=True, speculation=line.speculation)
        elif line.partial_due(self.config.policy):
            decode = Decode(lid, line.job(final=False, policy=self.config.policy), msg)
        line.written = line.to_doc()
        writes = (*pieces, TableWrite(LINES_TABLE, lid, line.written))
        return Accepted(verdict, writes, decode, discarded=discarded)

    def _lookup(self, lid: str, partition: int | None) -> RecognizerLine | None:
        line = self._open.get(lid)
        if line is not None:
            return line
        doc = self._stored_lines.get(lid)
        parked = self._parked.pop(lid, None)
        if parked is not None and doc == parked.written:
            # The partition came back and nobody wrote the line meanwhile: the parked line
            # is that copy plus the partials applied since (its stable prefix is current).
            parked.evicted, parked.partition = False, partition
            self._open[lid] = parked
            return parked
        if not doc:
            return None
        line = RecognizerLine.restore(
            doc, lambda part: self._stored_pieces.get(piece_key(lid, part)), partition=partition
        )
        if line.open:
            self._open[lid] = line
        return line

    # ---------------------------------------------------------------- results
    def partial_event(self, decode: Decode, out: DecodeOutcome) -> PartialTranscript | None:
        """The partial to publish for a decoded partial job (None: failed, or line closed)."""
        if out.error is not None:
            return None
        decoded = out.result  # one result per segment of the job
        applied = decode.job.line.apply_partial(decode.job, [d.text for d in decoded])
        if applied is None:
            return None
        raw, raw_stable, revision = applied
        stable, text = self.config.post.apply_partial(raw_stable, raw)
        msg, line = decode.msg, decode.job.line
        self.stats.partials += 1
        return PartialTranscript(
            session_id=msg.session_id,
            channel=msg.channel,
            role=line.role,
            utterance=msg.utterance,
            revision=revision,
            text=text,
            stable_text=stable,
            raw_text=raw,
            start_ms=line.start_sample * 1000 / RATE,
            end_ms=(line.start_sample + decode.job.samples) * 1000 / RATE,
            confidence=min(d.confidence for d in decoded),
            timestamps=_timestamps(msg, out, self._clock()),
            degraded=msg.degraded,
            origin=self.config.group_id,
        )

    def finish(
        self, decode: Decode, out: DecodeOutcome, source: tuple[int, int] | None = None
    ) -> Finished:
        """Finish a line with its decoded final (``out.error`` set: it failed after retries).

        ``source`` is the (partition, offset) of the final's message: the done marker keeps
        it, so that :meth:`retired` deletes the marker only once that offset is committed.
        """
        msg, line, lid = decode.msg, decode.job.line, decode.line_id
        self.budget.record(out.error is None)
        self.stats.speculative_finals += out.speculative and out.error is None
        error = None if out.error is None else f"{type(out.error).__name__}: {out.error}"
        raw, revision = line.finish(None if error else out.result.text)
        event = FinalTranscript(
            session_id=msg.session_id,
            channel=msg.channel,
            role=line.role,
            utterance=msg.utterance,
            revision=revision,
            text=self.config.post.apply(raw),
            raw_text=raw,
            start_ms=msg.start_sample * 1000 / RATE,
            end_ms=msg.end_sample * 1000 / RATE,
            confidence=None if error else out.result.confidence,
            error=error,
            timestamps=_timestamps(msg, out, self._clock()),
            summary=json.loads(msg.summary_json) if msg.summary_json else None,
            degraded=msg.degraded or line.missing_parts > 0,
            reason=msg.reason,
            origin=self.config.group_id,
        )
        writes = (
            [TableWrite(AUDIO_TABLE, piece_key(lid, i)) for i in range(line.next_part)]
            if line.stored
            else []  # not live: none of its audio was stored
        )
        # A small "done" marker makes a replayed part of this line recognisable as late. It
        # says where the final was read and when, so that :meth:`retired` can delete it once
        # no replay can bring the line back.
        marker = RecognizerLine.done_doc(line.role, line.start_sample)
        marker["done_at_us"] = self._clock()
        if source is not None:
            marker["source"] = [int(source[0]), int(source[1])]
        writes.append(TableWrite(LINES_TABLE, lid, marker))
        self._open.pop(lid, None)
        self._parked.pop(lid, None)
        if msg.utterance > 0:
            self._drop(line_id(msg.session_id, msg.channel, msg.utterance - 1))
        self.stats.finals += 1
        if error is None:
            return Finished(event, tuple(writes))
        self.stats.errors += 1
        return Finished(event, tuple(writes), dead_letter=f"line {lid}: {error}")

    # -------------------------------------------------------------- rebalance
    def evict(self, partitions: Collection[int]) -> list[str]:
        """Partitions revoked: drop their open lines from memory; returns their ids.

        Their pending partials publish nothing. The next message of such a line rebuilds
        it from the tables; if the partition came back and the table still holds the copy
        the line last wrote, the dropped line itself is taken back (it also holds the
        partials published since that copy, so no stable word is retracted).
        """
        self._assigned.difference_update(partitions)
        gone = [lid for lid, line in self._open.items() if line.partition in partitions]
        for lid in gone:
            line = self._open.pop(lid)
            line.evicted, line.speculation = True, None
            # Parked only while it is its changelog copy plus partials. A line that took a
            # part its copy lacks (its final, which writes no copy, decoding now) must be
            # rebuilt from the copy: the final's message comes again and is decoded again;
            # a parked line would call it a duplicate and ack it while the first decode,
            # whose ack a new generation ignores, may never finish.
            if line.written is not None and line.written.get("next_part") == line.next_part:
                self._parked[lid] = line
        return gone

    def assigned(self, partitions: Collection[int]) -> None:
        """Partitions assigned (the whole new assignment): forget the dropped lines of
        partitions that went elsewhere."""
        self._assigned = set(partitions)
        self._parked = {k: v for k, v in self._parked.items() if v.partition in partitions}

    def retired(
        self, items: Iterable[tuple[str, Any]], committed: Mapping[int, int]
    ) -> list[tuple[int, str]]:
        """Done markers that may go now, as ``(partition, line id)`` (tombstone each).

        A marker is only there to make a replayed message of its line late, so it may go
        when no replay can bring one: its final's offset is committed (``committed`` maps
        an utterance partition to its committed offset, the next one to read), and either
        the channel's next line exists (its own marker or copy takes over, as it always
        did) or the marker is older than ``done_ttl_us`` (the channel's last line: the
        session ended, or is silent that long). Only partitions this worker holds count.
        Markers without a source (written before markers carried one) are kept.

        >>> core = RecognizerCore(_doc_config(), {"s/0/1": {}}, {}, clock=lambda: 10**9)
        >>> core.assigned({0})
        >>> done = lambda at, off: {"done": True, "done_at_us": at, "source": [0, off]}
        >>> items = [("s/0/0", done(10**9, 4)), ("t/0/0", done(0, 5)), ("u/0/0", done(0, 9))]
        >>> core.retired(items, {0: 6})  # s/0/0: the next line exists; u/0/0: not committed
        [(0, 's/0/0'), (0, 't/0/0')]
        """
        now = self._clock()
        out = []
        for lid, doc in items:
            if not doc or not doc.get("done") or not doc.get("source"):
                continue
            partition, offset = int(doc["source"][0]), int(doc["source"][1])
            if partition not in self._assigned or committed.get(partition, -1) <= offset:
                continue
            old = now - int(doc.get("done_at_us", 0)) >= self.config.done_ttl_us
            if old or self._stored_lines.get(next_line_id(lid)) is not None:
                out.append((partition, lid))
        return out

    def _drop(self, lid: str) -> None:
        for lines in (self._open, self._parked):
            line = lines.pop(lid, None)
            if line is not None:
                line.evicted = True


def next_line_id(lid: str) -> str:
    """The id of the line after ``lid`` in its channel (session ids may hold ``/``).

    >>> next_line_id("a/b/0/7")
    'a/b/0/8'
    """
    head, _, utterance = lid.rpartition("/")
    return f"{head}/{int(utterance) + 1}"


def _doc_config() -> RecognizerConfig:
    """A minimal config for the doctests."""
    return RecognizerConfig("g", PartialPolicy(interval_samples=8000), max_error_rate=0.2)
