"""Word error rate for tests and benchmarks: jiwer on texts normalised like the references.

Both texts are compared after :func:`streamscribe.processors.text.normalize_text`
(lowercase, punctuation removed), the convention of ``tests/data/references.json``.
jiwer is a dev dependency: runtime code never needs a WER.

Example:
    >>> word_errors("ever tried ever failed", "Ever tried, ever FAILED.")
    0
    >>> round(wer("a b c d", "a x c"), 2)
    0.5
    >>> e = error_counts("a b c d", "a c d e")
    >>> e.substitutions, e.deletions, e.insertions, e.reference_words
    (0, 1, 1, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer

from streamscribe.processors.text import normalize_text

__all__ = ["WordErrors", "error_counts", "wer", "word_errors"]


@dataclass(frozen=True)
class WordErrors:
    """Alignment counts of a hypothesis against a reference (in normalised words)."""

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
        """errors / reference words (an empty reference: the inserted words, or 0.0)."""
        if self.reference_words == 0:
            return float(self.errors)
        return self.errors / self.reference_words


def error_counts(reference: str, hypothesis: str) -> WordErrors:
    """S / D / I of ``hypothesis`` against ``reference`` after normalising both (jiwer)."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:  # jiwer refuses an empty reference: every hypothesis word is an insertion
        return WordErrors(0, 0, len(hyp.split()), 0)
    out = jiwer.process_words(ref, hyp)
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(ref.split()))


def word_errors(reference: str, hypothesis: str) -> int:
    """Number of word errors (S + D + I) after normalising both texts.

    >>> word_errors("Try again. Fail again.", "try again fail")
    1
    """
    return error_counts(reference, hypothesis).errors


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalising both texts.

    >>> wer("it was the best of times", "It was the best of times.")
    0.0
    """
    return error_counts(reference, hypothesis).wer
