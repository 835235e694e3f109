"""``streamscribe gateway`` (the WebSocket edge) and ``streamscribe stream`` (its client).

Example::

    STREAMSCRIBE_GATEWAY_TOKENS=s3cret streamscribe gateway --port 8765
    #   the live page: http://127.0.0.1:8765/?token=s3cret
    streamscribe stream beckett.wav --url ws://127.0.0.1:8765/ws --token s3cret
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

from streamscribe.cli.common import EXIT_INCOMPLETE, EXIT_OK, SubParsers
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.gateway.admission import Tokens
    from streamscribe.producers.gateway.server import Gateway, GatewayOptions

    settings = settings.with_overrides(gateway_host=args.host, gateway_port=args.port)
    sources = [settings.gateway_tokens]
    if args.tokens_file:
        sources.append(Path(args.tokens_file).read_text())
    tokens = Tokens.parse(*sources)
    if not tokens.tokens and not args.insecure_no_auth:
        raise UsageError(
            "no token configured: set STREAMSCRIBE_GATEWAY_TOKENS or --tokens-file "
            "(or --insecure-no-auth to accept anyone)"
        )
    if tokens.tokens and args.insecure_no_auth:
        raise UsageError("--insecure-no-auth with tokens configured: choose one")
    origins = tuple(o.strip() for o in (args.origins or settings.gateway_origins).split(","))
    options = GatewayOptions(tokens=tokens, origins=tuple(o for o in origins if o))

    def ready(url: str) -> None:
        print(f"gateway listening on {url} (page: {url}/?token=...)", flush=True)

    asyncio.run(Gateway(settings, options).serve(on_ready=ready))
    return EXIT_OK


def _mmss(ms: float) -> str:
    s = int(ms // 1000)
    return f"{s // 60:02d}:{s % 60:02d}"


class Printer:
    """Partials overwritten in place on a terminal; finals with their times."""

    def __init__(self, tty: bool, replies_dir: Path | None = None) -> None:
        self.tty = tty
        self.partial = False
        self.replies_dir = replies_dir

    def __call__(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "ready":
            verb = "resumed" if msg["resumed"] else "session"
            print(f"{verb} {msg['session_id']}", file=sys.stderr)
        elif msg["type"] == "transcript":
            ev = msg["event"]
            if ev["kind"] == "partial":
                if self.tty:
                    sys.stdout.write(f"\r\x1b[2K… {ev['text']}")
                    sys.stdout.flush()
                    self.partial = True
                return
            if self.partial:
                sys.stdout.write("\r\x1b[2K")
                self.partial = False
            print(f"[{_mmss(ev['start_ms'])}] {ev['role']}: {ev['text']}", flush=True)
        elif msg["type"] == "reply":
            saved = ""
            if self.replies_dir is not None and msg.get("audio"):
                self.replies_dir.mkdir(parents=True, exist_ok=True)
                name = str(msg["command_id"]).replace("/", "_") + ".wav"
                (self.replies_dir / name).write_bytes(base64.b64decode(msg["audio"]))
                saved = f" ({self.replies_dir / name})"
            print(f"reply to {msg['intent']}: {msg['text']}{saved}", flush=True)
        elif msg["type"] == "error":
            print(f"gateway: {msg['code']}: {msg['message']}", file=sys.stderr)


def cmd_stream(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.gateway.client import StreamJob, stream

    if not args.mic and not args.file:
        raise UsageError("give a FILE or --mic")
    job = StreamJob(
        path=None if args.mic else args.file,
        url=args.url,
        token=args.token,
        pace=args.pace,
        session_id=args.session_id,
        chunk_ms=args.chunk_ms,
        mic_seconds=args.seconds,
    )
    replies = Path(args.replies_dir) if args.replies_dir else None
    report = asyncio.run(stream(job, Printer(sys.stdout.isatty(), replies)))
    lat = sorted(report.latencies_ms)
    median = f", end of speech → final median {lat[len(lat) // 2]:.0f} ms" if lat else ""
    print(
        f"session {report.session_id}: {len(report.finals)} finals, {report.partials} partials"
        f"{median}",
        file=sys.stderr,
    )
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


def register(sub: SubParsers) -> None:
    """Add ``gateway`` and ``stream``."""
    p = sub.add_parser("gateway", help="the WebSocket edge: sessions, live page, metrics")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8765)")
    p.add_argument("--tokens-file", help="bearer tokens, one per line (# comments)")
    p.add_argument("--origins", help="browser Origins allowed besides the page's own, comma list")
    p.add_argument("--insecure-no-auth", action="store_true", help="accept clients without a token")
    p.set_defaults(handler=cmd_gateway)

    p = sub.add_parser("stream", help="stream a file (or the microphone) through a gateway")
    p.add_argument("file", nargs="?", metavar="FILE", help="WAV/FLAC file (PCM16 or µ-law)")
    p.add_argument("--url", required=True, help="the gateway, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--pace", default="realtime", choices=("realtime", "asap"))
    p.add_argument("--session-id", help="session id (default: chosen by the gateway)")
    p.add_argument("--chunk-ms", type=int, help="fixed frame duration (default: the hints)")
    p.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    p.add_argument("--seconds", type=float, help="with --mic: stop after this many seconds")
    p.add_argument(
        "--replies-dir", help="write the assistant's spoken replies here (COMMAND_ID.wav)"
    )
    p.set_defaults(handler=cmd_stream)
