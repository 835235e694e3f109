"""The WebSocket protocol of the gateway: messages, close codes, frame sizes (pure).

Every text message is one JSON object with a ``type``; each type has a JSON Schema in
``schemas/json/gateway_<type>.schema.json`` (``docs/websocket.md`` is the prose). Audio
travels only as binary frames: the interleaved samples of every channel, PCM16
little-endian (2 bytes) or µ-law (1 byte) per sample.

Example::

    >>> start = parse_client_message('{"type": "start", "sample_rate": 16000, '
    ...                              '"encoding": "pcm_s16le"}')
    >>> start.roles, frame_bytes(start)
    (('mic',), 2)
    >>> CLOSE_REASONS[CLOSE_UNAUTHORIZED]
    'unauthorized'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from streamscribe.core.errors import ContractError, GatewayProtocolError
from streamscribe.schemas.audio import DEFAULT_STEREO_ROLES, ROLE_MIC
from streamscribe.schemas.json_codec import decode_json
from streamscribe.schemas.pcm import bytes_per_sample

# Close codes (RFC 6455 section 7.4: 4000-4999 are the application's).
CLOSE_NORMAL: Final = 1000  # session complete: every final was sent
CLOSE_GOING_AWAY: Final = 1001  # the gateway is shutting down
CLOSE_INTERNAL: Final = 1011  # the gateway failed (Kafka); the session is closed
CLOSE_BAD_REQUEST: Final = 4400  # first message not a valid start
CLOSE_UNAUTHORIZED: Final = 4401  # no token or a wrong token
CLOSE_FORBIDDEN_ORIGIN: Final = 4403  # Origin not allowed
CLOSE_START_TIMEOUT: Final = 4408  # no start message in time
CLOSE_SESSION_BUSY: Final = 4409  # session id held by another live connection
CLOSE_SESSION_TOO_LONG: Final = 4410  # audio beyond gateway_max_session_s (finals sent first)
CLOSE_FRAME_TOO_LARGE: Final = 4413  # a binary frame over gateway_max_frame_bytes
CLOSE_TOKEN_LIMIT: Final = 4429  # sessions per token exceeded
CLOSE_GATEWAY_FULL: Final = 4503  # concurrent sessions per gateway exceeded

CLOSE_REASONS: Final = {
    CLOSE_NORMAL: "complete",
    CLOSE_GOING_AWAY: "gateway_shutdown",
    CLOSE_INTERNAL: "internal_error",
    CLOSE_BAD_REQUEST: "bad_request",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_FORBIDDEN_ORIGIN: "forbidden_origin",
    CLOSE_START_TIMEOUT: "start_timeout",
    CLOSE_SESSION_BUSY: "session_busy",
    CLOSE_SESSION_TOO_LONG: "session_too_long",
    CLOSE_FRAME_TOO_LARGE: "frame_too_large",
    CLOSE_TOKEN_LIMIT: "too_many_sessions_for_token",
    CLOSE_GATEWAY_FULL: "gateway_full",
}

# Error codes of the ``error`` message (the session goes on).
ERR_BAD_MESSAGE: Final = "bad_message"
ERR_BAD_FRAME: Final = "bad_frame"
ERR_DUPLICATE_START: Final = "duplicate_start"
ERR_AUDIO_AFTER_END: Final = "audio_after_end"
ERR_SESSION_TOO_LONG: Final = "session_too_long"

CLIENT_TYPES: Final = ("start", "end")


@dataclass(frozen=True)
class Refusal:
    """Why the gateway closes a connection: a close code and a one-line reason."""

    code: int
    detail: str = ""

    @property
    def reason(self) -> str:
        """The close frame's reason (at most 123 bytes by RFC 6455)."""
        text = CLOSE_REASONS.get(self.code, "closed")
        return f"{text}: {self.detail}"[:123] if self.detail else text


@dataclass(frozen=True)
class StartMessage:
    sample_rate: int
    encoding: str
    channels: int = 1
    roles: tuple[str, ...] = (ROLE_MIC,)
    session_id: str | None = None
    resume_from: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndMessage:
    pass


def default_roles(channels: int) -> tuple[str, ...]:
    if channels == 1:
        return (ROLE_MIC,)
    if channels == 2:
        return DEFAULT_STEREO_ROLES
    return tuple(f"channel{i}" for i in range(channels))


def parse_client_message(text: str | bytes) -> StartMessage | EndMessage:
    """A client's text message; :class:`GatewayProtocolError` (``bad_message``) if bad."""
    data = text.encode() if isinstance(text, str) else text
    try:
        kind = json.loads(data).get("type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise GatewayProtocolError("not a JSON object with a type") from None
    if kind not in CLIENT_TYPES:
        raise GatewayProtocolError(f"unknown message type {kind!r}; expected start or end")
    try:
        doc = decode_json(data, f"gateway_{kind}")
    except ContractError as exc:
        raise GatewayProtocolError(str(exc)) from None
    if kind == "end":
        return EndMessage()
    channels = int(doc.get("channels", 1))
    roles = tuple(doc.get("roles") or default_roles(channels))
    if len(roles) != channels:
        raise GatewayProtocolError(f"{len(roles)} roles for {channels} channels")
    if doc.get("resume_from") is not None and not doc.get("session_id"):
        raise GatewayProtocolError("resume_from needs a session_id")
    return StartMessage(
        sample_rate=int(doc["sample_rate"]),
        encoding=str(doc["encoding"]),
        channels=channels,
        roles=roles,
        session_id=doc.get("session_id"),
        resume_from=doc.get("resume_from"),
        metadata=dict(doc.get("metadata") or {}),
    )


def frame_bytes(start: StartMessage) -> int:
    """Bytes of one sample frame (every channel once): binary frames are multiples of it."""
    return bytes_per_sample(start.encoding) * start.channels


def encode(doc: dict[str, Any]) -> str:
    """A server message as the text frame sent."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
