"""Gaps the chaos suite found (issue 13), now fixed, each pinned on the pure cores (no
broker) as a regression test:

- a forged copy of a seq the jitter buffer holds (same seq, another position, length or
  rate) was counted as a duplicate and dropped without a dead letter; it is now a
  ``ValidationError`` (a dead letter) and the held copy stays
  (processors/reassembly.py ``JitterBuffer._check_copy``);
- an idle timeout ended the channel without flushing the resampler, so a vanished
  producer's last final lacked the last received audio of a non-16 kHz stream; idle now
  flushes as end of stream does (processors/stream_segmenter.py ``finish_idle``).

``plan.py`` may still steer the pipeline run around them; that only narrows what the
run injects."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import soundfile as sf

from streamscribe.core.errors import ValidationError
from streamscribe.core.settings import Settings
from streamscribe.processors.reassembly import Chunk, JitterBuffer, JitterConfig
from streamscribe.processors.segmenter_types import SegmenterConfig
from streamscribe.processors.stream_segmenter import (
    Arrival,
    ChannelBatch,
    ChannelKey,
    Stamps,
    StreamSegmenter,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.utterances import UtteranceMessage
from tests.chaos.plan import HOUR_16K

pytestmark = pytest.mark.chaos


def _chunk(seq: int, position: int | None = None) -> Chunk:
    pos = 1600 * seq if position is None else position
    return Chunk(seq=seq, position=pos, n_samples=1600, sample_rate=16000)


def test_a_forged_copy_of_a_held_seq_is_rejected() -> None:
    jb = JitterBuffer()
    jb.push(_chunk(0))
    jb.push(_chunk(2))  # seq 1 missing: seq 2 is held
    with pytest.raises(ValidationError, match="contradicts"):
        jb.push(_chunk(2, position=2 * 1600 + 6 * HOUR_16K))


def _last_final(core: StreamSegmenter, chunks: list, *, idle: bool) -> UtteranceMessage:
    key = ChannelKey("s", 0)
    arrivals = [Arrival(c, Stamps(0, 0, 0), None, i) for i, c in enumerate(chunks)]
    [res] = core.process([ChannelBatch(key, None, arrivals)])
    finals = [m for m, _ in res.utterances if m.kind == "final"]
    if idle:
        done = core.finish_idle(key, res.state, None, len(chunks))
        finals += [m for m, _ in done.utterances if m.kind == "final"]
    return finals[-1]


def test_an_idle_timeout_keeps_all_the_audio_received(assets: Path, tmp_path: Path) -> None:
    samples, rate = sf.read(str(assets / "two_cities.wav"), dtype="int16")
    assert rate == 48000
    path = tmp_path / "cut.wav"
    sf.write(str(path), samples[: int(2.0 * rate)], rate, subtype="PCM_16")  # cut mid-speech
    chunks = list(chunk_channel(read_audio(path), 0, session_id="s", role="r"))
    settings = Settings()
    core = StreamSegmenter(
        SileroVad(), SegmenterConfig.from_settings(settings), JitterConfig.from_settings(settings)
    )
    ended = _last_final(core, chunks, idle=False)
    cut = [*chunks[:-1], dataclasses.replace(chunks[-1], end_of_stream=False)]
    idle = _last_final(core, cut, idle=True)
    assert (ended.reason, idle.reason) == ("end_of_stream", "idle")
    assert idle.end_sample == ended.end_sample
