"""Stage cores behind the faust agents: the stream segmenter (state round trip through
bytes), the recognizer's line bookkeeping, error budget and the decode scheduler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streamscribe.processors.decode_scheduler import DecodeScheduler
from streamscribe.processors.recognizer_core import ErrorBudget, PartialPolicy, Verdict
from streamscribe.processors.recognizer_line import RecognizerLine
from streamscribe.processors.stream_segmenter import (
    Arrival,
    ChannelBatch,
    ChannelKey,
    StreamSegmenter,
)
from streamscribe.processors.vad import SileroVad
from tests.audio_files import beckett_arrivals

_arrivals = beckett_arrivals


def _run(core: StreamSegmenter, arrivals: list[Arrival], split_every: int | None) -> list:
    """Feed ``arrivals`` in batches, keeping between batches only the state's changelog bytes."""
    key = ChannelKey(arrivals[0].chunk.session_id, 0)
    state: bytes | None = None
    utts: list[tuple] = []
    events: list[tuple] = []
    step = split_every or len(arrivals)
    for i in range(0, len(arrivals), step):
        (res,) = core.process([ChannelBatch(key, state, arrivals[i : i + step])])
        assert res.failed is None and not res.rejected
        utts += [
            (m.utterance, m.kind, m.part, m.offset_sample, m.end_sample, m.payload)
            for m, _ in res.utterances
        ]
        events += [(e.kind, e.at_ms, e.utterance) for e, _ in res.events]
        state = None if res.state is None else res.state.to_bytes()
    assert state is None  # end of stream: the channel's state is deleted
    return [utts, events]


def test_restoring_state_from_bytes_after_every_chunk_changes_nothing() -> None:
    core = StreamSegmenter(SileroVad(), clock=lambda: 0)
    arrivals = _arrivals("s")
    whole = _run(core, arrivals, None)
    per_chunk = _run(core, arrivals, 1)
    every_7 = _run(core, arrivals, 7)
    assert whole == per_chunk == every_7
    finals = [x for x in whole[0] if x[1] == "final"]
    assert len(finals) == 6
    kinds = [x[0] for x in whole[1]]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert kinds.count("speech_start") == kinds.count("speech_end") == 6


def test_two_channels_in_one_batch_match_separate_runs() -> None:
    core = StreamSegmenter(SileroVad(), clock=lambda: 0)
    a, b = _arrivals("a"), _arrivals("b")
    together = core.process(
        [ChannelBatch(ChannelKey("a", 0), None, a), ChannelBatch(ChannelKey("b", 0), None, b)]
    )
    alone = core.process([ChannelBatch(ChannelKey("a", 0), None, a)])
    pay = [(m.part, m.payload) for m, _ in together[0].utterances]
    assert pay == [(m.part, m.payload) for m, _ in alone[0].utterances]
    assert pay == [(m.part, m.payload) for m, _ in together[1].utterances]


def test_partial_policy_grows_geometrically() -> None:
    p = PartialPolicy(interval_samples=8000, growth=0.3)
    decoded, points = 0, []
    for available in range(8000, 16000 * 20 + 1, 8000):  # updates every 0.5 s for 20 s
        if p.due(decoded, available):
            points.append(available)
            decoded = available
    assert points[:4] == [8000, 16000, 24000, 32000]
    assert len(points) < 20  # fewer decodes than updates on a long line
    total = sum(points) / 16000
    assert total < 20 * (1 + 1 / 0.3) + 1  # ~L * (1 + 1/growth), not L^2 / (2 * 0.5)


def test_line_verdict_dedupes_replays() -> None:
    line = RecognizerLine(role="agent", start_sample=0)
    assert line.verdict(0) == Verdict.ACCEPT
    for part in range(3):
        line.append(part, 100 * (part + 1), b"\0\0" * 100)
    assert line.verdict(2) == Verdict.DUPLICATE
    assert line.verdict(3) == Verdict.ACCEPT
    done = RecognizerLine.restore(RecognizerLine.done_doc("agent", 0), {}.get)
    assert done.verdict(7) == Verdict.LATE
    pieces = dict.fromkeys(range(3), b"\0\0" * 100)
    again = RecognizerLine.restore(line.to_doc(), pieces.get)
    assert again.to_doc() == line.to_doc() and again.audio.shape == (300,)


def test_error_budget() -> None:
    b = ErrorBudget(max_rate=0.2, window=10, min_attempts=5)
    for _ in range(4):
        b.record(False)
    assert not b.exceeded()  # too few attempts to judge
    b.record(True)
    assert b.exceeded()
    for _ in range(10):
        b.record(True)
    assert not b.exceeded()


