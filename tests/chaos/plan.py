"""The chaos run's plan, built from a seed before anything starts (no Kafka here).

- :func:`cut_pieces`: short pieces of real speech (the bundled recordings cut into 8-15 s
  files at their own sample rates), the audio of the sessions;
- :func:`build_plan`: per session its piece, its chunks with duplicates and swaps, the
  poisoned messages inserted among them (each remembered by the sha256 of its value), and
  for the sessions whose producer vanishes the chunk before which it stops (no end of
  stream); then the rounds (one message of every session per round) and the rounds after
  which the worker is SIGKILLed (mid-batch, or again during the recovery that follows) and
  the broker killed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import soundfile as sf

from streamscribe.producers.source import chunk_channel, read_audio
from streamscribe.schemas.audio import AudioChunk

HOUR_16K: Final = 3600 * 16000
#: (recording, cut points in seconds): pieces of 8-15 s at the file's own rate.
SOURCES: Final = (
    ("beckett.wav", (0.0, 9.96)),
    ("endgame_nagg_nell.wav", (0.0, 14.0, 28.2)),
    ("two_cities.wav", (0.0, 11.0, 22.0, 33.0, 44.3)),
)


@dataclass(frozen=True)
class Piece:
    name: str
    path: Path
    seconds: float


@dataclass(frozen=True)
class Poison:
    """One poisoned message: what it is and the sha256 of its value."""

    session: str
    kind: str  # garbage, nan, oversized, forged
    sha256: str


@dataclass
class SessionPlan:
    session_id: str
    piece: Piece
    audio: Path  # what a fault-free run transcribes: the piece, or the part sent of it
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    vanishes: bool = False


@dataclass
class Plan:
    seed: int
    sessions: list[SessionPlan]
    poison: list[Poison]
    rounds: list[list[tuple[str, bytes, bytes]]]  # (session, key, value) per round
    kills: dict[int, str]  # round -> "mid-batch" or "recovery" (a kill, then one at restart)
    broker_kill_round: int

    @property
    def worker_kills(self) -> int:
        return sum(2 if k == "recovery" else 1 for k in self.kills.values())


def cut_pieces(assets: Path, out: Path) -> list[Piece]:
    """The bundled recordings cut at :data:`SOURCES`' points, written as PCM16 WAV files."""
    pieces = []
    for name, cuts in SOURCES:
        samples, rate = sf.read(str(assets / name), dtype="int16")
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            piece = samples[int(a * rate) : int(b * rate)]
            path = out / f"{Path(name).stem}-{i}.wav"
            sf.write(str(path), piece, rate, subtype="PCM_16")
            pieces.append(Piece(path.stem, path, len(piece) / rate))
    return pieces


def _shuffled(chunks: list[AudioChunk], rng: random.Random, keep_tail: int) -> list[AudioChunk]:
    """10 % duplicated, 10 % swapped with their neighbour (never the last ``keep_tail``:
    an end of stream held early declares the chunks before it lost)."""
    order: list[AudioChunk] = []
    for c in chunks:
        order.append(c)
        if rng.random() < 0.1:
            order.append(c)
    for i in range(len(order) - keep_tail - 1):
        if rng.random() < 0.1:
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def _poison_for(
    s: int, chunks: list[AudioChunk], order: list[AudioChunk], rng: random.Random, last: int
) -> dict[int, list[tuple[str, bytes]]]:
    """Poisoned values by the seq of the chunk they precede: garbage and NaN in every
    session, a 60 s chunk (over the payload limit) in sessions 0 and 1, a forged position
    (one seq skipped, six hours ahead) in sessions 2 and 3.

    The forged chunk precedes a chunk whose successor has not arrived yet: a forged copy of
    a seq the jitter buffer already holds is dropped as a duplicate without a dead letter
    today (the known gap in ``test_known_gaps.py``)."""
    bad: dict[int, list[tuple[str, bytes]]] = {}
    garbage_at, nan_at = rng.sample(range(5, last), 2)
    bad.setdefault(garbage_at, []).append(("garbage", rng.randbytes(rng.randint(1, 400))))
    c = chunks[nan_at]
    nan = np.full(c.n_samples, np.nan, dtype="<f4").tobytes()
    nan_chunk = dataclasses.replace(c, encoding="pcm_f32le", payload=nan)
    bad.setdefault(nan_at, []).append(("nan", nan_chunk.encode()))
    first = {}
    for i, x in enumerate(order):
        first.setdefault(x.seq, i)
    at = rng.choice([k for k in range(20, last) if first[k] < first[k + 1]])
    c = chunks[at]
    if s in (0, 1):
        big = dataclasses.replace(c, n_samples=960_000, payload=bytes(1_920_000))
        bad.setdefault(at, []).append(("oversized", big.encode()))
    if s in (2, 3):
        forged = dataclasses.replace(c, seq=c.seq + 1, position=c.position + 6 * HOUR_16K)
        bad.setdefault(at, []).append(("forged", forged.encode()))
    return bad


