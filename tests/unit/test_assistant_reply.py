"""``assistant --speak`` without a broker: the reply sentences, the speaker's failure paths
(espeak-ng missing or failing), the handler answering commands, the CLI options, and the
gateway session's ``reply`` message against its JSON Schema."""

from __future__ import annotations

import argparse
import base64
import doctest
import json
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from streamscribe.cli.assistant import add_arguments, speak_dir
from streamscribe.consumers import assistant_reply
from streamscribe.consumers.assistant import AssistantHandler, AssistantStats
from streamscribe.consumers.assistant_core import AssistantCore
from streamscribe.consumers.assistant_intents import IntentMatcher, load_intents
from streamscribe.consumers.assistant_reply import Speaker, reply_file_name, reply_text
from streamscribe.core.errors import SinkError, StreamscribeError, UsageError
from streamscribe.core.settings import Settings
from streamscribe.producers.gateway.protocol import StartMessage
from streamscribe.producers.gateway.session import GatewaySession
from streamscribe.schemas.commands import CommandEvent
from streamscribe.schemas.transcripts import FinalTranscript


def command(sid: str = "s1", utterance: int = 0, **kw: Any) -> CommandEvent:
    fields: dict[str, Any] = {"intent": "call", "slots": {"person": "mom"}, "text": "call mom"}
    return CommandEvent(
        session_id=sid, channel=0, role="", utterance=utterance, confidence=0.9,
        start_ms=0.0, end_ms=1000.0, **{**fields, **kw},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("intent", "slots", "said"),
    [
        ("set_timer", {"duration": "five minutes"}, "timer set for five minutes"),
        ("set_timer", {"duration": " 5 minutes "}, "timer set for 5 minutes"),
        ("cancel_timer", {}, "timer cancelled"),
        ("call", {"person": "the supervisor"}, "calling the supervisor"),
        ("transfer", {"department": "billing"}, "transferring you to billing"),
        ("note", {"note": "buy milk"}, "noted: buy milk"),
        ("time", {}, "it is 0:07"),
        ("stop", {}, "stopped"),
        # intents of another file: the name and the words heard
        ("remind", {"task": "buy milk", "time": "noon"}, "remind: buy milk, noon"),
        ("open_door", {}, "open door"),
        ("call", {"who": "mom"}, "call: mom"),  # a shipped name with other slots
    ],
)
def test_reply_text(intent: str, slots: dict[str, str], said: str) -> None:
    assert reply_text(intent, slots, now=datetime(2026, 12, 1, 0, 7)) == said


def test_every_shipped_intent_has_its_own_sentence() -> None:
    shipped = {e.intent for e in load_intents(None)}
    assert shipped == set(assistant_reply.REPLIES)


def test_reply_doctests() -> None:
    failures, tried = doctest.testmod(assistant_reply)
    assert failures == 0 and tried >= 5


def test_reply_file_name_is_safe() -> None:
    assert reply_file_name(command("../x y/z", 4)) == "_x_y_z_0_4.wav"
    assert "/" not in reply_file_name(command("a/b/c"))


def test_speaker_without_espeak_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(assistant_reply.shutil, "which", lambda _name: None)
    with pytest.raises(UsageError, match="--speak needs espeak-ng"):
        Speaker(tmp_path)


def test_a_failed_synthesis_publishes_the_text_without_audio(tmp_path: Path) -> None:
    fails = tmp_path / "fake-espeak"
    fails.write_text("#!/bin/sh\necho 'no voice' >&2\nexit 1\n")
    fails.chmod(0o755)
    speaker = Speaker(tmp_path / "out", espeak=str(fails))
    answered = speaker.answer(command())
    assert (answered.reply_text, answered.reply_audio_b64, answered.reply_duration_ms) == (
        "calling mom",
        "",
        0.0,
    )
    assert (speaker.spoken, speaker.failed) == (0, 1)


