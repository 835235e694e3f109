"""``assistant --speak``: espeak-ng replies as WAV files, in the command, through the gateway.

- a synthesised command is answered with a WAV of the reply sentence: 22050 Hz speech of a
  length that fits its words, which Moonshine hears back as the sentence;
- the assistant on the broker with ``--speak``: the command carries the reply (text and
  the very bytes of the WAV written in ``--speak-dir``);
- the gateway passes a command's reply to the client of that session as a ``reply``
  message, once per command, and nothing of another session's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from streamscribe.consumers.assistant_reply import Speaker, reply_file_name
from streamscribe.core.kafka import DeliveryProducer
from streamscribe.processors.asr import MoonshineAsr, read_audio_16k
from streamscribe.processors.text import normalize_text
from streamscribe.schemas.commands import CommandEvent
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript
from tests.integration.gateway_procs import TOKENS, gateway, start_doc
from tests.integration.kafka_read import read_topic, wait_for_count
from tests.procs import Proc, streamscribe_cmd
from tests.wer import word_errors

pytestmark = pytest.mark.integration

ESPEAK = shutil.which("espeak-ng")


def command(sid: str, utterance: int = 0, **kw: Any) -> CommandEvent:
    fields: dict[str, Any] = {
        "intent": "set_timer",
        "slots": {"duration": "five minutes"},
        "text": "set a timer for five minutes",
        **kw,
    }
    return CommandEvent(
        session_id=sid, channel=0, role="", utterance=utterance, confidence=0.9,
        start_ms=0.0, end_ms=2500.0, **fields,
    )  # fmt: skip


def test_a_command_is_answered_with_a_wav_of_the_reply_spoken(tmp_path: Path) -> None:
    assert ESPEAK is not None, "espeak-ng is missing: scripts/system-deps.sh installs it"
    speaker = Speaker(tmp_path / "replies")
    answered = speaker.answer(command("call/7"))
    path = tmp_path / "replies" / "call_7_0_0.wav"
    assert answered.reply_text == "timer set for five minutes"
    assert base64.b64decode(answered.reply_audio_b64) == path.read_bytes()

    pcm, rate = sf.read(path, dtype="float32")
    assert rate == 22050 and pcm.ndim == 1
    duration_s = len(pcm) / rate
    assert answered.reply_duration_ms == pytest.approx(1000 * duration_s, abs=0.1)
    # espeak-ng speaks ~175 words a minute (0.34 s a word): 5 words, 1-3 s with its pauses
    assert 1.0 <= duration_s <= 3.0, duration_s
    frames = pcm[: len(pcm) // 441 * 441].reshape(-1, 441)  # 20 ms
    loud = np.sqrt((frames**2).mean(axis=1)) > 10 ** (-40 / 20)
    assert loud.mean() >= 0.5, loud.mean()  # speech most of the time, not silence
    heard = MoonshineAsr.load(intra_threads=1).transcribe(read_audio_16k(path)).text
    print(f"\nreply {answered.reply_text!r}: {duration_s:.2f} s, heard {heard!r}")
    heard = normalize_text(heard.replace("5", "five"))
    # Moonshine hears espeak-ng's "timer" as "time o" (measured): 2 errors, the rest exact
    assert word_errors("timer set for five minutes", heard) <= 2, heard
    assert heard.endswith("set for five minutes"), heard


def test_the_assistant_speaks_its_commands_on_the_broker(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    sid = f"speak-{uuid.uuid4().hex[:6]}"
    out_dir = tmp_path / "replies"
    proc = Proc(
        streamscribe_cmd(
            "--log-level", "INFO", "assistant", "--wake", "hey scribe", "--speak",
            "--speak-dir", str(out_dir), "--group-id", f"as-{uuid.uuid4().hex[:6]}",
            "--from-earliest",
        ),
        tmp_path / "assistant.log",
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
             "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix},
    )  # fmt: skip
    try:
        proc.wait_for_log(f"replies spoken into {out_dir}", 60)
        producer = DeliveryProducer(kafka_bootstrap, client_id="test-transcripts")
        for u, text in enumerate(["Hey scribe, call the supervisor.", "The weather is nice."]):
            f = FinalTranscript(
                session_id=sid, channel=0, role="", utterance=u, revision=1, text=text,
                start_ms=3000.0 * u, end_ms=3000.0 * u + 2000,
            )  # fmt: skip
            producer.send(topics.transcripts, sid.encode(), f.encode())
        producer.deliver_all("transcripts")
        producer.close()
        wait_for_count(kafka_bootstrap, topics.commands, lambda rs: len(rs) >= 1, timeout_s=60)
    finally:
        proc.stop()
    (cmd,) = [CommandEvent.decode(r.value) for r in read_topic(kafka_bootstrap, topics.commands)]
    assert (cmd.intent, cmd.slots, cmd.reply_text) == (
        "call",
        {"person": "the supervisor"},
        "calling the supervisor",
    )
    wav = out_dir / reply_file_name(cmd)
    assert sorted(p.name for p in out_dir.iterdir()) == [wav.name]
    assert base64.b64decode(cmd.reply_audio_b64) == wav.read_bytes()
    info = sf.info(io.BytesIO(wav.read_bytes()))
    assert cmd.reply_duration_ms == pytest.approx(1000 * info.duration, abs=0.1)


async def _client_replies(url: str, sid: str, publish: Any, last_id: str) -> list[dict[str, Any]]:
    """Open ``sid``, have the commands published, read until ``last_id``'s reply, end."""
    got: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKENS[0]}"}
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(start_doc(session_id=sid))
        assert json.loads(await ws.recv())["type"] == "ready"
        await asyncio.get_running_loop().run_in_executor(None, publish)
        while not any(m.get("command_id") == last_id for m in got):
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        await ws.send(json.dumps({"type": "end"}))
        async for raw in ws:
            got.append(json.loads(raw))
    return got


