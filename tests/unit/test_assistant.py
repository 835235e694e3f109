"""The voice assistant's cores: wake phrase, intents matcher, the line state machine, and
the consume-loop handler with a fake publisher (no broker)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from streamscribe.consumers import assistant_core, assistant_intents, assistant_wake
from streamscribe.consumers.assistant import AssistantHandler, AssistantStats, config_from_settings
from streamscribe.consumers.assistant_core import AssistantConfig, AssistantCore
from streamscribe.consumers.assistant_intents import (
    IntentMatcher,
    load_intents,
    parse_intents,
    words_of,
)
from streamscribe.consumers.assistant_wake import DEFAULT_WAKE, WakeDetector
from streamscribe.core.errors import ContractError, SinkError, StreamscribeError, UsageError
from streamscribe.core.settings import Settings
from streamscribe.schemas.commands import AssistantState, CommandEvent, WakeMark
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript

INTENTS = {
    "set_timer": ["set a timer for {duration}", "start a timer for {duration}"],
    "cancel_timer": ["cancel the timer", "stop the timer"],
    "call": ["call {person}", "get me {person}"],
    "remind": ["remind me to {task} at {time}"],
    "stop": ["stop"],
}


@pytest.fixture(scope="module")
def matcher() -> IntentMatcher:
    return IntentMatcher(parse_intents(INTENTS))


def final(text: str, utterance: int = 0, *, start: float = 0.0, end: float = 2000.0, **kw: object):  # type: ignore[no-untyped-def]
    return FinalTranscript(
        session_id=str(kw.get("session", "s1")),
        channel=int(kw.get("channel", 0)),  # type: ignore[call-overload]
        role="caller",
        utterance=utterance,
        revision=1,
        text=text,
        start_ms=start,
        end_ms=end,
        timestamps={"captured_at_us": 100, "published_at_us": 200},
    )


def partial(text: str, utterance: int = 0, *, end: float, revision: int = 1) -> PartialTranscript:
    return PartialTranscript(
        session_id="s1",
        channel=0,
        role="caller",
        utterance=utterance,
        revision=revision,
        text=text,
        start_ms=0.0,
        end_ms=end,
    )


# ------------------------------------------------------------------------- wake phrase
@pytest.mark.parametrize(
    ("words", "heard", "end"),
    [
        ("Hey scribe, set a timer", "hey scribe", 2),
        ("Hay scribe, call mom", "hay scribe", 2),
        ("hey script stop", "hey script", 2),
        ("Hey, subscribe. Stop the timer.", "hey subscribe", 2),
        ("Hey, scry! Get me your manager!", "hey scry", 2),
        ("oh hey scribe call mom", "hey scribe", 3),
        # hearings of espeak-ng's "hey scribe" listed in the default spec
        ("Haste drive, call the supervisor.", "haste drive", 2),
        ("Hastribe, call mum.", "hastribe", 1),
        ("Hey, it's drive.", "hey it's drive", 3),
    ],
)
def test_wake_phrase_as_heard(words: str, heard: str, end: int) -> None:
    hit = WakeDetector(DEFAULT_WAKE).find(words_of(words))
    assert hit is not None
    assert (hit.heard, hit.end) == (heard, end)


@pytest.mark.parametrize(
    "text",
    [
        "The weather is nice today.",
        "But where there is ice to me?",
        "Hey, how are you?",
        "I subscribe to the magazine",
        "",
    ],
)
def test_no_wake_phrase(text: str) -> None:
    assert WakeDetector(DEFAULT_WAKE).find(words_of(text)) is None


def test_wake_spec_errors() -> None:
    with pytest.raises(UsageError, match="no words"):
        WakeDetector(" | ,")
    with pytest.raises(UsageError, match="threshold"):
        WakeDetector("hey scribe", threshold=0)
    assert WakeDetector("OK, Computer!|okay computer").phrase == "ok computer"
    # the known hearings of "hey scribe" come with the phrase, not with a spec of one's own
    assert WakeDetector("Hey, Scribe!").find(words_of("haste drive stop")) is not None
    assert WakeDetector("hey scribe|hey you").find(words_of("haste drive stop")) is None


# ----------------------------------------------------------------------------- intents
@pytest.mark.parametrize(
    ("command", "intent", "slots"),
    [
        ("set a timer for five minutes", "set_timer", {"duration": "five minutes"}),
        ("Set a timer for 5 minutes.", "set_timer", {"duration": "5 minutes"}),
        ("please set the timer for ten seconds", "set_timer", {"duration": "ten seconds"}),
        ("start a timer for an hour", "set_timer", {"duration": "an hour"}),
        ("set a time for two minutes", "set_timer", {"duration": "two minutes"}),
        ("call the supervisor", "call", {"person": "the supervisor"}),
        ("Call me, supervisor.", "call", {"person": "me supervisor"}),
        ("get me your manager", "call", {"person": "your manager"}),
        ("stop the timer", "cancel_timer", {}),
        ("cancel the timer", "cancel_timer", {}),
        ("stop", "stop", {}),
        (
            "remind me to buy milk at six pm",
            "remind",
            {"task": "buy milk", "time": "six pm"},
        ),
    ],
)
def test_intent_and_slots(matcher: IntentMatcher, command: str, intent: str, slots: dict) -> None:  # type: ignore[type-arg]
    hit = matcher.match(words_of(command))
    assert hit is not None
    assert (hit.intent, hit.slots) == (intent, slots)
    assert hit.score >= 0.7


def test_exact_scores(matcher: IntentMatcher) -> None:
    exact = matcher.match(words_of("call the supervisor"))
    assert exact is not None and (exact.score, exact.example) == (1.0, "call {person}")
    # "please": one extra word, weighed 0.5: 4 / 4.5
    filler = matcher.match(words_of("please set a timer for one minute"))
    assert filler is not None and round(filler.score, 4) == round(4 / 4.5, 4)
    # one literal word left out ("a"): 3 / 4
    missing = matcher.match(words_of("set timer for one minute"))
    assert missing is not None and missing.score == 0.75


@pytest.mark.parametrize(
    "command", ["what is the weather like", "the weather is nice today", "where is ice to me"]
)
def test_no_intent_reaches_the_threshold(matcher: IntentMatcher, command: str) -> None:
    hit = matcher.match(words_of(command))
    assert hit is None or hit.score < 0.7


def test_the_shipped_intents_file() -> None:
    m = IntentMatcher(load_intents())
    assert m.intents == [
        "set_timer", "cancel_timer", "call", "transfer", "note", "time", "stop",
    ]  # fmt: skip
    hit = m.match(words_of("transfer me to billing"))
    assert hit is not None and (hit.intent, hit.slots) == ("transfer", {"department": "billing"})


def test_intents_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read intents file"):
        load_intents(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    cases = {
        "call: [call {person\n": "not YAML",
        "- a\n- b\n": "expected a mapping",
        "call: []\n": "expected a list",
        "call: ['{person}']\n": "has no literal word",
        "call: ['call {a} {b}']\n": "two slots side by side",
        "call: ['call {a} and {a}']\n": "slot {a} twice",
        "call: ['call x{a}']\n": "a word of its own",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_intents(bad)
    good = tmp_path / "good.yaml"
    good.write_text("call: call {person}\n")
    assert [e.phrase for e in load_intents(good)] == ["call {person}"]


# ------------------------------------------------------------------------- the core
def test_final_with_wake_and_command(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    (cmd,) = core.accept(final("Hey scribe, set a timer for 5 minutes.", 3), now_us=999)
    assert (cmd.intent, cmd.slots, cmd.text) == (
        "set_timer",
        {"duration": "5 minutes"},
        "set a timer for 5 minutes",
    )
    assert (cmd.session_id, cmd.channel, cmd.utterance, cmd.command_id) == ("s1", 0, 3, "s1/0/3")
    assert (cmd.wake_heard, cmd.wake_score, cmd.intent_score, cmd.confidence) == (
        "hey scribe",
        1.0,
        1.0,
        1.0,
    )
    assert cmd.source == "final"
    assert cmd.timestamps == {"captured_at_us": 100, "published_at_us": 200, "command_at_us": 999}
    assert cmd.transcript == "Hey scribe, set a timer for 5 minutes."
    # the same final again (a replay, or the recognizer's duplicate): no second command
    assert core.accept(final("Hey scribe, set a timer for 5 minutes.", 3), now_us=1000) == []
    assert (core.counts.commands, core.counts.replays) == (1, 1)


def test_no_wake_no_command(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    assert core.accept(final("Call the supervisor, please."), now_us=1) == []
    assert core.accept(final("The weather is nice today.", 1), now_us=1) == []
    assert core.counts.wakes == 0 and core.counts.commands == 0


def test_wake_but_no_intent_is_counted_not_published(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    assert core.accept(final("Hey scribe, what is the weather like"), now_us=1) == []
    assert (core.counts.wakes, core.counts.unmatched) == (1, 1)
    assert core.counts.unmatched_texts == ["what is the weather like"]


def test_partials_arm_the_line_and_the_final_decides(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    assert core.accept(partial("Hey scribe", end=800), now_us=1) == []
    assert core.accept(partial("Hey scribe, call the", end=1400, revision=2), now_us=2) == []
    # the final lost the wake words: the armed line's words are the command
    (cmd,) = core.accept(final("Call the supervisor.", end=2000), now_us=3)
    assert (cmd.intent, cmd.slots, cmd.source) == ("call", {"person": "the supervisor"}, "final")
    assert cmd.wake_heard == "hey scribe"


def test_timeout_takes_the_command_from_the_latest_partial(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher, AssistantConfig(timeout_ms=3000))
    assert core.accept(partial("hey scribe call", end=1000), now_us=1) == []
    assert core.accept(partial("hey scribe call the supervisor and", end=3900), now_us=2) == []
    (cmd,) = core.accept(partial("hey scribe call the supervisor and then", end=4000), now_us=3)
    assert (cmd.intent, cmd.slots, cmd.source) == (
        "call",
        {"person": "the supervisor and then"},
        "timeout",
    )
    # the line's final comes later: already handled
    assert core.accept(final("Hey scribe, call the supervisor and then.", end=4500), now_us=4) == []
    assert core.counts.commands == 1


def test_wake_only_line_then_the_command_line(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher, AssistantConfig(timeout_ms=3000))
    assert core.accept(final("Hey, scribe.", 0, start=0, end=900), now_us=1) == []
    (cmd,) = core.accept(final("Call the supervisor", 1, start=1500, end=3000), now_us=2)
    assert (cmd.intent, cmd.slots, cmd.utterance) == ("call", {"person": "the supervisor"}, 1)
    assert cmd.transcript == "Hey, scribe. Call the supervisor"
    # too late after a wake-only line: no command
    assert core.accept(final("Hey scribe.", 2, start=5000, end=5800), now_us=3) == []
    assert core.accept(final("Call the supervisor", 3, start=9000, end=10500), now_us=4) == []
    # another channel's line does not take the wake phrase of this one
    assert core.accept(final("Hey scribe.", 4, start=11000, end=11800), now_us=5) == []
    assert core.accept(final("Call mom", 0, start=12000, end=13000, channel=1), now_us=6) == []
    assert core.counts.commands == 1


# ---------------------------------------------------------------- the session state
def restarted(
    core: AssistantCore,
    matcher: IntentMatcher,
    written: list[AssistantState] | None = None,
    **kw: object,
) -> AssistantCore:
    """A new core restored from the records ``core`` has written (through their JSON)."""
    fresh = AssistantCore(matcher, AssistantConfig(**kw))  # type: ignore[arg-type]
    records = {r.session_id: r for r in [*(written or []), *core.changed()]}
    assert fresh.restore(AssistantState.decode(r.encode()) for r in records.values()) == len(
        records
    )
    return fresh


def test_a_partial_wake_survives_a_restart(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    assert core.accept(partial("Hey scribe", end=800), now_us=1) == []
    (record,) = core.changed()
    assert record == AssistantState(
        "s1", lines=(WakeMark(0, 0, 1.0, "hey scribe", 800.0),), waiting=(), done=()
    )
    assert core.changed() == []  # handed over once
    # a crash here; the final lost the wake words: only the restored mark makes it a command
    fresh = restarted(core, matcher, [record])
    (cmd,) = fresh.accept(final("Call the supervisor.", end=2000), now_us=3)
    assert (cmd.intent, cmd.slots, cmd.wake_heard) == (
        "call",
        {"person": "the supervisor"},
        "hey scribe",
    )
    # without the state, the same final is no command
    assert AssistantCore(matcher).accept(final("Call the supervisor.", end=2000), now_us=3) == []


def test_a_wake_only_line_survives_a_restart(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher, AssistantConfig(timeout_ms=3000))
    assert core.accept(final("Hey, scribe.", 0, start=0, end=900), now_us=1) == []
    fresh = restarted(core, matcher, timeout_ms=3000)
    assert fresh.state_of("s1") == AssistantState(
        "s1",
        waiting=(WakeMark(0, 0, 1.0, "hey scribe", 900.0, "Hey, scribe."),),
        done=((0, 0),),
    )
    (cmd,) = fresh.accept(final("Call the supervisor", 1, start=1500, end=3000), now_us=2)
    assert (cmd.intent, cmd.utterance, cmd.transcript) == (
        "call",
        1,
        "Hey, scribe. Call the supervisor",
    )


def test_a_decided_line_is_not_published_again_after_a_restart(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    assert len(core.accept(final("Hey scribe, call mom", 4), now_us=1)) == 1
    fresh = restarted(core, matcher)
    assert fresh.accept(final("Hey scribe, call mom", 4), now_us=2) == []  # the batch replayed
    assert fresh.counts.replays == 1
    assert len(fresh.accept(final("Hey scribe, call mom", 5), now_us=3)) == 1  # a new line


def test_only_changes_are_written(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    core.accept(partial("The weather", end=500), now_us=1)
    core.accept(final("The weather is nice today."), now_us=2)
    assert core.changed() == []  # no wake phrase, nothing armed: nothing to keep
    core.accept(partial("hey scribe", 1, end=500), now_us=3)
    core.accept(partial("hey scribe call", 1, end=900, revision=2), now_us=4)
    (record,) = core.changed()  # armed once; the second partial changed nothing
    assert [m.utterance for m in record.lines] == [1]
    core.accept(partial("hey scribe call", 1, end=1000, revision=3), now_us=5)
    assert core.changed() == []


def test_a_late_earlier_line_leaves_the_wait(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher, AssistantConfig(timeout_ms=3000))
    core.accept(final("Hey scribe.", 3, start=5000, end=5800), now_us=1)
    # a duplicate of an earlier line (the recognizer's replay) is not the command
    assert core.accept(final("Call the supervisor", 2, start=4000, end=4900), now_us=2) == []
    (cmd,) = core.accept(final("Call mom", 4, start=6000, end=7000), now_us=3)
    assert (cmd.intent, cmd.slots) == ("call", {"person": "mom"})


def test_done_lines_per_session_are_bounded(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    for u in range(assistant_core.MAX_DONE_PER_SESSION + 10):
        core.accept(final("Hey scribe, stop", u), now_us=u)
    (record,) = core.changed()
    assert len(record.done) == assistant_core.MAX_DONE_PER_SESSION
    assert record.done[0] == (0, 10) and record.done[-1] == (0, 73)


def test_assistant_state_schema() -> None:
    good = AssistantState("s", lines=(WakeMark(1, 2, 0.8, "hay scribe", 10.5),), done=((1, 1),))
    doc = json.loads(good.encode())
    assert doc == {
        "session_id": "s",
        "lines": [
            {
                "channel": 1,
                "utterance": 2,
                "wake_score": 0.8,
                "wake_heard": "hay scribe",
                "at_ms": 10.5,
                "transcript": "",
            }
        ],
        "waiting": [],
        "done": [[1, 1]],
        "schema_version": 1,
    }
    for broken, where in [
        ({**doc, "done": [[1]]}, "done"),
        ({**doc, "lines": [{"channel": 0}]}, "lines"),
        ({k: v for k, v in doc.items() if k != "waiting"}, "waiting"),
    ]:
        with pytest.raises(ContractError, match=where):
            AssistantState.decode(json.dumps(broken).encode())


def test_handler_writes_the_state_after_the_commands(matcher: IntentMatcher) -> None:
    out = FakePublisher()
    stats = AssistantStats()
    handler = AssistantHandler(
        AssistantCore(matcher), out, "p.commands", stats, state_topic="g-state"
    )
    handler.handle_values(
        [
            PartialTranscript(
                session_id="s2", channel=0, role="", utterance=0, revision=1,
                text="hey scribe", start_ms=0.0, end_ms=700.0,
            ).encode(),
            final("Hey scribe, call the supervisor.", 0).encode(),
            final("The weather is nice today.", 1).encode(),
        ]
    )  # fmt: skip
    assert [(t, k) for t, k, _ in out.sent] == [
        ("p.commands", b"s1"),
        ("g-state", b"s2"),
        ("g-state", b"s1"),
    ]
    assert out.delivered == 3 and (stats.commands, stats.states_written) == (1, 2)
    assert AssistantState.decode(out.sent[2][2]).done == ((0, 0),)
    handler.handle_values([final("Nothing here.", 2).encode()])
    assert len(out.sent) == 3  # nothing changed: nothing sent


def test_core_doctest() -> None:
    for module in (assistant_core, assistant_intents, assistant_wake):
        failures, tried = doctest.testmod(module)
        assert failures == 0 and tried >= 5, module.__name__


# --------------------------------------------------------------------------- the edge
class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.fail = fail
        self.delivered = 0

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def deliver_all(self, what: str, error: type[StreamscribeError] = SinkError) -> None:
        if self.fail:
            raise error(f"1 {what} not delivered")
        self.delivered = len(self.sent)


def test_handler_publishes_commands_and_skips_bad_values(matcher: IntentMatcher) -> None:
    out = FakePublisher()
    stats = AssistantStats()
    handler = AssistantHandler(AssistantCore(matcher), out, "p.commands", stats)
    values = [
        final("Hey scribe, call the supervisor.", 0).encode(),
        b"not json",
        None,
        final("The weather is nice today.", 1).encode(),
        final("Hey scribe, set a timer for five minutes", 2).encode(),
        final("Hey scribe, call the supervisor.", 0).encode(),  # replayed
    ]
    handler.handle_values(values)
    assert (stats.transcripts, stats.undecodable, stats.commands) == (4, 2, 2)
    assert out.delivered == 2
    decoded = [CommandEvent.decode(v) for _, _, v in out.sent]
    assert [(t, k) for t, k, _ in out.sent] == [("p.commands", b"s1"), ("p.commands", b"s1")]
    assert [(c.command_id, c.intent, c.slots) for c in decoded] == [
        ("s1/0/0", "call", {"person": "the supervisor"}),
        ("s1/0/2", "set_timer", {"duration": "five minutes"}),
    ]
    doc = json.loads(out.sent[0][2])
    assert doc["command_id"] == "s1/0/0" and doc["schema_version"] == 1


def test_handler_raises_when_a_command_is_not_delivered(matcher: IntentMatcher) -> None:
    handler = AssistantHandler(
        AssistantCore(matcher), FakePublisher(fail=True), "c", AssistantStats()
    )
    with pytest.raises(SinkError, match="commands and session states not delivered"):
        handler.handle_values([final("Hey scribe, stop").encode()])


def test_command_event_schema() -> None:
    with pytest.raises(ContractError, match="slots"):
        CommandEvent.decode(
            json.dumps(
                {
                    "session_id": "s",
                    "channel": 0,
                    "utterance": 0,
                    "intent": "x",
                    "slots": {"a": 1},
                    "text": "",
                    "confidence": 0.5,
                    "start_ms": 0,
                    "end_ms": 1,
                    "timestamps": {},
                }
            ).encode()
        )


def test_config_from_settings() -> None:
    s = Settings.from_env(
        {
            "STREAMSCRIBE_ASSISTANT_WAKE": "ok computer",
            "STREAMSCRIBE_ASSISTANT_TIMEOUT_S": "2.5",
            "STREAMSCRIBE_ASSISTANT_INTENT_THRESHOLD": "0.8",
        }
    )
    assert config_from_settings(s) == AssistantConfig("ok computer", 75.0, 0.8, 2500.0)
    assert config_from_settings(s, wake="hey you", timeout_s=1).timeout_ms == 1000.0
    assert config_from_settings(Settings.from_env({})).wake == DEFAULT_WAKE == "hey scribe"


def test_a_near_wake_phrase_without_a_command_gives_nothing(matcher: IntentMatcher) -> None:
    core = AssistantCore(matcher)
    # "they describe" is within the wake threshold of "hey scribe"; no intent follows
    assert core.accept(final("They describe the problem in detail."), now_us=1) == []
    assert (core.counts.wakes, core.counts.unmatched, core.counts.commands) == (1, 1, 0)


def test_cli_bad_intents_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from streamscribe import cli
    from streamscribe.cli.common import EXIT_USAGE

    assert cli.main(["assistant", "--intents", "/nonexistent-xyz.yaml"]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "streamscribe assistant: error: cannot read intents file /nonexistent-xyz.yaml: "
        "No such file or directory"
    ]