def test_a_coalesced_partial_keeps_its_lines_place_in_the_queue() -> None:
    """Lines are served in the order their wait began: a line that updates while it waits
    is decoded with its newest audio, in its old place (not passed over again)."""
    order: list[tuple[str, object]] = []

    def decode(line_id: str, audio: object) -> str:
        order.append((line_id, audio))
        time.sleep(0.03)
        return "t"

    async def scenario() -> None:
        sched = DecodeScheduler(
            decode, ThreadPoolExecutor(1), workers=1, stale_after_s=5.0, batch_max=1
        )

        async def on_done(out: object) -> None:
            pass

        await sched.start()
        sched.submit_partial("p0", ["p0"], on_done)  # decoding: the others wait
        await asyncio.sleep(0.01)
        for lid in ("a", "b", "c"):
            sched.submit_partial(lid, [f"{lid}-1"], on_done)
        sched.submit_partial("a", ["a-2"], on_done)  # a updates while it waits
        await asyncio.sleep(0.3)
        await sched.stop()
        assert sched.stats.coalesced == 1 and sched.stats.shed == 0

    asyncio.run(scenario())
    assert order == [("p0", "p0"), ("a", "a-2"), ("b", "b-1"), ("c", "c-1")]


def test_scheduler_finals_first_partials_coalesced_and_shed() -> None:
    order: list[str] = []

    def decode(line_id: str, audio: object) -> str:
        order.append(line_id)
        time.sleep(0.05)
        if line_id == "bad":
            raise RuntimeError("model failed")
        return f"text of {line_id}"

    async def scenario() -> None:
        sched = DecodeScheduler(decode, ThreadPoolExecutor(1), workers=1, stale_after_s=0.12)
        published: list[str] = []

        async def on_done(out: object) -> None:
            published.append(out.result)  # type: ignore[attr-defined]

        await sched.start()
        sched.submit_partial("p1", [None], on_done)  # starts at once
        await asyncio.sleep(0.01)
        sched.submit_partial("p2", [None], on_done)
        sched.submit_partial("p2", [None], on_done)  # coalesced with the previous one
        sched.submit_partial("p3", [None], on_done)
        final, bad = await asyncio.gather(  # both jump ahead of p2 and p3
            sched.decode_final("f1", None), sched.decode_final("bad", None)
        )
        assert final.result == "text of f1" and final.error is None
        assert isinstance(bad.error, RuntimeError)
        await asyncio.sleep(0.3)
        await sched.stop()
        assert sched.stats.coalesced == 1 and sched.stats.retries == 1
        assert sched.stats.shed >= 1  # p2/p3 waited longer than 0.12 s behind the finals
        assert ["text of p1"] in published  # one result per segment

    asyncio.run(scenario())
    assert order[:4] == ["p1", "f1", "bad", "bad"]
    assert order.count("bad") == 2  # retried once


@pytest.mark.parametrize("growth", [0.3, 0.5])
def test_policy_never_skips_the_first_interval(growth: float) -> None:
    assert PartialPolicy(8000, growth).due(0, 8000)
    assert not PartialPolicy(8000, growth).due(0, 7999)


def test_a_final_never_waits_behind_partials_with_two_slots() -> None:
    def decode(line_id: str, audio: object) -> str:
        time.sleep(0.3 if line_id.startswith("p") else 0.02)
        return line_id

    async def scenario() -> float:
        sched = DecodeScheduler(decode, ThreadPoolExecutor(2), workers=2, stale_after_s=5)
        await sched.start()

        async def on_done(out: object) -> None:
            return None

        for i in range(4):
            sched.submit_partial(f"p{i}", [None], on_done)
        await asyncio.sleep(0.05)  # a partial is decoding now
        t0 = time.monotonic()
        out = await sched.decode_final("f", None)
        took = time.monotonic() - t0
        assert out.result == "f"
        await sched.stop()
        return took

    assert asyncio.run(scenario()) < 0.2  # not behind a 0.3 s partial


