"""Subcommands of the services, registered on the one ``streamscribe`` parser.

Each ``add_*`` declares one command's options and its handler; handlers import their
service lazily so that ``streamscribe --help`` loads no model and no Kafka client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from streamscribe.core.errors import UsageError
from streamscribe.core.settings import Settings

SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]


# ------------------------------------------------------------------------------- produce
def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.file_producer import ProduceJob, run_produce
    from streamscribe.schemas.topics import Topics

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
    )
    report = run_produce(
        job,
        settings.bootstrap,
        Topics(settings.topic_prefix).audio,
        linger_ms=settings.linger_ms,
        flush_timeout_s=settings.flush_timeout_s,
    )
    for line in report.lines():
        print(line)
    for sid in report.sessions[:8]:
        print(f"session {sid}: {report.chunks_by_session.get(sid, 0)} chunks")
    if report.delivery.failed or report.delivery.undelivered:
        print(
            f"error: {report.delivery.failed + report.delivery.undelivered} messages not delivered",
            file=sys.stderr,
        )
        return 1
    return 0


def add_produce(sub: SubParsers) -> None:
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
    p.set_defaults(handler=cmd_produce)


# ----------------------------------------------------------------------------------- mic
def cmd_mic(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.producers.mic import list_devices, run_mic
    from streamscribe.schemas.topics import Topics

    if args.list_devices:
        print(list_devices())
        return 0
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    print("recording; press Ctrl-C to end the session", file=sys.stderr)
    report = run_mic(
        settings.bootstrap,
        Topics(settings.topic_prefix).audio,
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
    return 1 if d.failed else 0


def add_mic(sub: SubParsers) -> None:
    p = sub.add_parser("mic", help="a microphone session")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--device", help="input device index or name")
    p.add_argument("--session-id")
    p.add_argument("--rate", type=int, default=16000, help="capture sample rate")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.set_defaults(handler=cmd_mic)


# ---------------------------------------------------------------------------------- tail
def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.schemas.topics import Topics
    from streamscribe.tail import TailOptions, run_tail

    opts = TailOptions(
        topic=args.topic,
        from_beginning=args.from_beginning,
        session=args.session,
        max_messages=args.max_messages,
        idle_timeout_s=args.idle_timeout,
    )
    run_tail(settings.bootstrap, opts, Topics(settings.topic_prefix))
    return 0


def add_tail(sub: SubParsers) -> None:
    p = sub.add_parser("tail", help="decoded messages of a topic as JSON lines")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--session", help="only this session id (the key)")
    p.add_argument("--max-messages", type=int)
    p.add_argument("--idle-timeout", type=float, help="exit after S seconds with no message")
    p.set_defaults(handler=cmd_tail)


# -------------------------------------------------------------------------------- worker
def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.processors.worker import STAGES, run_worker, spawn_workers

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    settings = settings.with_overrides(group_id=args.group_id, instance_id=args.instance_id)
    if args.workers and args.workers > 1 and args.instance_index is None:
        argv = [a for a in sys.argv[1:] if not a.startswith("--workers")]
        if "--workers" in sys.argv:
            i = sys.argv.index("--workers")
            argv = sys.argv[1:i] + sys.argv[i + 2 :]
        return spawn_workers(args.workers, argv)
    instance = settings.instance_id
    if instance and args.instance_index is not None:
        instance = f"{instance}-{args.instance_index}"
    run_worker(
        settings,
        stages=stages,
        instance=instance,
        from_earliest=args.from_earliest,
        log_level=args.worker_log_level,
    )
    return 0


def add_worker(sub: SubParsers) -> None:
    p = sub.add_parser("worker", help="run the faust stream processors")
    p.add_argument("--group-id", help="consumer group = faust app id (default from settings)")
    p.add_argument(
        "--from-earliest",
        action="store_true",
        help="a new group starts at the earliest offset (re-process history)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes to run")
    p.add_argument("--stages", help="comma list of stages (default segmenter,recognizer)")
    p.add_argument(
        "--instance-id",
        help="static group membership id, unique per worker (e.g. the pod name): a worker"
        " restarted with the same id resumes at once instead of after the session timeout;"
        " with --workers N, worker i gets ID-i",
    )
    p.add_argument("--instance-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-log-level", default="info", help="faust log level (default info)")
    p.set_defaults(handler=cmd_worker)


# ------------------------------------------------------------------------ segment (offline)
def cmd_segment(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from streamscribe.processors.segmenter import SegmenterConfig, segment_file

    config = SegmenterConfig.from_settings(settings)
    for path in args.files:
        _check_audio_path(path)
        for span in segment_file(path, config=config, chunk_ms=args.chunk_ms):
            d = span.to_dict()
            if args.format == "json":
                print(json.dumps(d))
            else:
                print(f"{d['file']}\tch{d['channel']}\t{d['start_ms']:.0f}\t{d['end_ms']:.0f}")
    return 0


def add_segment(sub: SubParsers) -> None:
    p = sub.add_parser("segment", help="the segmenter core offline: utterances of files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.set_defaults(handler=cmd_segment)


def _check_audio_path(path: str) -> None:
    from streamscribe.producers.source import read_audio

    read_audio(path)  # one-line ProducerError for a missing or unreadable file


# --------------------------------------------------------------------- transcribe (offline)
def cmd_transcribe(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.processors.asr import MoonshineAsr
    from streamscribe.processors.offline import format_json_lines, format_text, transcribe_file
    from streamscribe.processors.segmenter import SegmenterConfig
    from streamscribe.processors.vad import SileroVad

    for path in args.files:
        _check_audio_path(path)
    asr = MoonshineAsr.load(intra_threads=settings.ort_intra_threads)
    vad = SileroVad(intra_op_threads=settings.ort_intra_threads)
    config = SegmenterConfig.from_settings(settings)
    for path in args.files:
        results = transcribe_file(path, asr=asr, config=config, vad=vad)
        out = format_json_lines(results) if args.format == "json" else format_text(results)
        if out:
            print(out)
    return 0


def add_transcribe(sub: SubParsers) -> None:
    p = sub.add_parser("transcribe", help="segment and transcribe files offline (no Kafka)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_transcribe)


def add_consumers(sub: SubParsers) -> None:
    from streamscribe.consumers.commands import register

    register(sub)


REGISTRARS: list[Callable[[SubParsers], None]] = [
    add_produce,
    add_mic,
    add_tail,
    add_worker,
    add_segment,
    add_transcribe,
    add_consumers,
]
