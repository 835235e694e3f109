"""Spoken replies of ``streamscribe assistant --speak``: a sentence per command, via espeak-ng.

:func:`reply_text` builds the sentence from the command's intent and slots (pure);
:class:`Speaker` synthesises it with espeak-ng (Debian's ``espeak-ng``, installed by
``scripts/system-deps.sh``) into ``<speak_dir>/<session>_<channel>_<utterance>.wav`` and
puts it into the command: ``reply_text``, ``reply_audio_b64`` (that WAV, base64) and
``reply_duration_ms``, so that a reader of the commands topic (the WebSocket gateway:
its ``reply`` message) can play it back to the speaker without sharing a disk.

A synthesis that fails (espeak-ng exits non-zero or times out) is logged; the command is
published with its ``reply_text`` and no audio — a reply never holds a command back.

Example::

    >>> reply_text("set_timer", {"duration": "5 minutes"})
    'timer set for 5 minutes'
    >>> reply_text("call", {"person": "the supervisor"})
    'calling the supervisor'
    >>> reply_text("remind", {"task": "buy milk", "time": "noon"})
    'remind: buy milk, noon'
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
import wave
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Final

from streamscribe.core.errors import UsageError
from streamscribe.schemas.commands import CommandEvent

log = logging.getLogger(__name__)

ESPEAK: Final = "espeak-ng"
SYNTH_TIMEOUT_S: Final = 20.0
DEFAULT_VOICE: Final = "en"
#: The sentence per intent of the shipped intents file; ``{slot}`` is the words heard there.
REPLIES: Final[Mapping[str, str]] = {
    "set_timer": "timer set for {duration}",
    "cancel_timer": "timer cancelled",
    "call": "calling {person}",
    "transfer": "transferring you to {department}",
    "note": "noted: {note}",
    "time": "it is {clock}",
    "stop": "stopped",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def reply_text(intent: str, slots: Mapping[str, str], *, now: datetime | None = None) -> str:
    """The sentence that answers ``intent`` with ``slots`` (see :data:`REPLIES`).

    An intent of another intents file is answered with its name and its slots' words;
    ``time`` says the clock (``now``, default the local time).

    >>> reply_text("time", {}, now=datetime(2026, 1, 1, 9, 5))
    'it is 9:05'
    >>> reply_text("open_door", {})
    'open door'
    """
    template = REPLIES.get(intent)
    if template is not None:
        t = now or datetime.now()
        clock = f"{t.hour}:{t.minute:02d}"
        values = {**{k: v.strip() for k, v in slots.items()}, "clock": clock}
        try:
            return " ".join(template.format(**values).split())
        except KeyError:  # the same intent name with other slots (another intents file)
            pass
    words = intent.replace("_", " ").strip()
    heard = ", ".join(v.strip() for v in slots.values() if v.strip())
    return f"{words}: {heard}" if heard else words


def wav_duration_ms(data: bytes | Path) -> float:
    """Length of a PCM WAV (bytes or file) in milliseconds."""
    import io

    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with wave.open(src, "rb") as w:
        return 1000.0 * w.getnframes() / w.getframerate()


def reply_file_name(command: CommandEvent) -> str:
    """``<session>_<channel>_<utterance>.wav``, the session id made safe for a file name
    (runs of characters other than letters, digits, ``.``, ``_``, ``-`` as ``_``; no
    leading dot).

    >>> reply_file_name(CommandEvent("call/42", 0, "", 3, "stop", {}, "stop", 1.0, 0, 1))
    'call_42_0_3.wav'
    """
    safe = _UNSAFE.sub("_", command.session_id).lstrip(".") or "_"
    return f"{safe}_{command.channel}_{command.utterance}.wav"


class Speaker:
    """Answers commands with espeak-ng WAVs in ``out_dir`` (see the module docstring)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        voice: str = DEFAULT_VOICE,
        espeak: str | None = None,
        embed_audio: bool = True,
    ) -> None:
        found = espeak or shutil.which(ESPEAK)
        if found is None:
            raise UsageError("--speak needs espeak-ng (scripts/system-deps.sh installs it)")
        self.espeak = found
        self.voice = voice
        self.out_dir = Path(out_dir)
        self.embed_audio = embed_audio
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--speak-dir {self.out_dir}: {exc.strerror or exc}") from exc
        self.spoken = 0
        self.failed = 0

    def synthesize(self, text: str, path: Path) -> bytes:
        """espeak-ng ``text`` into the WAV ``path``; its bytes."""
        # "--" ends the options: a heard word starting with "-" is text, not a flag.
        args = [self.espeak, "-v", self.voice, "-w", str(path), "--", text]
        subprocess.run(args, check=True, timeout=SYNTH_TIMEOUT_S, capture_output=True)
        return path.read_bytes()

    def answer(self, command: CommandEvent) -> CommandEvent:
        """``command`` with its reply: text always, the WAV unless espeak-ng failed."""
        text = reply_text(command.intent, command.slots)
        path = self.out_dir / reply_file_name(command)
        try:
            audio = self.synthesize(text, path)
            duration = wav_duration_ms(audio)
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
            self.failed += 1
            log.warning("reply to %s not spoken: %s", command.command_id, exc)
            return replace(command, reply_text=text)
        self.spoken += 1
        log.info("reply to %s: %s (%.0f ms)", command.command_id, path, duration)
        return replace(
            command,
            reply_text=text,
            reply_audio_b64=base64.b64encode(audio).decode() if self.embed_audio else "",
            reply_duration_ms=round(duration, 1),
        )


__all__ = ["REPLIES", "Speaker", "reply_file_name", "reply_text", "wav_duration_ms"]