def test_the_gateway_passes_a_sessions_replies_to_its_client_once(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    sid, other = f"gw-{uuid.uuid4().hex[:6]}", f"gx-{uuid.uuid4().hex[:6]}"
    audio = base64.b64encode(b"RIFF-not-really-a-wav-but-opaque-bytes").decode()
    spoken = {"reply_text": "timer set for five minutes", "reply_duration_ms": 1500.0}
    first = replace(command(sid, 2), reply_audio_b64=audio, **spoken)
    second = replace(command(sid, 5, intent="stop", slots={}), reply_audio_b64=audio[::-1],
                     reply_text="stopped", reply_duration_ms=600.0)  # fmt: skip
    commands = [
        command(sid, 1),  # no --speak: no reply audio, nothing for the client
        first,
        replace(first, confidence=0.5),  # the same command again (at-least-once replay)
        replace(first, session_id=other),  # another session's
        second,
    ]

    def publish() -> None:
        producer = DeliveryProducer(kafka_bootstrap, client_id="test-commands")
        for c in commands:
            producer.send(topics.commands, c.key, c.encode())
        producer.deliver_all("commands")
        producer.close()

    with gateway(kafka_bootstrap, topics, tmp_path) as gw:
        got = asyncio.run(_client_replies(gw.ws_url, sid, publish, second.command_id))
        assert gw.metric("events_out_total", type="reply") == 2
    replies = [m for m in got if m["type"] == "reply"]
    assert [(m["command_id"], m["intent"], m["text"], m["audio"]) for m in replies] == [
        (first.command_id, "set_timer", "timer set for five minutes", audio),
        (second.command_id, "stop", "stopped", audio[::-1]),
    ]
    assert replies[0] == {
        "type": "reply", "n": replies[0]["n"], "command_id": f"{sid}/0/2", "channel": 0,
        "utterance": 2, "intent": "set_timer", "slots": {"duration": "five minutes"},
        "text": "timer set for five minutes", "content_type": "audio/wav", "audio": audio,
        "duration_ms": 1500.0,
    }  # fmt: skip
    assert [m["n"] for m in got if "n" in m] == list(range(1, len(replies) + 2))
    assert got[-1]["type"] == "session_end"
