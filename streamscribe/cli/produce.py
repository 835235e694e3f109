"""``streamscribe produce FILE...`` (file, replay, load generator) and ``streamscribe mic``.

Example::

    streamscribe produce two_cities.wav --pace realtime
    streamscribe produce call.wav --roles agent,customer --sessions 20 --stagger 0.5
    streamscribe mic --device 1 --seconds 10
"""

from __future__ import annotations

import argparse
import sys

from streamscribe.cli.common import EXIT_INCOMPLETE, EXIT_OK, SubParsers
from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings

SESSIONS_LISTED = 8


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.file_producer import ProduceJob, run_produce

    _check_session_id(args.session_id)
    if args.sessions is not None and args.sessions < 1:
        raise UsageError(f"--sessions {args.sessions}: must be at least 1")

    job = ProduceJob(
        files=args.files,
        session_id=args.session_id,
        chunk_ms=args.chunk_ms,
        pace=args.pace,
        roles=tuple(r.strip() for r in args.roles.split(",")) if args.roles else None,
        sessions=args.sessions,
        stagger_s=args.stagger,
        inject=args.inject,
        seed=args.seed,
        encoding=args.encoding,
        language=args.language,
        call_id=args.call_id,
        live=args.live,
    )
    report = run_produce(job, settings)
    for line in report.lines():
        print(line)
    for sid in report.sessions[:SESSIONS_LISTED]:
        print(f"session {sid}: {report.chunks_by_session.get(sid, 0)} chunks")
    missing = report.delivery.failed + report.delivery.undelivered
    if missing:
        print(f"error: {missing} messages not delivered", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _check_session_id(session_id: str | None) -> None:
    """An explicit session id must be printable text (it keys everything downstream)."""
    if session_id is None:
        return
    if not session_id.strip():
        raise UsageError("--session-id: must not be empty (leave it out for a generated id)")
    if not session_id.isprintable():
        raise UsageError(f"--session-id {session_id!r}: control characters are not allowed")


def cmd_mic(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.mic import list_devices, run_mic

    _check_session_id(args.session_id)
    if args.list_devices:
        print(list_devices())
        return EXIT_OK
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    print("recording; press Ctrl-C to end the session", file=sys.stderr)
    report = run_mic(
        settings,
        session_id=args.session_id,
        device=device,
        sample_rate=args.rate,
        chunk_ms=args.chunk_ms,
        seconds=args.seconds,
    )
    d = report.delivery
    print(
        f"session {report.session_id}: {report.chunks} chunks, sent {d.sent}, "
        f"delivered {d.delivered}, failed {d.failed}, overruns {report.overruns}"
    )
    return EXIT_INCOMPLETE if d.failed else EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``produce`` and ``mic``."""
    p = sub.add_parser("produce", help="publish audio files (replay, load generator)")
    p.add_argument("files", nargs="+", metavar="FILE", help="WAV/FLAC/OGG files")
    p.add_argument("--session-id", help="session id (default: file stem + random suffix)")
    p.add_argument("--chunk-ms", type=int, default=100, help="chunk length, 10..1000 ms")
    p.add_argument("--pace", default="asap", help="realtime | asap | xN (default asap)")
    p.add_argument("--roles", help="channel roles, e.g. agent,customer (stereo default)")
    p.add_argument("--sessions", type=int, help="load generator: N concurrent sessions")
    p.add_argument("--stagger", type=float, default=0.0, help="seconds between session starts")
    p.add_argument("--inject", help="faults, e.g. duplicate=0.1,reorder=0.1,drop=0.01")
    p.add_argument("--seed", type=int, default=0, help="seed of --inject")
    p.add_argument("--encoding", help="pcm_s16le | pcm_mulaw | pcm_f32le (default: from file)")
    p.add_argument("--language", default="en")
    p.add_argument("--call-id")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark the sessions watched live (partials) or not (finals only, decoded in"
        " batches); default: live unless --pace asap",
    )
    p.set_defaults(handler=cmd_produce)

    p = sub.add_parser("mic", help="a microphone session")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--device", help="input device index or name")
    p.add_argument("--session-id")
    p.add_argument("--rate", type=int, default=16000, help="capture sample rate")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.set_defaults(handler=cmd_mic)
