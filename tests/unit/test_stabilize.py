"""Unit tests of partial-transcript stabilisation (and the text helpers it relies on)."""

from __future__ import annotations

import doctest
import itertools
import json
import random

import numpy as np
import pytest

from streamscribe.core.errors import AsrError
from streamscribe.processors import stabilize as stabilize_module
from streamscribe.processors import text as text_module
from streamscribe.processors.asr import SAMPLE_RATE, MoonshineAsr, bundled_recording, read_audio_16k
from streamscribe.processors.stabilize import (
    FinalView,
    LineClosedError,
    LineStabilizer,
    PartialView,
    StabilizerError,
    StabilizerStateError,
)
from streamscribe.processors.text import normalize_text, normalized_words
from tests import wer as wer_module
from tests.wer import wer, word_errors


def _check_invariants(views: list[PartialView]) -> None:
    """Stable prefix never retracted, always a prefix of the text, revisions increase."""
    for view in views:
        assert view.text.startswith(view.stable_text)
    for before, after in itertools.pairwise(views):
        assert after.revision > before.revision
        assert after.stable_text.startswith(before.stable_text)
        assert after.text.startswith(before.stable_text)


def test_scripted_sequence_with_disagreement() -> None:
    line = LineStabilizer()
    partials = [
        "it was",
        "It was the best",
        "it was the best of times",
        "it was a best of times it was",  # disagrees with the stable "the"
        "it was the best of times, it was the worst",
        "in was the bests of times it was the worst of times",  # disagrees twice
    ]
    views = [line.update(p) for p in partials]
    _check_invariants(views)
    assert [v.stable_text for v in views] == [
        "",
        "It was",
        "It was the best",
        "It was the best of times",
        "It was the best of times it was",
        "It was the best of times it was the worst",
    ]
    assert views[3].text == "It was the best of times it was"
    assert views[5].text == "It was the best of times it was the worst of times"
    assert views[5].unstable_text == "of times"
    assert [v.revision for v in views] == [1, 2, 3, 4, 5, 6]


def test_shorter_hypothesis_keeps_stable_prefix() -> None:
    line = LineStabilizer()
    line.update("we had everything before us")
    line.update("we had everything before us we")
    view = line.update("we")
    assert view.stable_text == "we had everything before us"
    assert view.text == "we had everything before us"
    assert line.update("").text == "we had everything before us"


def test_inserted_word_does_not_duplicate_tail() -> None:
    line = LineStabilizer()
    line.update("we had everything")
    line.update("we had everything")
    view = line.update("we had had everything before")
    assert view.text == "we had everything before"


def test_finalize_replaces_line_and_closes_it() -> None:
    line = LineStabilizer()
    line.update("ever tried ever")
    line.update("ever tried ever failed")
    final = line.finalize("  Ever tried.   Ever failed. ")
    assert final == FinalView("Ever tried. Ever failed.", 3)
    assert line.closed
    with pytest.raises(LineClosedError):
        line.update("ever")
    with pytest.raises(LineClosedError):
        line.finalize("ever")
    line.reset()
    assert not line.closed and line.revision == 0 and line.stable_text == ""
    assert line.update("no matter") == PartialView("no matter", "", 1)


def test_final_may_differ_from_stable_prefix() -> None:
    line = LineStabilizer()
    line.update("fail again")
    assert line.update("fail again fail").stable_text == "fail again"
    assert line.finalize("Try again.").text == "Try again."


def test_errors_share_the_root() -> None:
    assert issubclass(LineClosedError, StabilizerError)
    assert issubclass(StabilizerStateError, StabilizerError)
    assert issubclass(StabilizerError, AsrError)


def test_serialisation_round_trip_continues_identically() -> None:
    partials = ["the period", "the period was so", "the periods was so far", "the period was"]
    reference = LineStabilizer()
    expected = [reference.update(p) for p in partials]

    line = LineStabilizer()
    got = []
    for partial in partials:
        state = json.loads(json.dumps(line.to_dict()))
        line = LineStabilizer.from_dict(state)
        got.append(line.update(partial))
    assert got == expected
    assert LineStabilizer.from_dict(line.to_dict()).to_dict() == reference.to_dict()
    line.finalize("The period was so far.")
    restored = LineStabilizer.from_dict(json.loads(json.dumps(line.to_dict())))
    assert restored.closed and restored.revision == 5


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"v": 2, "stable": [], "last": [], "revision": 0, "closed": False},
        {"v": 1, "stable": "a b", "last": [], "revision": 0, "closed": False},
        {"v": 1, "stable": ["a b"], "last": ["a b"], "revision": 1, "closed": False},
        {"v": 1, "stable": ["a"], "last": ["b"], "revision": 1, "closed": False},
        {"v": 1, "stable": [], "last": [], "revision": -1, "closed": False},
        {"v": 1, "stable": [], "last": [], "revision": 1, "closed": "no"},
        ["not", "a", "dict"],
    ],
)
def test_bad_state_is_rejected(state: object) -> None:
    with pytest.raises(StabilizerStateError):
        LineStabilizer.from_dict(state)  # type: ignore[arg-type]


def test_random_hypotheses_never_retract() -> None:
    rng = random.Random(1234)
    vocab = ["it", "was", "the", "The", "best,", "of", "times.", "worst", "age", "wisdom"]
    for _ in range(200):
        line = LineStabilizer()
        truth = [rng.choice(vocab) for _ in range(12)]
        views = []
        for step in range(1, 10):
            words = truth[: rng.randint(0, min(12, step + 2))]
            words = [rng.choice(vocab) if rng.random() < 0.2 else w for w in words]
            if words and rng.random() < 0.1:
                words.insert(rng.randrange(len(words)), rng.choice(vocab))
            views.append(line.update(" ".join(words)))
        _check_invariants(views)


def test_real_redecoded_partials() -> None:
    """Re-decode beckett.wav every second as a growing utterance; stabilise the partials."""
    asr = MoonshineAsr.load(intra_threads=1)
    audio = read_audio_16k(bundled_recording("beckett.wav"))
    line = LineStabilizer()
    views = [
        line.update(asr.transcribe(audio[:end]).text)
        for end in range(SAMPLE_RATE, audio.shape[0], SAMPLE_RATE)
    ]
    _check_invariants(views)
    final_text = asr.transcribe(audio).text
    assert views[-1].revision == len(views)
    stable = normalized_words(views[-1].stable_text)
    assert stable == normalized_words(final_text)[: len(stable)]
    # Measured: after 9 s the stable prefix is "Ever tried ever failed, no matter, try
    # again, fail again," (10 words) although the 3 s and 5 s partials were wrong.
    assert (
        word_errors("ever tried ever failed no matter try again fail again", " ".join(stable)) <= 1
    )
    final = line.finalize(final_text)
    assert final.revision == len(views) + 1 and final.text == final_text


def test_text_helpers() -> None:
    assert (
        normalize_text("It’s the EPOCH of belief -- in short,")
        == "it's the epoch of belief in short"
    )
    assert word_errors("a b c", "") == 3
    assert np.isclose(wer("a b c d", "a b c d e"), 0.25)
    assert wer("", "") == 0.0 and wer("", "a b") == 2.0


def test_docstring_examples_run() -> None:
    for module, minimum in ((stabilize_module, 8), (text_module, 6), (wer_module, 6)):
        failures, tried = doctest.testmod(module)
        assert tried >= minimum and failures == 0