def _cut_in_speech(piece: Piece, n_chunks: int, step_16k: int, rng: random.Random) -> int:
    """A chunk count, 55-80 % of the piece, whose end falls inside an utterance (at least
    0.5 s from its edges), so that the idle timeout has an open utterance to close."""
    from streamscribe.processors.segmenter import segment_file

    spans = segment_file(piece.path)
    inside = [
        k
        for k in range(int(n_chunks * 0.55), int(n_chunks * 0.8))
        if any(u.start_sample + 8000 < k * step_16k < u.end_sample - 8000 for u in spans)
    ]
    return rng.choice(inside) if inside else int(n_chunks * rng.uniform(0.55, 0.8))


def build_plan(
    pieces: list[Piece],
    out: Path,
    *,
    seed: int,
    sessions: int,
    vanishing: int,
    mid_batch_kills: int,
    recovery_kills: int,
    prefix: str,
) -> Plan:
    """The whole run, decided by ``seed`` (see the module docstring)."""
    rng = random.Random(seed)
    plans: list[SessionPlan] = []
    poison: list[Poison] = []
    vanish = set(rng.sample(range(4, sessions), vanishing))  # never a poisoned-big one
    for s in range(sessions):
        piece = pieces[(s + seed) % len(pieces)]
        sid = f"{prefix}s{s:02d}"
        src = read_audio(piece.path)
        chunks = list(chunk_channel(src, 0, session_id=sid, role="speaker"))
        plan = SessionPlan(sid, piece, piece.path, vanishes=s in vanish)
        if plan.vanishes:  # the producer dies after 55-80 % of the chunks, no end of stream
            step = chunks[1].position
            cut = _cut_in_speech(piece, len(chunks), step * 16000 // src.sample_rate, rng)
            plan.audio = out / f"{sid}-sent.wav"
            sf.write(str(plan.audio), src.samples[: cut * step, 0], src.sample_rate, "PCM_16")
            chunks = chunks[:cut]
        order = _shuffled(chunks, rng, keep_tail=3)
        bad = _poison_for(s, chunks, order, rng, last=len(chunks) - 5)
        for c in order:
            for kind, value in bad.pop(c.seq, []):
                plan.messages.append((c.key, value))
                poison.append(Poison(sid, kind, hashlib.sha256(value).hexdigest()))
            plan.messages.append((c.key, c.encode()))
        assert not bad, "every poisoned value placed"
        plans.append(plan)
    n_rounds = max(len(p.messages) for p in plans)
    rounds = [
        [(p.session_id, *p.messages[r]) for p in plans if r < len(p.messages)]
        for r in range(n_rounds)
    ]
    events = mid_batch_kills + recovery_kills + 1
    # kill rounds spread over the run (a worker lives a few rounds between two kills, so
    # every session is seen by each life); the broker's in the middle
    spacing = (n_rounds - 16) // events
    slots = [8 + i * spacing + rng.randrange(spacing - 3) for i in range(events)]
    broker_kill_round = slots.pop(len(slots) // 2)
    kinds = ["recovery"] * recovery_kills + ["mid-batch"] * (mid_batch_kills)
    rng.shuffle(kinds)
    return Plan(
        seed, plans, poison, rounds, dict(zip(slots, kinds, strict=True)), broker_kill_round
    )
