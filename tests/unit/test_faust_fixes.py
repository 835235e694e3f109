"""The faust-streaming workarounds every worker installs (``install_faust_fixes``).

The crash tests on the real broker (foundation counter, segmenter SIGKILL) are the proof
that no message is lost; these pin down the mechanics on faust's own classes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import make_app
from streamscribe.processors.faust_fixes import _completing, install_faust_fixes

install_faust_fixes()

A0, A1 = TP("audio", 0), TP("audio", 1)


class _Buffer:
    """What ``ProducerBuffer.flush`` reads: queue size, state, the "message sent" event."""

    def __init__(self) -> None:
        self.size = 0
        self.state = "running"
        self.message_sent = asyncio.Event()
        self._ss_in_flight = 1  # taken from the queue, not yet handed to aiokafka


def test_flush_waits_for_the_write_in_flight() -> None:
    async def scenario() -> list[str]:
        buf, order = _Buffer(), []

        async def deliver() -> None:
            await asyncio.sleep(0.05)
            buf._ss_in_flight = 0
            order.append("sent")
            buf.message_sent.set()

        task = asyncio.create_task(deliver())
        await ProducerBuffer.flush(buf)  # faust's own returned at once: the queue is empty
        order.append("flushed")
        await task
        return order

    assert asyncio.run(scenario()) == ["sent", "flushed"]


class _Consumer:
    """What ``resume_partitions`` / ``perform_seek`` touch on faust's consumer."""

    def __init__(self, log: list[tuple[str, frozenset[TP]]]) -> None:
        self.active: set[TP] = set()
        self._paused_partitions: set[TP] = {A0, A1}
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {}
        self.log = log

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    async def seek_to_committed(self) -> dict[TP, int]:
        self.log.append(("seek while fetching", frozenset(self.active)))
        return {A0: 10, A1: 20}


def test_input_partitions_resume_only_after_the_seek() -> None:
    log: list[tuple[str, frozenset[TP]]] = []
    consumer = _Consumer(log)

    async def recovery_completed(self: Any) -> None:  # faust's order: resume, then seek
        Consumer.resume_partitions(self.app.consumer, {A0, A1})
        log.append(("resumed", frozenset(consumer.active)))
        await Consumer.perform_seek(self.app.consumer)

    class _Recovery:
        app = type("App", (), {"consumer": consumer})()

    # faust's order, through the wrapper the fix puts around Recovery.on_recovery_completed
    asyncio.run(_completing(recovery_completed)(_Recovery()))
    assert log == [
        ("resumed", frozenset()),  # deferred: nothing fetched yet
        ("seek while fetching", frozenset()),
    ]
    assert consumer.active == {A0, A1}  # resumed once the seek was done
    assert consumer._read_offset == {A0: 10, A1: 20}


def test_outside_recovery_resume_is_immediate() -> None:
    consumer = _Consumer([])
    Consumer.resume_partitions(consumer, {A0})
    assert consumer.active == {A0}


def test_installed_once() -> None:
    seek = Consumer.perform_seek
    install_faust_fixes()
    assert Consumer.perform_seek is seek


def test_static_membership_only_when_an_instance_id_is_given(tmp_path: Any) -> None:
    settings = Settings.from_env({}).with_overrides(worker_data_dir=tmp_path)
    assert make_app(settings).conf.consumer_group_instance_id is None
    app = make_app(settings, instance="worker-a-1")
    assert app.conf.consumer_group_instance_id == "worker-a-1"


