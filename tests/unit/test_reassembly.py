"""Jitter buffer: ordering, duplicates, deterministic gaps, end of stream, state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamscribe.core.errors import SegmenterError
from streamscribe.processors.reassembly import (
    Chunk,
    Gap,
    Item,
    JitterBuffer,
    JitterConfig,
    pack_state,
    unpack_state,
)

RATE = 16000
CHUNK = 1600  # 100 ms


def chunk(seq: int, n: int = CHUNK, eos: bool = False, position: int | None = None) -> Chunk:
    pos = seq * CHUNK if position is None else position
    payload = np.full(n, seq, dtype="<i2").tobytes()
    return Chunk(seq, pos, n, RATE, payload, end_of_stream=eos)


def feed(jb: JitterBuffer, arrivals: list[Chunk]) -> list[Item]:
    out: list[Item] = []
    for c in arrivals:
        out += jb.push(c)
    return out


def seqs(items: list[Item]) -> list[object]:
    return [i.seq if isinstance(i, Chunk) else ("gap", i.position, i.n_samples) for i in items]


def test_in_order_passes_through() -> None:
    jb = JitterBuffer()
    out = feed(jb, [chunk(i) for i in range(5)])
    assert seqs(out) == [0, 1, 2, 3, 4]
    assert jb.next_position == 5 * CHUNK
    assert jb.counters.to_dict() == {
        "chunks_in": 5, "emitted": 5, "reorders": 0, "duplicates": 0, "gaps": 0,
        "gap_samples": 0, "late": 0, "overruns": 0, "misaligned": 0,
    }  # fmt: skip


def test_duplicates_of_emitted_and_held_are_dropped() -> None:
    jb = JitterBuffer()
    out = feed(jb, [chunk(0), chunk(0), chunk(2), chunk(2), chunk(1), chunk(1)])
    assert seqs(out) == [0, 1, 2]
    assert jb.counters.duplicates == 3
    assert jb.counters.reorders == 1


def test_reorders_within_window_give_the_clean_order() -> None:
    rng = random.Random(7)
    clean = [chunk(i) for i in range(60)]
    arrivals = list(clean)
    for i in range(0, 56, 4):  # local shuffles that stay inside the 8-chunk window
        block = arrivals[i : i + 4]
        rng.shuffle(block)
        arrivals[i : i + 4] = block
    jb = JitterBuffer()
    assert feed(jb, arrivals) == clean
    assert jb.counters.gaps == 0 and jb.counters.reorders > 0


def test_window_overrun_declares_gap_with_exact_silence() -> None:
    jb = JitterBuffer(JitterConfig(window_chunks=8, gap_timeout_ms=10_000))
    arrivals = [chunk(i) for i in range(20) if i != 3]
    out = feed(jb, arrivals)
    # seq 3 is given up when the 9th chunk after it (seq 12) overflows the window.
    assert seqs(out)[:4] == [0, 1, 2, ("gap", 3 * CHUNK, CHUNK)]
    assert seqs(out)[4:] == list(range(4, 20))
    gap = out[3]
    assert isinstance(gap, Gap) and gap.degraded and gap.first_missing_seq == 3
    assert gap.missing_count == 1
    assert jb.counters.overruns == 1 and jb.counters.gaps == 1
    assert jb.counters.gap_samples == CHUNK
    # Arriving now, seq 3 is late: dropped and counted, not a duplicate.
    assert jb.push(chunk(3)) == []
    assert jb.counters.late == 1 and jb.counters.duplicates == 0


def test_gap_timeout_in_stream_time() -> None:
    big = 8000  # 500 ms chunks
    jb = JitterBuffer(JitterConfig(window_chunks=8, gap_timeout_ms=1000))
    c = [chunk(i, n=big, position=i * big) for i in range(8)]
    out = feed(jb, [c[0], c[1], c[2], c[4]])
    assert seqs(out) == [0, 1, 2]  # 4 reaches 1000 ms past the hole: not more than the timeout
    out = jb.push(c[5])  # 1500 ms past the hole
    assert seqs(out) == [("gap", 3 * big, big), 4, 5]
    assert jb.counters.overruns == 0


def test_gap_size_comes_from_positions_with_uneven_chunks() -> None:
    sizes = [1600, 800, 2400, 1000, 1600, 1600]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    cs = [chunk(i, n=n, position=p) for i, (n, p) in enumerate(zip(sizes, starts, strict=False))]
    jb = JitterBuffer()
    out = feed(jb, [cs[0], cs[3], cs[4], cs[5]]) + jb.flush()
    assert seqs(out) == [0, ("gap", 1600, 800 + 2400), 3, 4, 5]
    assert out[1].missing_count == 2


def test_end_of_stream_flushes_and_finishes() -> None:
    jb = JitterBuffer()
    out = feed(jb, [chunk(0), chunk(2), chunk(3, n=0, eos=True)])
    assert seqs(out) == [0, ("gap", CHUNK, CHUNK), 2, 3]
    assert jb.finished
    feed(jb, [chunk(1), chunk(2), chunk(9)])
    assert jb.counters.late == 2 and jb.counters.duplicates == 1


def test_end_of_stream_chunk_may_carry_samples() -> None:
    jb = JitterBuffer()
    out = feed(jb, [chunk(0), chunk(1, n=700, eos=True)])
    assert [c.n_samples for c in out if isinstance(c, Chunk)] == [CHUNK, 700]
    assert jb.finished and jb.next_position == CHUNK + 700


def test_flush_declares_every_missing_run() -> None:
    jb = JitterBuffer()
    feed(jb, [chunk(0), chunk(2), chunk(5)])
    out = jb.flush()
    assert seqs(out) == [("gap", CHUNK, CHUNK), 2, ("gap", 3 * CHUNK, 2 * CHUNK), 5]
    assert jb.held == 0 and not jb.finished


def _chaotic_arrivals(seed: int, n: int = 80) -> list[Chunk]:
    """Drops, duplicates and reorders, some beyond the window, ending with an EOS chunk."""
    rng = random.Random(seed)
    arrivals: list[Chunk] = []
    for i in range(n):
        if rng.random() < 0.08:
            continue
        arrivals.append(chunk(i, eos=i == n - 1))
        if rng.random() < 0.1:
            arrivals.append(chunk(i))
    for _ in range(25):
        a = rng.randrange(len(arrivals) - 1)
        b = min(len(arrivals) - 2, a + rng.randrange(1, 12))
        arrivals[a], arrivals[b] = arrivals[b], arrivals[a]
    return arrivals


@pytest.mark.parametrize("seed", range(6))
def test_replay_is_deterministic_and_positions_stay_exact(seed: int) -> None:
    arrivals = _chaotic_arrivals(seed)
    a, b = JitterBuffer(), JitterBuffer()
    out_a, out_b = feed(a, arrivals) + a.flush(), feed(b, arrivals) + b.flush()
    assert out_a == out_b and a.counters == b.counters
    # The emitted items tile the timeline without holes or overlaps.
    pos = 0
    for item in out_a:
        assert item.position == pos
        pos += item.n_samples
    c = a.counters
    assert c.chunks_in == len(arrivals)
    assert c.emitted + c.duplicates + c.late == c.chunks_in


@pytest.mark.parametrize("seed", range(4))
def test_state_round_trip_at_every_point_gives_identical_output(seed: int) -> None:
    arrivals = _chaotic_arrivals(seed + 100)
    ref = JitterBuffer()
    expected = feed(ref, arrivals)
    jb = JitterBuffer()
    got: list[Item] = []
    for c in arrivals:
        blob = jb.to_bytes()
        jb = JitterBuffer.from_bytes(blob)
        assert jb.to_bytes() == blob
        got += jb.push(c)
    assert got == expected
    assert jb.counters == ref.counters


def test_state_is_small() -> None:
    jb = JitterBuffer()
    feed(jb, [chunk(i) for i in range(100)])
    assert len(jb.to_bytes()) < 400  # nothing held: header only
    feed(jb, [chunk(101), chunk(102)])
    assert len(jb.to_bytes()) < 400 + 2 * 2 * CHUNK


def test_state_codec_rejects_foreign_blobs() -> None:
    blob = pack_state("jitter", {"a": 1}, {"x": np.arange(4, dtype=np.float32)})
    with pytest.raises(SegmenterError, match="expected 'segmenter'"):
        unpack_state(blob, "segmenter")
    with pytest.raises(SegmenterError, match="truncated"):
        unpack_state(blob[:-3], "jitter")
    with pytest.raises(SegmenterError, match="not a streamscribe state"):
        unpack_state(b"pickle?", "jitter")
