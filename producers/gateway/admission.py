"""Who may open a session, and the sessions a gateway holds (pure, no network).

- :class:`Tokens` checks a bearer token in constant time (``hmac.compare_digest`` against
  every configured token, no early exit); a token is known by a short hash, never logged.
- :func:`origin_allowed`: a browser's ``Origin`` must be the page's own
  (``http://<Host>``) or in the allow-list; a client without ``Origin`` (not a browser)
  passes.
- :class:`SessionHub` holds the sessions: at most ``max_sessions``, at most
  ``max_per_token`` per token; a session whose socket dropped before ``end`` waits
  ``grace_s`` for its client (:meth:`SessionHub.detach`), then expires. A session id is
  never reused: a ``start`` naming an id this gateway has finished gets a new id.

Example::

    >>> t = Tokens.parse("alpha, beta")
    >>> t.check("beta") is not None, t.check("gamma")
    (True, None)
    >>> origin_allowed("http://evil.example", host="gw:8765", allowed=())
    False
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from streamscribe.producers.gateway.protocol import (
    CLOSE_GATEWAY_FULL,
    CLOSE_SESSION_BUSY,
    CLOSE_TOKEN_LIMIT,
    Refusal,
    StartMessage,
)
from streamscribe.producers.gateway.session import GatewaySession

ANONYMOUS = "anonymous"
RETIRED_KEPT = 10_000  # finished session ids remembered (never reused)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Tokens:
    """The configured bearer tokens; empty = no auth (only with ``--insecure-no-auth``)."""

    tokens: tuple[str, ...] = ()

    @classmethod
    def parse(cls, *sources: str) -> Tokens:
        """Comma- or newline-separated tokens (``#`` starts a comment line)."""
        found: list[str] = []
        for text in sources:
            for line in text.splitlines():
                if line.strip().startswith("#"):
                    continue
                found += [t.strip() for t in line.split(",") if t.strip()]
        return cls(tuple(dict.fromkeys(found)))

    def check(self, presented: str | None) -> str | None:
        """The token's id if ``presented`` is one of ours, else None (constant time)."""
        if not self.tokens:
            return ANONYMOUS
        given = (presented or "").encode()
        match: str | None = None
        for t in self.tokens:
            if hmac.compare_digest(given, t.encode()):
                match = t
        return token_id(match) if match is not None and presented else None


def bearer(authorization: str | None, query_token: str | None) -> str | None:
    """The token presented: ``Authorization: Bearer T``, else the ``token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def origin_allowed(origin: str | None, *, host: str | None, allowed: Iterable[str]) -> bool:
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and origin in (f"http://{host}", f"https://{host}")


@dataclass
class Held:
    session: GatewaySession
    attached: bool = True
    detached_at: float | None = None


@dataclass(frozen=True)
class Admission:
    session: GatewaySession
    resumed: bool


@dataclass
class SessionHub:
    max_sessions: int
    max_per_token: int
    grace_s: float
    held: dict[str, Held] = field(default_factory=dict)
    retired: dict[str, None] = field(default_factory=dict)

    def per_token(self, tid: str) -> int:
        return sum(1 for h in self.held.values() if h.session.token_id == tid)

    def admit(self, start: StartMessage, tid: str) -> Admission | Refusal:
        """Resume a session in grace, or open a new one; a :class:`Refusal` if over a limit."""
        sid = start.session_id
        if sid is not None and sid in self.held:
            h = self.held[sid]
            if h.attached:
                return Refusal(CLOSE_SESSION_BUSY, "session is open on another connection")
            if h.session.token_id != tid:
                return Refusal(CLOSE_SESSION_BUSY, "session belongs to another token")
            h.attached, h.detached_at = True, None
            return Admission(h.session, resumed=True)
        if len(self.held) >= self.max_sessions:
            return Refusal(CLOSE_GATEWAY_FULL, f"{self.max_sessions} sessions open")
        if self.per_token(tid) >= self.max_per_token:
            return Refusal(CLOSE_TOKEN_LIMIT, f"{self.max_per_token} sessions for this token")
        if sid is None or sid in self.retired:
            base = sid or "ws"
            sid = f"{base}-{uuid.uuid4().hex[:8]}"
        session = GatewaySession(sid, start, token_id=tid)
        self.held[sid] = Held(session)
        return Admission(session, resumed=False)

    def detach(self, sid: str, now: float) -> None:
        """The socket dropped before the session was over: keep it for ``grace_s``."""
        h = self.held.get(sid)
        if h is not None:
            h.attached, h.detached_at = False, now

    def expired(self, now: float) -> list[GatewaySession]:
        """Sessions whose grace ran out (released here)."""
        gone = [
            sid
            for sid, h in self.held.items()
            if not h.attached and h.detached_at is not None and now - h.detached_at >= self.grace_s
        ]
        return [self.release(sid) for sid in gone]

    def release(self, sid: str) -> GatewaySession:
        session = self.held.pop(sid).session
        self.retired[sid] = None
        while len(self.retired) > RETIRED_KEPT:
            self.retired.pop(next(iter(self.retired)))
        return session

    def get(self, sid: str) -> GatewaySession | None:
        h = self.held.get(sid)
        return h.session if h is not None else None