class _Fetcher:
    """aiokafka's fetcher as faust's thread uses it: an empty partition set means all."""

    _closed = False

    def __init__(self, live: set[TP]) -> None:
        self.live = live
        self.calls = 0
        self._subscriptions = self

    def fetch_context(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    async def fetched_records(self, partitions: Any, timeout: Any = 0, max_records: Any = None):
        self.calls += 1
        self.live.clear()  # faust pauses everything while the fetch waits
        await asyncio.sleep(0)
        return {tp: ["record"] for tp in (A0, A1) if not partitions or tp in partitions}


def test_fetch_uses_the_partitions_active_when_it_began() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    live = {A0}
    fetcher = _Fetcher(live)
    consumer = type("Aio", (), {"_closed": False, "_fetcher": fetcher})()
    thread = type("Thread", (), {"consumer": type("C", (), {"flow_active": True})()})()
    got = asyncio.run(AIOKafkaConsumerThread._fetch_records(thread, consumer, live, timeout=1))
    assert set(got) == {A0}  # not A1, paused (never active) while the fetch waited
    assert asyncio.run(AIOKafkaConsumerThread._fetch_records(thread, consumer, set())) == {}
    assert fetcher.calls == 1  # an empty set fetches nothing (aiokafka would read "all")


def test_a_gap_is_logged_and_still_recorded(caplog: Any) -> None:
    """faust commits over a gap; the warning says which offsets, the gap stays faust's."""
    from collections import defaultdict

    from intervaltree import IntervalTree

    class _GapConsumer:
        pass

    consumer: Any = _GapConsumer()
    consumer._committed_offset = defaultdict(lambda: None, {A1: 4})
    consumer._gap = defaultdict(IntervalTree)
    with caplog.at_level("WARNING", logger="streamscribe.processors.faust_fixes"):
        asyncio.run(Consumer._add_gap(consumer, A1, 5, 9))
    assert "audio[1]: offsets 5..8 were not handed to this worker's stream (committed 4)" in (
        caplog.text
    )
    assert sorted((i.begin, i.end) for i in consumer._gap[A1]) == [(5, 10)]


class _Msg:
    def __init__(self, tp: TP, offset: int, generation: int = 3) -> None:
        self.tp, self.offset, self.generation_id, self.acked = tp, offset, generation, False


def _commit_state(committed: int | None, acked: list[int], unacked: list[_Msg]) -> Any:
    """What ``Consumer._new_offset`` reads of a consumer (faust's own attribute names)."""
    from collections import defaultdict

    from intervaltree import IntervalTree

    state: Any = type("_CommitConsumer", (), {})()
    state._acked = defaultdict(list, {A0: list(acked)})
    state._acked_index = defaultdict(set, {A0: set(acked)})
    state._gap = defaultdict(IntervalTree)
    state._committed_offset = defaultdict(lambda: None, {A0: committed})
    state._unacked_messages = set(unacked)
    state.app = type("_App", (), {"consumer_generation_id": 3})()
    return state


def test_faust_alone_commits_past_the_unacked_message_at_the_committed_offset() -> None:
    """The bug, on faust's own method: 89 committed (next to read), 89 still unacked (a
    final decoding), 90 and 91 acked: faust commits 92, past 89."""
    new_offset = Consumer._new_offset.__wrapped__  # faust's, without the fix
    assert new_offset(_commit_state(89, [90, 91], [_Msg(A0, 89)]), A0) == 92
    assert new_offset(_commit_state(None, [1, 2], [_Msg(A0, 0)]), A0) == 3  # no guard at all


def test_no_commit_past_a_message_handed_to_the_stream_and_not_acked() -> None:
    final = _Msg(A0, 89)
    state = _commit_state(89, [90, 91], [final])
    assert Consumer._new_offset(state, A0) is None  # 89 is decoding: nothing committed
    final.acked = True
    state._acked[A0].append(89)
    state._acked_index[A0].add(89)
    assert Consumer._new_offset(state, A0) == 92  # once acked, all of it
    fresh = _commit_state(None, [1, 2], [_Msg(A0, 0)])  # nothing committed yet
    assert Consumer._new_offset(fresh, A0) is None
    # a message of an older generation (before a rebalance) is refetched, not waited for
    old = _commit_state(89, [90, 91], [_Msg(A0, 89, generation=2)])
    assert Consumer._new_offset(old, A0) == 92
    other = _commit_state(89, [89, 90], [_Msg(A1, 10)])  # another partition's: no effect
    assert Consumer._new_offset(other, A0) == 91
    behind = _commit_state(80, [80, 81, 83], [_Msg(A0, 82)])  # commits the run below it
    assert Consumer._new_offset(behind, A0) == 82


def test_the_worker_s_consumer_waits_at_most_fetch_max_wait_ms_at_the_broker() -> None:
    """faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``; a worker's
    consumer gets ``Settings.fetch_max_wait_ms`` instead (a takeover's requests queue
    behind a waiting fetch), and an app that does not ask keeps faust's."""
    import faust

    async def built(app: Any) -> int:
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    ours = make_app(Settings(fetch_max_wait_ms=77, group_id="fetch-wait"))
    assert asyncio.run(built(ours)) == 77
    assert Settings().fetch_max_wait_ms == 100
    plain = faust.App("plain-fetch-wait", broker="kafka://127.0.0.1:1", store="memory://")
    assert asyncio.run(built(plain)) == 1500
