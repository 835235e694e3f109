"""Intents of the voice assistant: the YAML file and the fuzzy matcher of a command.

The intents file maps each intent name to example phrases; ``{name}`` in a phrase is a
slot that takes one or more words of the command::

    set_timer: ["set a timer for {duration}", "timer for {duration}"]
    call: ["call {person}", "get me {person}"]

:meth:`IntentMatcher.match` aligns the command's words with every example phrase (a small
dynamic programme over words): a literal word of the phrase matches a heard word with
their similarity (:func:`word_similarity`, 0-1), may be left out (scores 0), a heard word
outside every slot costs :data:`EXTRA_WORD_PENALTY`, and a slot takes the words between
its neighbours. The score of a phrase is the sum of its literal words' similarities over
(literal words + :data:`EXTRA_WORD_PENALTY` × extra words heard), 0-1; the best phrase
wins (the first one on a tie).

Example::

    >>> m = IntentMatcher(parse_intents({"call": ["call {person}", "get me {person}"],
    ...                                  "set_timer": ["set a timer for {duration}"]}))
    >>> hit = m.match(words_of("Please set the timer for five minutes."))
    >>> hit.intent, hit.slots, round(hit.score, 2)
    ('set_timer', {'duration': 'five minutes'}, 0.84)
    >>> m.match(words_of("get me the supervisor")).slots
    {'person': 'the supervisor'}
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from rapidfuzz import fuzz

from streamscribe.core.errors import UsageError

#: The intents file shipped in the package (``streamscribe assistant`` without --intents).
DEFAULT_INTENTS_FILE: Final = "assistant_intents.yaml"
#: What one heard word outside the slots costs in the alignment (a matched word earns
#: its similarity, at most 1).
EXTRA_WORD_PENALTY: Final = 0.5
#: Determiners heard in place of one another ("set the timer" for "set a timer") match
#: with this similarity at least.
DETERMINERS: Final = frozenset({"a", "an", "the", "my", "your", "this", "that", "our"})
DETERMINER_SIMILARITY: Final = 0.8

_SLOT = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SLOT_ANYWHERE = re.compile(r"\{[^}]*\}")
_NON_WORD = re.compile(r"[^\w']+", re.UNICODE)


def words_of(text: str) -> list[str]:
    """Case-folded words; punctuation separates, inner apostrophes stay.

    >>> words_of("Hey, Scribe! Don't stop—now.")
    ['hey', 'scribe', "don't", 'stop', 'now']
    """
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return [
        w.strip("'") for w in _NON_WORD.sub(" ", text).replace("_", " ").split() if w.strip("'")
    ]


@dataclass(frozen=True)
class Token:
    """One word of an example phrase: a literal, or a slot (``slot`` is its name)."""

    text: str
    slot: str | None = None


@dataclass(frozen=True)
class Example:
    """One example phrase of an intent, as tokens."""

    intent: str
    phrase: str
    tokens: tuple[Token, ...]

    @property
    def literals(self) -> int:
        return sum(1 for t in self.tokens if t.slot is None)


@dataclass(frozen=True)
class IntentMatch:
    """The best example for a command: its intent, the slot values and the score (0-1)."""

    intent: str
    slots: dict[str, str]
    score: float
    example: str


def _example(intent: str, phrase: str) -> Example:
    tokens: list[Token] = []
    seen: set[str] = set()
    for raw in phrase.split():
        m = _SLOT.match(raw)
        if m:
            name = m.group(1)
            if name in seen:
                raise UsageError(f"intent {intent}: slot {{{name}}} twice in {phrase!r}")
            if tokens and tokens[-1].slot is not None:
                raise UsageError(f"intent {intent}: two slots side by side in {phrase!r}")
            seen.add(name)
            tokens.append(Token(raw, name))
        elif _SLOT_ANYWHERE.search(raw):
            raise UsageError(
                f"intent {intent}: a slot must be a word of its own like {{name}}: {phrase!r}"
            )
        else:
            tokens += [Token(w) for w in words_of(raw)]
    if not any(t.slot is None for t in tokens):
        raise UsageError(f"intent {intent}: example {phrase!r} has no literal word")
    return Example(intent, phrase, tuple(tokens))


def parse_intents(doc: Any, *, source: str = "intents") -> list[Example]:
    """The examples of an intents document (a mapping intent → list of phrases)."""
    if not isinstance(doc, Mapping) or not doc:
        raise UsageError(f"{source}: expected a mapping of intent names to example phrases")
    out: list[Example] = []
    for intent, phrases in doc.items():
        if not isinstance(intent, str) or not intent.strip():
            raise UsageError(f"{source}: intent names must be strings, got {intent!r}")
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list) or not phrases:
            raise UsageError(f"{source}: intent {intent}: expected a list of example phrases")
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise UsageError(f"{source}: intent {intent}: bad example phrase {phrase!r}")
            out.append(_example(intent, phrase))
    return out


def load_intents(path: str | Path | None = None) -> list[Example]:
    """Examples from a YAML intents file (default: the one shipped in the package)."""
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read intents file {p}: {exc.strerror}") from None
        source = str(p)
    else:
        res = resources.files("streamscribe.consumers").joinpath(DEFAULT_INTENTS_FILE)
        text, source = res.read_text(encoding="utf-8"), DEFAULT_INTENTS_FILE
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not YAML: {' '.join(str(exc).split())}") from None
    return parse_intents(doc, source=source)


def word_similarity(expected: str, heard: str) -> float:
    """0-1: rapidfuzz's ratio, or :data:`DETERMINER_SIMILARITY` for two determiners.

    >>> word_similarity("timer", "timers"), word_similarity("a", "the")
    (0.9090909090909091, 0.8)
    """
    sim = fuzz.ratio(expected, heard) / 100.0
    if expected in DETERMINERS and heard in DETERMINERS:
        return max(sim, DETERMINER_SIMILARITY)
    return sim


def align(example: Example, words: list[str]) -> IntentMatch | None:
    """The best alignment of ``words`` with one example (``None`` if a slot stays empty)."""
    tokens, m, n = example.tokens, len(example.tokens), len(words)
    neg = float("-inf")
    best = [[neg] * (n + 1) for _ in range(m + 1)]
    back: list[list[tuple[str, int, int, float] | None]] = [[None] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0

    def relax(i: int, j: int, value: float, step: tuple[str, int, int, float]) -> None:
        if value > best[i][j]:
            best[i][j] = value
            back[i][j] = step

    for i in range(m + 1):
        for j in range(n + 1):
            cur = best[i][j]
            if cur == neg:
                continue
            if j < n:  # a heard word outside the slots
                relax(i, j + 1, cur - EXTRA_WORD_PENALTY, ("extra", i, j, 0.0))
            if i == m:
                continue
            tok = tokens[i]
            if tok.slot is not None:
                for k in range(j + 1, n + 1):
                    relax(i + 1, k, cur, ("slot", i, j, 0.0))
            else:
                relax(i + 1, j, cur, ("skip", i, j, 0.0))
                if j < n:
                    sim = word_similarity(tok.text, words[j])
                    relax(i + 1, j + 1, cur + sim, ("match", i, j, sim))
    if best[m][n] == neg:
        return None
    slots: dict[str, str] = {}
    total, extra = 0.0, 0
    i, j = m, n
    while (i, j) != (0, 0):
        step = back[i][j]
        assert step is not None
        kind, pi, pj, sim = step
        if kind == "slot":
            name = tokens[pi].slot
            assert name is not None
            slots[name] = " ".join(words[pj:j])
        elif kind == "match":
            total += sim
        elif kind == "extra":
            extra += 1
        i, j = pi, pj
    score = total / (example.literals + EXTRA_WORD_PENALTY * extra)
    return IntentMatch(example.intent, dict(sorted(slots.items())), score, example.phrase)


class IntentMatcher:
    """The best intent for a command's words, over every example of the intents file."""

    def __init__(self, examples: list[Example]) -> None:
        if not examples:
            raise UsageError("no intents to match")
        self.examples = examples

    @property
    def intents(self) -> list[str]:
        return list(dict.fromkeys(e.intent for e in self.examples))

    def match(self, words: list[str]) -> IntentMatch | None:
        """The best-scoring example's match, or ``None`` if no example fits at all."""
        best: IntentMatch | None = None
        for example in self.examples:
            hit = align(example, words)
            if hit is not None and (best is None or hit.score > best.score):
                best = hit
        return best
