"""Text normalisation and word-error helpers shared by ASR, stabilisation, tests and benches.

Pure functions, no third-party dependencies. Normalisation follows the convention used by
the reference texts in ``tests/data/references.json``: compare after lowercasing and
removing punctuation.

Example:
    >>> normalize_text("Ever tried. Ever failed!")
    'ever tried ever failed'
    >>> word_errors("ever tried ever failed", "Ever tried, ever FAILED.")
    0
    >>> round(wer("a b c d", "a x c"), 2)
    0.5
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "WordErrors",
    "count_word_errors",
    "normalize_text",
    "normalize_word",
    "normalized_words",
    "wer",
    "word_errors",
]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_NON_WORD = re.compile(r"[^\w\s']+")
_SPACES = re.compile(r"\s+")


def normalize_word(word: str) -> str:
    """One word lowercased, with punctuation removed (inner apostrophes kept).

    >>> normalize_word("Tried,")
    'tried'
    >>> normalize_word("don't")
    "don't"
    >>> normalize_word("--")
    ''
    """
    return normalize_text(word).replace(" ", "")


def normalize_text(text: str) -> str:
    """Lowercase, replace punctuation with spaces, collapse whitespace.

    Hyphens and dashes split words (``"so-called"`` becomes ``"so called"``); leading or
    trailing apostrophes are dropped, inner ones kept.

    >>> normalize_text("  It was the SEASON of Light -- in short, ")
    'it was the season of light in short'
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _NON_WORD.sub(" ", text).replace("_", " ")
    words = (w.strip("'") for w in _SPACES.split(text))
    return " ".join(w for w in words if w)


def normalized_words(text: str) -> list[str]:
    """``normalize_text(text).split()``.

    >>> normalized_words("Fail again. Fail better.")
    ['fail', 'again', 'fail', 'better']
    """
    normalized = normalize_text(text)
    return normalized.split() if normalized else []


@dataclass(frozen=True)
class WordErrors:
    """Levenshtein alignment counts of a hypothesis against a reference (in words)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        """Total word errors: S + D + I."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Word error rate; 0.0 for an empty reference and empty hypothesis, else errors / N."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else float(self.errors)
        return self.errors / self.reference_words


def count_word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> WordErrors:
    """Minimum-edit alignment of two word sequences (already normalised).

    >>> count_word_errors(["a", "b", "c", "d"], ["a", "c", "d", "e"])
    WordErrors(substitutions=0, deletions=1, insertions=1, reference_words=4)
    """
    n_ref, n_hyp = len(reference), len(hypothesis)
    # Each cell: (cost, substitutions, deletions, insertions); ties prefer fewer subs.
    prev = [(j, 0, 0, j) for j in range(n_hyp + 1)]
    for i in range(1, n_ref + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, n_hyp + 1):
            if reference[i - 1] == hypothesis[j - 1]:
                best = prev[j - 1]
            else:
                c, s, d, n = prev[j - 1]
                best = (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, n + 1)
            cur.append(best)
        prev = cur
    _, subs, dels, ins = prev[n_hyp]
    return WordErrors(subs, dels, ins, n_ref)


def word_errors(reference: str, hypothesis: str) -> int:
    """Number of word errors (S + D + I) after normalising both texts.

    >>> word_errors("Try again. Fail again.", "try again fail")
    1
    """
    return count_word_errors(normalized_words(reference), normalized_words(hypothesis)).errors


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalising both texts.

    >>> wer("it was the best of times", "It was the best of times.")
    0.0
    """
    return count_word_errors(normalized_words(reference), normalized_words(hypothesis)).wer