class FakeSpeaker:
    def answer(self, c: CommandEvent) -> CommandEvent:
        from dataclasses import replace

        return replace(c, reply_text=f"said {c.intent}", reply_audio_b64="QUJD")


class Out:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def deliver_all(self, what: str, error: type[StreamscribeError] = SinkError) -> None:
        pass


def test_the_handler_publishes_the_answered_command() -> None:
    out = Out()
    core = AssistantCore(IntentMatcher(load_intents(None)))
    handler = AssistantHandler(core, out, "c", AssistantStats(), speaker=FakeSpeaker())  # type: ignore[arg-type]
    f = FinalTranscript(
        session_id="s1", channel=0, role="", utterance=0, revision=1,
        text="Hey scribe, call the supervisor.", start_ms=0, end_ms=2000,
    )  # fmt: skip
    handler.handle_values([f.encode()])
    (sent,) = [CommandEvent.decode(v) for t, _, v in out.sent if t == "c"]
    assert (sent.intent, sent.reply_text, sent.reply_audio_b64) == ("call", "said call", "QUJD")


def test_speak_options() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    settings = Settings()
    assert speak_dir(settings, p.parse_args([])) is None
    default = speak_dir(settings, p.parse_args(["--speak"]))
    assert default is not None and default.parts[-2:] == (".cache", "assistant-replies")
    assert speak_dir(settings, p.parse_args(["--speak", "--speak-dir", "/tmp/r"])) == Path("/tmp/r")
    with pytest.raises(UsageError, match="--speak-dir needs --speak"):
        speak_dir(settings, p.parse_args(["--speak-dir", "/tmp/r"]))


def _validate(doc: dict[str, Any]) -> None:
    folder = resources.files("streamscribe.schemas").joinpath("json")
    docs = [json.loads(p.read_text()) for p in folder.iterdir() if p.name.endswith(".json")]
    registry: Registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs
    )
    schema = next(d for d in docs if d["$id"].endswith(f"gateway_{doc['type']}.schema.json"))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def test_the_gateway_session_sends_each_reply_once_in_its_log() -> None:
    s = GatewaySession("s1", StartMessage(16000, "pcm_s16le"), token_id="t")
    wav = base64.b64encode(b"RIFF....WAVE").decode()
    spoken = command(utterance=3, reply_text="calling mom", reply_audio_b64=wav,
                     reply_duration_ms=900.0)  # fmt: skip
    assert s.reply(command(utterance=2)) is None  # no audio: nothing to play
    doc = s.reply(spoken)
    assert doc == {
        "type": "reply", "n": 1, "command_id": "s1/0/3", "channel": 0, "utterance": 3,
        "intent": "call", "slots": {"person": "mom"}, "text": "calling mom",
        "content_type": "audio/wav", "audio": wav, "duration_ms": 900.0,
    }  # fmt: skip
    _validate(doc)
    assert s.reply(spoken) is None  # a replayed command
    assert [d["type"] for d in s.log] == ["reply"]
    with pytest.raises(jsonschema.ValidationError):
        _validate({**doc, "audio": 3})


def test_stream_client_prints_and_saves_a_reply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import base64

    from streamscribe.cli.gateway import Printer

    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "
    msg = {
        "type": "reply",
        "n": 9,
        "command_id": "call-42/0/3",
        "channel": 0,
        "utterance": 3,
        "intent": "set_timer",
        "slots": {"duration": "five minutes"},
        "text": "timer set for five minutes",
        "content_type": "audio/wav",
        "audio": base64.b64encode(wav).decode(),
        "duration_ms": 1720.0,
    }
    Printer(False, tmp_path / "replies")(msg)
    saved = tmp_path / "replies" / "call-42_0_3.wav"
    assert saved.read_bytes() == wav
    assert capsys.readouterr().out == f"reply to set_timer: timer set for five minutes ({saved})\n"
    Printer(False)(msg)  # no directory: printed only
    assert capsys.readouterr().out == "reply to set_timer: timer set for five minutes\n"