class _RecordingDecoder:
    """Fake ``decode`` / ``decode_batch`` of a :class:`DecodeScheduler`: records the lines
    decoded alone and each batch, sleeping ``alone_s(line_id)`` / ``batch_s`` for the model;
    a batch row of a line in ``fail`` is an error."""

    def __init__(
        self,
        alone_s: Callable[[str], float],
        batch_s: float,
        fail: frozenset[str] = frozenset(),
    ) -> None:
        self.alone: list[str] = []
        self.batches: list[list[str]] = []
        self.alone_s, self.batch_s, self.fail = alone_s, batch_s, fail

    def decode(self, line_id: str, audio: object) -> str:
        self.alone.append(line_id)
        time.sleep(self.alone_s(line_id))
        return f"alone {line_id}"

    def batch(self, items: list[tuple[str, object]]) -> list[object]:
        self.batches.append([lid for lid, _ in items])
        time.sleep(self.batch_s)
        return [RuntimeError("bad row") if lid in self.fail else f"batch {lid}" for lid, _ in items]

    async def scheduler(self, workers: int = 1, **kw: float) -> DecodeScheduler:
        """A started scheduler over this fake, ``workers`` slots (``kw``: its options)."""
        sched = DecodeScheduler(
            self.decode, ThreadPoolExecutor(workers), workers=workers, decode_batch=self.batch, **kw
        )
        await sched.start()
        return sched


def test_finals_of_sessions_not_watched_live_are_batched_live_ones_alone() -> None:
    """Waiting finals marked ``batch`` (a replay) go to ``decode_batch`` together, up to
    ``final_batch_max``; a live final is decoded alone (exactly the offline text) and
    keeps its place; an item that failed in the batch is decoded again alone."""
    fake = _RecordingDecoder(lambda _: 0.02, 0.02, fail=frozenset({"r3"}))
    alone, batches = fake.alone, fake.batches

    async def scenario() -> list[object]:
        sched = await fake.scheduler(final_batch_max=3)
        blocker = asyncio.ensure_future(sched.decode_final("live0", None))
        await asyncio.sleep(0.005)  # live0 is decoding: the rest wait together
        jobs = [
            sched.decode_final("r1", None, batch=True),
            sched.decode_final("live1", None),
            sched.decode_final("r2", None, batch=True),
            sched.decode_final("r3", None, batch=True),
            sched.decode_final("r4", None, batch=True),
        ]
        outs = await asyncio.gather(blocker, *jobs)
        await sched.stop()
        assert sched.stats.final_batches == 1 and sched.stats.batched_finals == 2
        assert sched.stats.finals == 6
        return [o.result for o in outs]

    results = asyncio.run(scenario())
    # queue: r1 live1 r2 r3 r4 -> one batch r1 r2 r3; then live1 and r4 (nothing to pair)
    assert batches == [["r1", "r2", "r3"]]
    assert results == [
        "alone live0",
        "batch r1",
        "alone live1",
        "batch r2",
        "alone r3",  # failed in the batch: decoded again alone
        "alone r4",
    ]
    assert alone == ["live0", "r3", "live1", "r4"]


def test_a_replay_batch_takes_the_waiting_finals_closest_to_its_head_in_length() -> None:
    """More replay finals wait than a batch holds: the oldest heads the batch and the
    others closest to its length join it (in queue order); the rest keep their places and
    form the next batch. With no more than a batch waiting, queue order as before."""
    fake = _RecordingDecoder(lambda lid: 0.15 if lid == "live" else 0.0, 0.01)
    lengths = {"r0": 100, "r1": 1000, "r2": 105, "r3": 5000, "r4": 98, "r5": 7}

    async def scenario() -> None:
        sched = await fake.scheduler(final_batch_max=3)
        busy = asyncio.ensure_future(sched.decode_final("live", np.zeros(16)))
        await asyncio.sleep(0.05)  # the one slot decodes "live"; the replay finals queue
        jobs = [
            asyncio.ensure_future(sched.decode_final(lid, np.zeros(n), batch=True))
            for lid, n in lengths.items()
        ]
        await asyncio.gather(busy, *jobs)
        # a batch of no more than final_batch_max waiting: queue order, lengths ignored
        await asyncio.gather(
            *(sched.decode_final(f"q{i}", np.zeros(10**i), batch=True) for i in range(3))
        )
        await sched.stop()

    asyncio.run(scenario())
    assert fake.alone == ["live"]
    assert fake.batches == [["r0", "r2", "r4"], ["r1", "r3", "r5"], ["q0", "q1", "q2"]]


