"""Post-processing of the model's text: clean formatting and optional redaction.

A pure core, no Kafka: :meth:`PostProcessor.apply` maps the raw model text of a partial or
a final to the text a reader sees (the raw text stays in the event for audit). In order:

1. **clean** — whitespace collapsed; no space before ``, ; : . ! ?``; a run of
   punctuation marks (``,,`` or ``, .``) kept as one mark (the first sentence end of the
   run, else its first mark; three or more dots stay an ellipsis ``...``);
2. **redact** (off by default; ``STREAMSCRIBE_REDACT=digits,cards,emails``) —
   e-mail addresses, written (``jo.ann@example.com``) or spoken (``jo dot ann at example
   dot com``), become ``[REDACTED:email]``; a run of numbers, written (``4111 1111-1111``)
   or spoken (``four one one one``, ``double five``, ``twenty three``), whose digits pass
   the Luhn check and are 13 to 19 long becomes ``[REDACTED:card]`` (``cards``), and one of
   at least ``STREAMSCRIBE_REDACT_MIN_DIGITS`` digits becomes ``[REDACTED:digits]``
   (``digits``; a card number that fails Luhn is then redacted as digits);
3. **sentence case** — the first letter of the text and the first letter after a
   sentence end (``. ! ?`` and a space; not after an ellipsis or ``e.g.``-like
   abbreviations) upper-cased, and the pronoun ``i`` (``i'm``, ``i'll``) written ``I``.

Example::

    >>> PostProcessor().apply("In short,, the period  was so far like the present period ,")
    'In short, the period was so far like the present period,'
    >>> PostProcessor().apply("We had everything before us. we had nothing before us.")
    'We had everything before us. We had nothing before us.'
    >>> PostProcessor(redact="cards,emails").apply("card 4111 1111 1111 1111, mail a@b.io")
    'Card [REDACTED:card], mail [REDACTED:email]'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings

__all__ = [
    "DEFAULT_MIN_DIGITS",
    "REDACT_KINDS",
    "PostProcessor",
    "luhn_valid",
    "number_run_digits",
]

REDACT_KINDS: Final = ("digits", "cards", "emails")
DEFAULT_MIN_DIGITS: Final = 6
CARD_MIN_DIGITS: Final = 13
CARD_MAX_DIGITS: Final = 19
CARD_TOKEN: Final = "[REDACTED:card]"
DIGITS_TOKEN: Final = "[REDACTED:digits]"
EMAIL_TOKEN: Final = "[REDACTED:email]"

_PUNCT: Final = ",;:.!?"
_SENTENCE_END: Final = ".!?"
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;:.!?])")
_PUNCT_RUN = re.compile(r"[,;:.!?](?:\s*[,;:.!?])+")
_SENTENCE_START = re.compile(r"([.!?])(\s+)([\"'(\[]?)([a-z])")
_FIRST_LETTER = re.compile(r"^([\"'(\[]?)([a-z])")
_PRONOUN_I = re.compile(r"(?<![\w.'])i(?=$|[\s,;:!?]|\.(?!\w)|'(?:m|ll|d|ve)\b)")
#: Lower-case abbreviations after which a full stop does not end a sentence.
_ABBREVIATIONS: Final = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "no."})

# ---------------------------------------------------------------------------- numbers
_DIGIT_WORDS: Final = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_TEEN_WORDS: Final = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}  # fmt: skip
_TENS_WORDS: Final = {
    "twenty": "2", "thirty": "3", "forty": "4", "fifty": "5",
    "sixty": "6", "seventy": "7", "eighty": "8", "ninety": "9",
}  # fmt: skip
_REPEAT_WORDS: Final = {"double": 2, "triple": 3}
_NUMBER_WORDS: Final = sorted(
    [*_DIGIT_WORDS, *_TEEN_WORDS, *_TENS_WORDS, *_REPEAT_WORDS], key=len, reverse=True
)
_NUM_TOKEN: Final = r"(?:\d+|(?:" + "|".join(_NUMBER_WORDS) + r")\b)"
#: A run of written digit groups and spoken number words, separated by spaces, commas or
#: hyphens ("4111-1111", "five five five, one two", "twenty-three").
_NUMBER_RUN = re.compile(rf"(?<![\w.]){_NUM_TOKEN}(?:[\s,-]+{_NUM_TOKEN})*(?![\w])", re.IGNORECASE)
_TOKEN = re.compile(_NUM_TOKEN, re.IGNORECASE)

# ----------------------------------------------------------------------------- e-mails
_WRITTEN_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_TLDS: Final = "com|org|net|edu|gov|io|co|uk|de|fr|info|biz|us|ca|eu"
_SPOKEN_EMAIL = re.compile(
    rf"\b([a-z0-9]+(?:(?:\s+dot\s+|\s+underscore\s+|[._])[a-z0-9]+)*)\s+at\s+"
    rf"([a-z0-9]+(?:\s+dot\s+[a-z0-9]+)*\s+dot\s+(?:{_TLDS}))\b",
    re.IGNORECASE,
)
#: Words that end a phrase like "look at the dot com bubble": not an address.
_NOT_LOCAL_PART: Final = frozenset({
    "look", "looking", "looked", "arrive", "arrived", "arriving", "is", "was", "are", "were",
    "be", "been", "it", "that", "this", "here", "there", "me", "us", "him", "her", "them",
    "you", "we", "they", "and", "or", "but", "at", "stare", "staring",
})  # fmt: skip
_NOT_DOMAIN_START: Final = frozenset({"the", "a", "an", "this", "that", "my", "your", "our"})


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a card number (digits only).

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def number_run_digits(run: str) -> str:
    """The digits a run of written and spoken numbers says.

    >>> number_run_digits("five five five, 12-34")
    '5551234'
    >>> number_run_digits("double five twenty three ninety")
    '552390'
    """
    out: list[str] = []
    tokens = [t.lower() for t in _TOKEN.findall(run)]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok.isdigit():
            out.append(tok)
        elif tok in _DIGIT_WORDS:
            out.append(_DIGIT_WORDS[tok])
        elif tok in _TEEN_WORDS:
            out.append(_TEEN_WORDS[tok])
        elif tok in _TENS_WORDS:
            if nxt in _DIGIT_WORDS and nxt not in ("zero", "oh"):
                out.append(_TENS_WORDS[tok] + _DIGIT_WORDS[nxt])
                i += 1
            else:
                out.append(_TENS_WORDS[tok] + "0")
        elif tok in _REPEAT_WORDS and nxt in _DIGIT_WORDS:
            out.append(_DIGIT_WORDS[nxt] * _REPEAT_WORDS[tok])
            i += 1
        i += 1
    return "".join(out)


def _parse_kinds(redact: str | Iterable[str]) -> frozenset[str]:
    items = redact.split(",") if isinstance(redact, str) else list(redact)
    kinds = frozenset(k.strip().lower() for k in items if k.strip())
    unknown = sorted(kinds - set(REDACT_KINDS))
    if unknown:
        raise UsageError(
            f"STREAMSCRIBE_REDACT: unknown kind {', '.join(unknown)} "
            f"(expected a comma list of {', '.join(REDACT_KINDS)})"
        )
    return kinds


def _one_mark(run: str) -> str:
    marks = run.replace(" ", "").replace("\t", "")
    if set(marks) == {"."} and len(marks) >= 3:
        return "..."
    return next((m for m in marks if m in _SENTENCE_END), marks[0])


@dataclass(frozen=True)
class PostProcessor:
    """Model text → the text a reader sees (see the module docstring for the rules).

    ``redact`` is a comma list of :data:`REDACT_KINDS` (or an iterable of them); empty =
    no redaction. Immutable and stateless: one instance serves every line of a worker.
    Build it with :meth:`from_settings` in services.
    """

    redact: str | frozenset[str] = ""
    min_digits: int = DEFAULT_MIN_DIGITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact", _parse_kinds(self.redact))
        if self.min_digits < 2:
            raise UsageError(f"STREAMSCRIBE_REDACT_MIN_DIGITS: must be >= 2, got {self.min_digits}")

    @classmethod
    def from_settings(cls, settings: Settings) -> PostProcessor:
        """From ``STREAMSCRIBE_REDACT`` and ``STREAMSCRIBE_REDACT_MIN_DIGITS``."""
        return cls(redact=settings.redact, min_digits=settings.redact_min_digits)

    @property
    def kinds(self) -> frozenset[str]:
        """The redaction kinds switched on."""
        assert isinstance(self.redact, frozenset)
        return self.redact

    def apply(self, text: str) -> str:
        """Clean, redact (if configured), then sentence-case ``text``."""
        text = self.clean(text)
        if self.kinds:
            text = self.redact_text(text)
        return self.sentence_case(text)

    def apply_partial(self, stable_text: str, text: str) -> tuple[str, str]:
        """``(stable, text)`` of a partial, post-processed, ``stable`` still a prefix.

        The stable part is the longest common prefix of both processed strings, cut back
        to a word boundary (a rule may read the words that follow, e.g. a number run).

        >>> PostProcessor().apply_partial("it was the best ,,", "it was the best ,, of")
        ('It was the best,', 'It was the best, of')
        """
        full = self.apply(text)
        stable = self.apply(stable_text) if stable_text.strip() else ""
        n = 0
        for a, b in zip(stable, full, strict=False):
            if a != b:
                break
            n += 1
        if n < len(full) and n > 0 and not (full[n] == " " or full[n - 1] == " "):
            n = full.rfind(" ", 0, n) + 1
        return full[:n].rstrip(), full

    # ------------------------------------------------------------------------- rules
    @staticmethod
    def clean(text: str) -> str:
        """Whitespace and duplicated punctuation.

        >>> PostProcessor.clean("  so ,, it goes . . and  then...  ")
        'so, it goes. and then...'
        """
        text = _SPACES.sub(" ", text).strip()
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
        text = _PUNCT_RUN.sub(lambda m: _one_mark(m.group(0)), text)
        return text.lstrip(_PUNCT + " ")

    def redact_text(self, text: str) -> str:
        """E-mail addresses, then number runs (cards, then long digit runs)."""
        kinds = self.kinds
        if "emails" in kinds:
            text = _WRITTEN_EMAIL.sub(EMAIL_TOKEN, text)
            text = _SPOKEN_EMAIL.sub(_spoken_email, text)
        if "cards" in kinds or "digits" in kinds:
            text = _NUMBER_RUN.sub(self._number_run, text)
        return text

    def _number_run(self, m: re.Match[str]) -> str:
        run = m.group(0)
        digits = number_run_digits(run)
        if (
            "cards" in self.kinds
            and CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS
            and luhn_valid(digits)
        ):
            return CARD_TOKEN
        if "digits" in self.kinds and len(digits) >= self.min_digits:
            return DIGITS_TOKEN
        return run

    @staticmethod
    def sentence_case(text: str) -> str:
        """Upper-case sentence starts and the pronoun ``I``.

        >>> PostProcessor.sentence_case("before us. we had... nothing, e.g. this. i'm here")
        "Before us. We had... nothing, e.g. this. I'm here"
        """
        text = _PRONOUN_I.sub("I", text)

        def upper(m: re.Match[str]) -> str:
            end = m.start(1)
            word_start = max(text.rfind(" ", 0, end), -1) + 1
            before = text[word_start : end + 1].lower()
            if text[max(0, end - 2) : end + 1] == "..." or before in _ABBREVIATIONS:
                return m.group(0)
            return m.group(1) + m.group(2) + m.group(3) + m.group(4).upper()

        text = _SENTENCE_START.sub(upper, text)
        return _FIRST_LETTER.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def _spoken_email(m: re.Match[str]) -> str:
    local, domain = m.group(1), m.group(2)
    if local.split()[-1].lower() in _NOT_LOCAL_PART:
        return m.group(0)
    if domain.split()[0].lower() in _NOT_DOMAIN_START:
        return m.group(0)
    return EMAIL_TOKEN
