"""Text normalisation shared by stabilisation, tests and benches.

Pure functions, no third-party dependencies. Normalisation follows the convention used by
the reference texts in ``tests/data/references.json``: compare after lowercasing and
removing punctuation. (Word error rates are for tests and benches only: ``tests/wer.py``,
with jiwer.)

Example:
    >>> normalize_text("Ever tried. Ever failed!")
    'ever tried ever failed'
    >>> normalized_words("Fail again. Fail better.")
    ['fail', 'again', 'fail', 'better']
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text", "normalize_word", "normalized_words"]

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