def test_a_replays_finals_wait_up_to_gather_s_for_a_full_batch() -> None:
    """With ``gather_s``, a slot leaves a replay's finals queued until ``final_batch_max``
    wait (then decodes them at once) or the oldest waited ``gather_s``; a live final is
    never held, and a replay final is not held while a live one waits."""
    fake = _RecordingDecoder(lambda _: 0.01, 0.01)
    alone, batches = fake.alone, fake.batches

    async def scenario() -> dict[str, float]:
        sched = await fake.scheduler(workers=2, final_batch_max=4, gather_s=0.3)
        waited: dict[str, float] = {}
        # a lone replay final: held until it waited gather_s, then decoded (alone)
        out = await sched.decode_final("r0", None, batch=True)
        waited["r0"] = out.waited_s
        # four arriving 20 ms apart: one batch as soon as the fourth is there
        jobs = []
        for i in range(1, 5):
            jobs.append(asyncio.ensure_future(sched.decode_final(f"r{i}", None, batch=True)))
            await asyncio.sleep(0.02)
        for i, o in enumerate(await asyncio.gather(*jobs), start=1):
            assert o.result == f"batch r{i}"
            waited[f"r{i}"] = o.waited_s
        # a live final is decoded at once, alone
        out = await sched.decode_final("live", None)
        assert out.result == "alone live"
        waited["live"] = out.waited_s
        # a replay final held for its batch is let go when a live final comes
        held = asyncio.ensure_future(sched.decode_final("r5", None, batch=True))
        await asyncio.sleep(0.05)
        out = await sched.decode_final("live2", None)
        waited["live2"] = out.waited_s
        waited["r5"] = (await held).waited_s
        await sched.stop()
        return waited

    waited = asyncio.run(scenario())
    assert 0.3 <= waited["r0"] < 0.6
    assert batches == [["r1", "r2", "r3", "r4"]]
    assert waited["r1"] < 0.25  # the batch filled long before the gather bound (0.3 s)
    assert waited["live"] < 0.25
    assert waited["live2"] < 0.25 and 0.05 <= waited["r5"] < 0.28
    assert sorted(alone) == ["live", "live2", "r0", "r5"] and alone[:2] == ["r0", "live"]


def test_live_finals_are_batched_only_once_one_waited_the_behind_bound() -> None:
    """A live final that waited ``behind_after_s`` in the queue (the worker is behind) takes
    the finals waiting with it into one batch (speculations excluded); finals that did not
    wait that long are decoded alone, one by one."""
    fake = _RecordingDecoder(lambda lid: 0.01 if lid.startswith("q") else 0.12, 0.02)
    alone, batches = fake.alone, fake.batches

    async def scenario() -> list[object]:
        sched = await fake.scheduler(final_batch_max=3, behind_after_s=0.08)
        # quick finals one after the other: none waits 80 ms, each alone
        for i in range(3):
            assert (await sched.decode_final(f"q{i}", None)).result == f"alone q{i}"
        blocker = asyncio.ensure_future(sched.decode_final("slow", None))  # 120 ms
        await asyncio.sleep(0.005)
        spec = sched.submit_speculative("s0", None)
        jobs = [sched.decode_final(f"l{i}", None) for i in range(4)]
        outs = await asyncio.gather(blocker, *jobs)
        spec_out = await spec
        await sched.stop()
        assert sched.stats.final_batches == 1 and sched.stats.behind_batches == 1
        assert sched.stats.batched_finals == 3
        return [o.result for o in outs] + [spec_out.result]

    results = asyncio.run(scenario())
    # l0..l3 waited behind "slow" (> 80 ms): l0 takes l1 and l2 (batch of 3), l3 alone;
    # the speculation s0 is never batched
    assert batches == [["l0", "l1", "l2"]]
    assert results == ["alone slow", "batch l0", "batch l1", "batch l2", "alone l3", "alone s0"]
    assert alone == ["q0", "q1", "q2", "slow", "l3", "s0"]  # finals before speculations


def test_a_session_marked_not_live_gives_utterances_marked_not_live() -> None:
    """``SessionMeta.live`` of the first chunk reaches every utterance message, and is
    kept in the channel's changelog copy (restored after every chunk: same messages)."""
    import dataclasses

    from streamscribe.schemas.audio import SessionMeta

    core = StreamSegmenter(SileroVad(), clock=lambda: 0)
    arrivals = _arrivals("replay")
    first = arrivals[0].chunk
    meta = SessionMeta(source="beckett.wav", live=False)
    arrivals[0] = dataclasses.replace(
        arrivals[0], chunk=dataclasses.replace(first, session_meta=meta)
    )
    key = ChannelKey("replay", 0)
    state: bytes | None = None
    msgs = []
    for a in arrivals:
        (res,) = core.process([ChannelBatch(key, state, [a])])
        msgs += [m for m, _ in res.utterances]
        state = None if res.state is None else res.state.to_bytes()
    assert len([m for m in msgs if m.kind == "final"]) == 6
    assert {m.live for m in msgs} == {False}
    (plain,) = core.process([ChannelBatch(ChannelKey("p", 0), None, _arrivals("p"))])
    assert plain.utterances and {m.live for m, _ in plain.utterances} == {True}
