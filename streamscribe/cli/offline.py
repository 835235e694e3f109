"""``streamscribe segment FILE...`` and ``streamscribe transcribe FILE...``: the stage
cores offline, no Kafka.

Example::

    streamscribe segment call.wav --format json
    streamscribe transcribe two_cities.wav
"""

from __future__ import annotations

import argparse
import json

from streamscribe.cli.common import EXIT_OK, SubParsers
from streamscribe.core.settings import Settings


def _check_audio_paths(paths: list[str]) -> None:
    """A one-line ``ProducerError`` for a missing or unreadable file, before any work."""
    from streamscribe.producers.source import read_audio

    for path in paths:
        read_audio(path)


def cmd_segment(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.processors.segmenter import SegmenterConfig, segment_file

    config = SegmenterConfig.from_settings(settings)
    for path in args.files:
        _check_audio_paths([path])
        for span in segment_file(path, config=config, chunk_ms=args.chunk_ms):
            d = span.to_dict()
            if args.format == "json":
                print(json.dumps(d))
            else:
                print(f"{d['file']}\tch{d['channel']}\t{d['start_ms']:.0f}\t{d['end_ms']:.0f}")
    return EXIT_OK


def cmd_transcribe(settings: Settings, args: argparse.Namespace) -> int:
    from streamscribe.processors.asr import MoonshineAsr
    from streamscribe.processors.offline import format_json_lines, format_text, transcribe_file
    from streamscribe.processors.postprocess import PostProcessor
    from streamscribe.processors.segmenter import SegmenterConfig
    from streamscribe.processors.vad import SileroVad

    _check_audio_paths(args.files)
    post = PostProcessor.from_settings(settings)
    asr = MoonshineAsr.load(intra_threads=settings.ort_intra_threads)
    vad = SileroVad(intra_op_threads=settings.ort_intra_threads)
    config = SegmenterConfig.from_settings(settings)
    for path in args.files:
        results = transcribe_file(path, asr=asr, config=config, vad=vad, post=post)
        out = format_json_lines(results) if args.format == "json" else format_text(results)
        if out:
            print(out)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """Add ``segment`` and ``transcribe``."""
    p = sub.add_parser("segment", help="the segmenter core offline: utterances of files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.set_defaults(handler=cmd_segment)

    p = sub.add_parser("transcribe", help="segment and transcribe files offline (no Kafka)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_transcribe)
