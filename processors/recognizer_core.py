"""The recognizer stage core: utterance messages in, decode jobs and transcripts out. No Kafka.

Per line (session, channel, utterance) a small :class:`LineState` tracks which parts of
the utterance have arrived (duplicates from a replay are dropped by ``part``), how much
audio there is, what was decoded last, and the partial stabiliser. The audio itself is
kept by the caller, one piece per part (written once: bytes stored grow linearly).

Partial scheme (chosen with the figures in ``bench/results/asr_model.json``): each partial
re-decodes the whole utterance so far — the most accurate choice, because tiny Moonshine
gains from left context — but only when the new audio since the last partial is at least
``max(update_interval, growth * decoded)``: intervals grow geometrically with the line, so
a line of length L costs about ``L * (1 + 1/growth)`` seconds of decoding instead of the
``L^2 / (2 * interval)`` of re-decoding at every update. Under load, partials whose update
is older than ``stale_after_s`` are shed, only the newest update of a line in a batch is
decoded (coalescing), and finals always go first and are never dropped.

Example::

    >>> policy = PartialPolicy(interval_samples=8000, growth=0.3)
    >>> policy.due(decoded=0, available=8000), policy.due(decoded=48000, available=56000)
    (True, False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from streamscribe.processors.stabilize import LineStabilizer

RATE: Final = 16000
DEFAULT_GROWTH: Final = 0.3
DEFAULT_STALE_AFTER_S: Final = 1.5


@dataclass(frozen=True)
class PartialPolicy:
    """When a speech-so-far update deserves a decode (see the module docstring)."""

    interval_samples: int = RATE // 2
    growth: float = DEFAULT_GROWTH
    stale_after_s: float = DEFAULT_STALE_AFTER_S

    def due(self, decoded: int, available: int) -> bool:
        return available - decoded >= max(self.interval_samples, int(self.growth * decoded))

    def fresh(self, decided_at_us: int, now_us: int) -> bool:
        return decided_at_us <= 0 or now_us - decided_at_us <= self.stale_after_s * 1_000_000


@dataclass
class LineState:
    """What the recognizer remembers of one line between messages (JSON in a table)."""

    role: str
    start_sample: int
    next_part: int = 0
    end_sample: int = 0
    decoded_samples: int = 0  # audio length of the last partial decode
    missing_parts: int = 0
    done: bool = False
    stabilizer: dict[str, Any] = field(default_factory=lambda: LineStabilizer().to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LineState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def audio_samples(self) -> int:
        return self.end_sample - self.start_sample


class Verdict:
    """What to do with an arriving part."""

    DUPLICATE: Final = "duplicate"  # already applied (a replay): ignore
    LATE: Final = "late"  # the line is finished: ignore
    ACCEPT: Final = "accept"


def accept_part(line: LineState | None, part: int) -> str:
    if line is None:
        return Verdict.ACCEPT
    if line.done:
        return Verdict.LATE
    if part < line.next_part:
        return Verdict.DUPLICATE
    return Verdict.ACCEPT


def piece_key(line_id: str, part: int) -> str:
    return f"{line_id}#{part}"


@dataclass
class ErrorBudget:
    """Recent decode outcomes; :meth:`exceeded` when failures pass the allowed rate."""

    max_rate: float
    window: int = 50
    min_attempts: int = 10
    outcomes: list[bool] = field(default_factory=list)

    def record(self, ok: bool) -> None:
        self.outcomes.append(ok)
        del self.outcomes[: -self.window]

    def exceeded(self) -> bool:
        n = len(self.outcomes)
        return n >= self.min_attempts and self.outcomes.count(False) / n > self.max_rate
