"""The post-processing rules (processors/postprocess.py) on exact strings."""

from __future__ import annotations

import doctest

import pytest

from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings
from streamscribe.processors import postprocess
from streamscribe.processors.postprocess import (
    PostProcessor,
    luhn_valid,
    number_run_digits,
)

PLAIN = PostProcessor()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the strings `make demo` stored (issue 15)
        (
            "In short,, the period was so far like the present period,",
            "In short, the period was so far like the present period,",
        ),
        (
            "We had everything before us. we had nothing before us.",
            "We had everything before us. We had nothing before us.",
        ),
        # whitespace
        ("  it was   the best\tof times \n", "It was the best of times"),
        ("hello , world !", "Hello, world!"),
        # duplicated and mixed punctuation
        ("wait.. what", "Wait. What"),
        ("so , , it goes", "So, it goes"),
        ("really?! yes", "Really? Yes"),
        ("and then , . we left", "And then. We left"),
        ("well... i think so", "Well... I think so"),
        ("well . . . . fine", "Well... fine"),
        (", leading comma", "Leading comma"),
        # sentence case, not after abbreviations; the pronoun I
        ("it rained! then it stopped? no.", "It rained! Then it stopped? No."),
        ("fruit, e.g. apples. and pears", "Fruit, e.g. apples. And pears"),
        ("i think i'm sure i'll go, said i.", "I think I'm sure I'll go, said I."),
        ("the i.e. form and pi", "The i.e. form and pi"),
        ('he said. "yes" and left', 'He said. "Yes" and left'),
        # numbers and addresses untouched without redaction
        ("call 555 123 4567 or a@b.com", "Call 555 123 4567 or a@b.com"),
        ("it costs 3.50 dollars", "It costs 3.50 dollars"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_clean_and_sentence_case(raw: str, expected: str) -> None:
    assert PLAIN.apply(raw) == expected


def test_apply_is_idempotent_on_its_output() -> None:
    once = PLAIN.apply("In short,, the period. we had  nothing ,")
    assert once == "In short, the period. We had nothing,"
    assert PLAIN.apply(once) == once


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),  # Visa test number
        ("5555555555554444", True),  # Mastercard test number
        ("378282246310005", True),  # Amex test number (15 digits)
        ("4111111111111112", False),
        ("1234567812345678", False),
        ("0", True),
        ("12a4", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("run", "digits"),
    [
        ("4111 1111-1111, 1111", "4111111111111111"),
        ("five five five one two three four", "5551234"),
        ("oh double seven triple two", "077222"),
        ("twenty-three forty nineteen", "234019"),
        ("Four One One", "411"),
    ],
)
def test_number_run_digits(run: str, digits: str) -> None:
    assert number_run_digits(run) == digits


@pytest.mark.parametrize(
    ("redact", "raw", "expected"),
    [
        # cards: valid by Luhn, written or spoken
        ("cards", "my card is 4111 1111 1111 1111.", "My card is [REDACTED:card]."),
        ("cards", "card 4111-1111-1111-1111 thanks", "Card [REDACTED:card] thanks"),
        ("cards", "amex 378282246310005", "Amex [REDACTED:card]"),
        (
            "cards",
            "it is four one one one one one one one one one one one one one one one.",
            "It is [REDACTED:card].",
        ),
        # an invalid card number is kept by "cards" alone, redacted as digits by "digits"
        ("cards", "card 4111 1111 1111 1112", "Card 4111 1111 1111 1112"),
        ("cards,digits", "card 4111 1111 1111 1112", "Card [REDACTED:digits]"),
        # digits: runs of >= 6 digits, written or spoken; shorter runs kept
        ("digits", "call 555-123-4567 now", "Call [REDACTED:digits] now"),
        (
            "digits",
            "my number is five five five, one two three four. ok",
            "My number is [REDACTED:digits]. Ok",
        ),
        ("digits", "pin double five triple two one", "Pin [REDACTED:digits]"),
        ("digits", "in 2024 i had 12345 apples", "In 2024 I had 12345 apples"),
        ("digits", "one of the two or three", "One of the two or three"),
        ("digits", "version 1.2.3.4.5.6", "Version 1.2.3.4.5.6"),
        # e-mails, written and spoken; not "look at the dot com bubble"
        ("emails", "write to jo.ann+x@mail.example.com.", "Write to [REDACTED:email]."),
        ("emails", "it is john dot smith at example dot com ok", "It is [REDACTED:email] ok"),
        ("emails", "look at the dot com bubble", "Look at the dot com bubble"),
        ("emails", "we met at noon", "We met at noon"),
        # an e-mail with digits is an e-mail, not digits
        ("emails,digits", "mail bob1234567@x.org", "Mail [REDACTED:email]"),
        # off by default
        ("", "card 4111 1111 1111 1111 a@b.io", "Card 4111 1111 1111 1111 a@b.io"),
    ],
)
def test_redaction(redact: str, raw: str, expected: str) -> None:
    assert PostProcessor(redact=redact).apply(raw) == expected


def test_min_digits_setting() -> None:
    p = PostProcessor(redact="digits", min_digits=4)
    assert p.apply("pin 1234 or 123") == "Pin [REDACTED:digits] or 123"
    with pytest.raises(UsageError, match="STREAMSCRIBE_REDACT_MIN_DIGITS"):
        PostProcessor(redact="digits", min_digits=1)


def test_from_settings() -> None:
    assert PostProcessor.from_settings(Settings.from_env({})).kinds == frozenset()
    s = Settings.from_env(
        {"STREAMSCRIBE_REDACT": "digits, Cards,emails", "STREAMSCRIBE_REDACT_MIN_DIGITS": "8"}
    )
    p = PostProcessor.from_settings(s)
    assert p.kinds == frozenset({"digits", "cards", "emails"})
    assert p.min_digits == 8
    assert p.apply("call 1234567 or 12345678") == "Call 1234567 or [REDACTED:digits]"


def test_unknown_redaction_kind_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="STREAMSCRIBE_REDACT: unknown kind phones"):
        PostProcessor(redact="digits,phones")


@pytest.mark.parametrize(
    ("stable", "text", "expected"),
    [
        (
            "it was the best ,,",
            "it was the best ,, of",
            ("It was the best,", "It was the best, of"),
        ),
        ("", "hello there", ("", "Hello there")),
        # the stable part ends inside a word that changes: cut back to a word boundary
        ("we had. we", "we had. went", ("We had.", "We had. Went")),
    ],
)
def test_apply_partial_keeps_stable_a_prefix(
    stable: str, text: str, expected: tuple[str, str]
) -> None:
    got = PLAIN.apply_partial(stable, text)
    assert got == expected
    assert got[1].startswith(got[0])


def test_apply_partial_when_redaction_takes_a_number_run() -> None:
    p = PostProcessor(redact="digits")
    # the stable part shows 555 12, the full text makes the run long enough to redact
    assert p.apply_partial("call 555 12", "call 555 1234") == ("Call", "Call [REDACTED:digits]")


def test_doctests() -> None:
    failures, tried = doctest.testmod(postprocess)
    assert (failures, tried) == (0, 9)
