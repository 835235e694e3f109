"""The wake phrase, found fuzzily in a line's words as the model tends to hear them.

A wake spec is the phrase and, after ``|``, other ways the model hears it:
``"hey scribe|hey subscribe|haste drive"``. Each alternative is compared with every window
of the line's words of its own length and one word longer, spaces ignored
(``hastribe`` ~ ``haste tribe``), with rapidfuzz's ``fuzz.ratio`` (0-100). The first
window (from the left) that reaches the threshold is the wake phrase (the better of it and
the window one word later, so "oh hey scribe" takes "hey scribe"); the command is the words
after it.

A spec without ``|`` gets the hearings of :data:`KNOWN_HEARINGS` for its phrase: for the
default "hey scribe", what Moonshine tiny heard of espeak-ng's ``en`` and ``en-us`` voices
saying it (``hey scribe``, ``hey scry``, ``hey subscribe``, ``haste drive``, ``hastribe``,
``case drive``, ``hey it's drive``): the first three are within the threshold of
"hey scribe" itself, the others are listed.

Example::

    >>> w = WakeDetector("hey scribe")
    >>> hit = w.find(["hay", "scribe", "call", "mom"])
    >>> hit.heard, hit.end, round(hit.score)
    ('hay scribe', 2, 89)
    >>> round(w.find(["hey", "script", "stop"]).score)
    78
    >>> w.find(["the", "weather", "is", "nice"]) is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rapidfuzz import fuzz

from streamscribe.consumers.assistant_intents import words_of
from streamscribe.core.errors import UsageError

DEFAULT_WAKE: Final = "hey scribe"
#: Other ways the model hears a wake phrase (measured; see the module docstring).
KNOWN_HEARINGS: Final[dict[str, tuple[str, ...]]] = {
    "hey scribe": ("haste drive", "hastribe", "case drive", "hey it's drive"),
}
DEFAULT_THRESHOLD: Final = 75.0


@dataclass(frozen=True)
class WakeHit:
    """Where the wake phrase is in the words: ``words[start:end]``, its score (0-100)."""

    start: int
    end: int
    score: float
    heard: str
    alternative: str


class WakeDetector:
    """Finds the wake phrase (or one of its alternatives) in a line's words."""

    def __init__(self, spec: str, threshold: float = DEFAULT_THRESHOLD) -> None:
        alternatives = [words_of(a) for a in spec.split("|")]
        if len(alternatives) == 1:
            alternatives += [words_of(a) for a in KNOWN_HEARINGS.get(" ".join(alternatives[0]), ())]
        self.alternatives = [a for a in alternatives if a]
        if not self.alternatives:
            raise UsageError(f"wake phrase: no words in {spec!r}")
        if not 0.0 < threshold <= 100.0:
            raise UsageError(f"wake threshold must be in (0, 100], got {threshold}")
        self.phrase = " ".join(self.alternatives[0])
        self.threshold = threshold
        self._keys = [("".join(a), len(a), " ".join(a)) for a in self.alternatives]

    def _best_at(self, words: list[str], i: int) -> WakeHit | None:
        best: WakeHit | None = None
        for key, n, alt in self._keys:
            for size in (n, n + 1):
                if i + size > len(words) or (size > n and size < 2):
                    continue
                window = words[i : i + size]
                score = float(fuzz.ratio("".join(window), key))
                if best is None or score > best.score:
                    best = WakeHit(i, i + size, score, " ".join(window), alt)
        return best

    def find(self, words: list[str]) -> WakeHit | None:
        """The wake phrase's first occurrence in ``words``, or ``None``."""
        for i in range(len(words)):
            hit = self._best_at(words, i)
            if hit is not None and hit.score >= self.threshold:
                later = self._best_at(words, i + 1)
                if later is not None and later.score > hit.score:
                    return later
                return hit
        return None
