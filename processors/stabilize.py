"""Partial-transcript stabilisation for one transcript line: stable words are never retracted.

Each partial hypothesis of a line (the utterance re-decoded so far) is turned into a
:class:`PartialView`. Words on which two consecutive published partials agree — the
common word prefix, compared after :func:`~streamscribe.processors.text.normalize_word`
(case and punctuation ignored) — become *stable*. Every later partial is published as the
stable prefix (in the surface form it was first published with) followed by the new
hypothesis's words after the point where the stable prefix aligns to it, so

* ``view.text.startswith(view.stable_text)`` always holds and the stable prefix only grows;
* ``revision`` strictly increases with every update and with the final.

The alignment end is where the stable words best match a prefix of the new hypothesis
(minimum word edit distance; ties go to the later position), so an
inserted or dropped word in the hypothesis does not duplicate or swallow a word of the
tail. :meth:`LineStabilizer.finalize` publishes the final transcript, which replaces the
line and may differ from the stable prefix.

The state is a small JSON-able dict (:meth:`LineStabilizer.to_dict` /
:meth:`LineStabilizer.from_dict`), so it can live in a Faust table.

Errors (under the project root ``streamscribe.core.errors``)::

    AsrError
    └── StabilizerError            stabilisation misuse or bad state
        ├── LineClosedError        update/finalize after the line was finalised
        └── StabilizerStateError   a state dict that cannot be restored

Example:
    >>> line = LineStabilizer()
    >>> line.update("ever tri").text
    'ever tri'
    >>> line.update("Ever tried, ever").stable_text
    'Ever'
    >>> view = line.update("ever tried, ever failed")
    >>> view.stable_text, view.text, view.revision
    ('Ever tried, ever', 'Ever tried, ever failed', 3)
    >>> line.update("every tried ever failed no").text  # disagrees: stable words kept
    'Ever tried, ever failed no'
    >>> line.finalize("Ever tried. Ever failed. No matter.")
    FinalView(text='Ever tried. Ever failed. No matter.', revision=5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from streamscribe.core.errors import LineClosedError, StabilizerError, StabilizerStateError
from streamscribe.processors.text import normalize_word

__all__ = [
    "STATE_VERSION",
    "FinalView",
    "LineClosedError",
    "LineStabilizer",
    "PartialView",
    "StabilizerError",
    "StabilizerStateError",
]

STATE_VERSION: Final = 1
"""Version tag written by :meth:`LineStabilizer.to_dict`."""


@dataclass(frozen=True)
class PartialView:
    """What to publish for one partial: the whole line text and its never-retracted prefix."""

    text: str
    stable_text: str
    revision: int

    @property
    def unstable_text(self) -> str:
        """The part of ``text`` after the stable prefix (may still change)."""
        return self.text[len(self.stable_text) :].strip()


@dataclass(frozen=True)
class FinalView:
    """The final transcript of a line; it replaces everything published before."""

    text: str
    revision: int


class LineStabilizer:
    """Per-line stabilisation state (see the module docstring for the rule).

    ``revision`` is 0 before the first update; each :meth:`update` and the
    :meth:`finalize` return the next revision. :meth:`reset` starts a new line.
    """

    def __init__(self) -> None:
        self._stable: list[str] = []  # surface forms, as first published
        self._last: list[str] = []  # words of the last published partial
        self._revision = 0
        self._closed = False

    @property
    def revision(self) -> int:
        """Revision of the last published view (0 before any)."""
        return self._revision

    @property
    def stable_text(self) -> str:
        """The current stable prefix."""
        return " ".join(self._stable)

    @property
    def closed(self) -> bool:
        """Whether :meth:`finalize` was called (and :meth:`reset` not since)."""
        return self._closed

    def update(self, partial_text: str) -> PartialView:
        """Publish a new partial hypothesis of the line; see the module docstring."""
        if self._closed:
            raise LineClosedError("line already finalised; reset() starts a new line")
        hypothesis = partial_text.split()
        cut = _aligned_end([normalize_word(w) for w in self._stable], hypothesis)
        published = [*self._stable, *hypothesis[cut:]]
        agreed = _common_prefix_len(self._last, published)
        if agreed > len(self._stable):
            self._stable = published[:agreed]
        self._last = published
        self._revision += 1
        return PartialView(" ".join(published), " ".join(self._stable), self._revision)

    def finalize(self, final_text: str) -> FinalView:
        """Publish the final transcript and close the line."""
        if self._closed:
            raise LineClosedError("line already finalised; reset() starts a new line")
        self._closed = True
        self._revision += 1
        return FinalView(" ".join(final_text.split()), self._revision)

    def reset(self) -> None:
        """Forget everything and start a new line (revision back to 0)."""
        self._stable, self._last = [], []
        self._revision, self._closed = 0, False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state.

        >>> line = LineStabilizer()
        >>> _ = line.update("hello world")
        >>> line.to_dict()
        {'v': 1, 'stable': [], 'last': ['hello', 'world'], 'revision': 1, 'closed': False}
        """
        return {
            "v": STATE_VERSION,
            "stable": list(self._stable),
            "last": list(self._last),
            "revision": self._revision,
            "closed": self._closed,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LineStabilizer:
        """Restore a state written by :meth:`to_dict`; raises :class:`StabilizerStateError`.

        >>> LineStabilizer.from_dict({"v": 1, "stable": ["hi"], "last": ["hi", "there"],
        ...                           "revision": 2, "closed": False}).update("hi there").text
        'hi there'
        """
        try:
            version, stable, last = state["v"], state["stable"], state["last"]
            revision, closed = state["revision"], state["closed"]
        except (KeyError, TypeError) as exc:
            raise StabilizerStateError(f"stabiliser state lacks {exc}") from exc
        if version != STATE_VERSION:
            raise StabilizerStateError(f"unknown stabiliser state version {version!r}")
        if not (_is_words(stable) and _is_words(last)):
            raise StabilizerStateError("stable and last must be lists of non-empty words")
        if type(revision) is not int or revision < 0 or type(closed) is not bool:
            raise StabilizerStateError(f"bad revision/closed: {revision!r}/{closed!r}")
        if last[: len(stable)] != stable:
            raise StabilizerStateError("last published words do not start with the stable ones")
        line = cls()
        line._stable, line._last = list(stable), list(last)
        line._revision, line._closed = revision, closed
        return line


def _is_words(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(w, str) and w and not any(c.isspace() for c in w) for w in value
    )


def _common_prefix_len(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the common word prefix of ``a`` and ``b`` after normalisation."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if normalize_word(x) != normalize_word(y):
            break
        n += 1
    return n


def _aligned_end(stable: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Index in ``hypothesis`` where the (normalised) ``stable`` words best end.

    Minimises the word edit distance between ``stable`` and ``hypothesis[:j]``; ties go
    to the larger ``j`` (a hypothesis word that replaced a stable word is not repeated).

    >>> _aligned_end(["we", "had", "everything"], "we had had everything before".split())
    4
    >>> _aligned_end(["a", "b", "c"], ["a", "x", "y"])
    3
    >>> _aligned_end(["a", "b"], [])
    0
    """
    m = len(stable)
    if m == 0:
        return 0
    words = [normalize_word(w) for w in hypothesis]
    row = list(range(len(words) + 1))  # distance of stable[:0] to hypothesis[:j]
    for i in range(1, m + 1):
        new = [i]
        for j in range(1, len(words) + 1):
            cost = 0 if stable[i - 1] == words[j - 1] else 1
            new.append(min(row[j - 1] + cost, row[j] + 1, new[j - 1] + 1))
        row = new
    return min(range(len(row)), key=lambda j: (row[j], -j))
