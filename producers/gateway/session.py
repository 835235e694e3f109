"""One gateway session: audio frames in, contract chunks out; its events out, in order (pure).

No network, no Kafka: :meth:`GatewaySession.frame` turns a binary frame into one
``AudioChunk`` per channel (``seq`` and ``position`` continue across reconnects, because
the session, not the socket, owns them); :meth:`GatewaySession.transcript`,
:meth:`GatewaySession.reply` (the assistant's spoken answer to a command) and
:meth:`GatewaySession.session_event` take what the pipeline says about the session and
append what the client must see to :attr:`GatewaySession.log`, numbered from 1. A socket
reads the log from a cursor, so a client that reconnects with ``resume_from=n`` gets every
event after ``n``, and the same event is never numbered twice.

Order and replays: a line's partials are passed on only with a higher revision than the
last one sent, never after its final; a final is passed on once (a worker restarted
mid-session may publish a line twice). The session is complete when the client has ended
it, every channel has a ``session_end`` (or ``idle_timeout``) event, and every utterance
that had a ``speech_end`` has its final.

Example::

    >>> from streamscribe.producers.gateway.protocol import StartMessage
    >>> s = GatewaySession("s1", StartMessage(16000, "pcm_s16le"), token_id="t")
    >>> [(c.seq, c.position, c.n_samples) for c in s.frame(b"\\x00\\x00" * 160, now_us=1)]
    [(0, 0, 160)]
    >>> s.frame(b"\\x00\\x00" * 160, now_us=2)[0].position
    160
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamscribe.core.errors import GatewayProtocolError
from streamscribe.producers.gateway.protocol import ERR_BAD_FRAME, StartMessage, frame_bytes
from streamscribe.schemas.audio import AudioChunk, SessionMeta
from streamscribe.schemas.commands import CommandEvent
from streamscribe.schemas.events import EVENT_IDLE_TIMEOUT, EVENT_SESSION_END, EVENT_SPEECH_END
from streamscribe.schemas.pcm import PCM_MULAW
from streamscribe.schemas.transcripts import KIND_FINAL

SOURCE = "websocket"


@dataclass
class LineView:
    """What the client has been sent of one line (channel, utterance)."""

    revision: int = -1
    final: bool = False


@dataclass
class GatewaySession:
    """The state of one session held by a gateway (see the module docstring)."""

    session_id: str
    start: StartMessage
    token_id: str
    seq: int = 0
    samples: int = 0  # per channel
    ended: bool = False  # the client said end (or a limit ended it): eos published
    log: list[dict[str, Any]] = field(default_factory=list)
    lines: dict[tuple[int, int], LineView] = field(default_factory=dict)
    spoken: set[tuple[int, int]] = field(default_factory=set)  # speech_end seen
    channels_ended: set[int] = field(default_factory=set)
    completed: bool = False  # session_end appended to the log
    replied: set[str] = field(default_factory=set)  # command ids whose reply was sent

    @property
    def audio_s(self) -> float:
        return self.samples / self.start.sample_rate

    @property
    def finals(self) -> int:
        return sum(1 for v in self.lines.values() if v.final)

    def _chunk(self, channel: int, payload: bytes, n: int, now_us: int, eos: bool) -> AudioChunk:
        s = self.start
        meta = None
        if self.seq == 0:
            meta = SessionMeta(
                source=s.metadata.get("source", SOURCE),
                language=s.metadata.get("language", "en"),
                call_id=s.metadata.get("call_id"),
                channels=s.channels,
                roles=s.roles,
            )
        return AudioChunk(
            session_id=self.session_id,
            channel=channel,
            role=s.roles[channel],
            seq=self.seq,
            position=self.samples,
            n_samples=n,
            sample_rate=s.sample_rate,
            encoding=s.encoding,
            captured_at_us=now_us,
            payload=payload,
            end_of_stream=eos,
            session_meta=meta,
        )

    def frame(self, data: bytes, *, now_us: int) -> list[AudioChunk]:
        """One binary frame → one chunk per channel; ``bad_frame`` if its size is wrong."""
        step = frame_bytes(self.start)
        if not data or len(data) % step:
            raise GatewayProtocolError(
                f"frame of {len(data)} bytes is not a whole number of {step}-byte sample frames",
                code=ERR_BAD_FRAME,
            )
        n = len(data) // step
        chunks = [
            self._chunk(ch, payload, n, now_us, False)
            for ch, payload in enumerate(self._split(data))
        ]
        self.seq += 1
        self.samples += n
        return chunks

    def _split(self, data: bytes) -> list[bytes]:
        c = self.start.channels
        if c == 1:
            return [bytes(data)]
        dtype = np.uint8 if self.start.encoding == PCM_MULAW else np.dtype("<i2")
        samples = np.frombuffer(data, dtype=dtype).reshape(-1, c)
        return [samples[:, ch].tobytes() for ch in range(c)]

    def finish(self, *, now_us: int) -> list[AudioChunk]:
        """The end of the stream: an empty ``end_of_stream`` chunk per channel (once)."""
        if self.ended:
            return []
        self.ended = True
        if self.seq == 0:  # nothing was published: nothing to end
            self.channels_ended = set(range(self.start.channels))
            return []
        chunks = [self._chunk(ch, b"", 0, now_us, True) for ch in range(self.start.channels)]
        self.seq += 1
        return chunks

    # ------------------------------------------------------------------ downstream
    def _append(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc["n"] = len(self.log) + 1
        self.log.append(doc)
        return doc

    def transcript(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A ``TranscriptEvent`` of this session → the log entry sent, or None (replayed)."""
        key = (int(event["channel"]), int(event["utterance"]))
        view = self.lines.setdefault(key, LineView())
        if view.final:
            return None
        if event["kind"] == KIND_FINAL:
            view.final = True
        elif int(event["revision"]) <= view.revision:
            return None
        view.revision = int(event["revision"])
        return self._append({"type": "transcript", "event": event})

    def reply(self, command: CommandEvent) -> dict[str, Any] | None:
        """A spoken reply of the assistant (``assistant --speak``) → the log entry sent, or
        None: a command without reply audio, or one already sent (a replayed command)."""
        if not command.reply_audio_b64 or command.command_id in self.replied:
            return None
        self.replied.add(command.command_id)
        return self._append(
            {
                "type": "reply",
                "command_id": command.command_id,
                "channel": command.channel,
                "utterance": command.utterance,
                "intent": command.intent,
                "slots": dict(command.slots),
                "text": command.reply_text,
                "content_type": "audio/wav",
                "audio": command.reply_audio_b64,
                "duration_ms": command.reply_duration_ms,
            }
        )

    def session_event(self, kind: str, channel: int, utterance: int | None) -> None:
        if kind == EVENT_SPEECH_END and utterance is not None:
            self.spoken.add((channel, utterance))
        elif kind in (EVENT_SESSION_END, EVENT_IDLE_TIMEOUT):
            self.channels_ended.add(channel)

    @property
    def all_finals_in(self) -> bool:
        return (
            self.ended
            and self.channels_ended >= set(range(self.start.channels))
            and all(self.lines.get(k, LineView()).final for k in self.spoken)
        )

    def complete(self, *, complete: bool = True) -> dict[str, Any] | None:
        """Append ``session_end`` (once): ``complete`` False when the wait ran out."""
        if self.completed:
            return None
        self.completed = True
        return self._append(
            {
                "type": "session_end",
                "session_id": self.session_id,
                "finals": self.finals,
                "complete": complete,
                "audio_s": round(self.audio_s, 3),
            }
        )
