"""Issue 16's remaining series, with exact values after known events (no broker): the
worker's partial-batch decode seconds, table-restore seconds (through faust's own rebalance
signals), dead letters by reason and live sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamscribe.core.settings import Settings
from streamscribe.processors import faust_app
from streamscribe.processors.stream_segmenter import ChannelKey
from streamscribe.processors.worker import build_worker
from streamscribe.processors.worker_metrics import (
    RESTORE_BUCKETS_S,
    WorkerTimings,
    worker_registry,
)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Any, list[Any]]]:
    app, stages = build_worker(Settings(worker_data_dir=tmp_path / "w"))
    yield app, stages
    for stage in stages:
        stage.executor.shutdown(wait=False)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_partial_batches_are_timed_once_per_decoder_run(worker: tuple[Any, list[Any]]) -> None:
    app, stages = worker
    recognizer = stages[1]
    calls: list[list[Any]] = []

    def decode_batch(items: list[Any]) -> list[str]:
        calls.append(items)
        return [f"text of {line}" for line, _audio in items]

    recognizer.scheduler.decode_batch = decode_batch
    registry = worker_registry(stages, None, app)
    assert value(registry, "streamscribe_decode_partial_batch_seconds_count") == 0
    batch = recognizer.scheduler.decode_batch
    assert batch([("a", b"x"), ("b", b"y")]) == ["text of a", "text of b"]  # passed through
    assert batch([("c", b"z")]) == ["text of c"]
    assert calls == [[("a", b"x"), ("b", b"y")], [("c", b"z")]]
    assert value(registry, "streamscribe_decode_partial_batch_seconds_count") == 2
    assert value(registry, "streamscribe_decode_partial_batch_seconds_bucket", le="+Inf") == 2
    assert value(registry, "streamscribe_decode_partial_batch_seconds_bucket", le="10.0") == 2


def test_the_batch_timer_is_not_wrapped_twice_by_one_registry() -> None:
    registry = CollectorRegistry()
    timings = WorkerTimings(registry)
    scheduler = SimpleNamespace(decode_batch=lambda items: list(items))
    timings.time_partial_batches(scheduler)
    timings.time_partial_batches(scheduler)
    scheduler.decode_batch([1])
    assert value(registry, "streamscribe_decode_partial_batch_seconds_count") == 1


def test_table_restore_is_timed_from_faust_s_assignment_to_recovery_complete(
    worker: tuple[Any, list[Any]],
) -> None:
    """Through the real app's signals: assigned -> (a rebalance again) -> complete."""
    app, stages = worker
    registry = worker_registry(stages, None, app)
    name = "streamscribe_worker_table_restore_seconds"
    assert value(registry, f"{name}_count") == 0

    async def rebalances() -> None:
        await app.on_rebalance_complete.send()  # no assignment seen: nothing to time
        await app.on_partitions_assigned.send(set())
        await app.on_partitions_assigned.send(set())  # assigned again: the clock restarts
        await app.on_rebalance_complete.send()

    asyncio.run(rebalances())
    assert value(registry, f"{name}_count") == 1
    assert value(registry, f"{name}_bucket", le="+Inf") == 1


def test_restore_seconds_with_a_clock() -> None:
    registry = CollectorRegistry()
    now = [100.0]
    timings = WorkerTimings(registry, clock=lambda: now[0])
    timings.restore_started()
    now[0] += 42.0
    timings.restore_completed()
    timings.restore_completed()  # a second completion without an assignment: not counted
    name = "streamscribe_worker_table_restore_seconds"
    assert value(registry, f"{name}_sum") == 42.0 and value(registry, f"{name}_count") == 1
    assert value(registry, f"{name}_bucket", le="30.0") == 0
    assert value(registry, f"{name}_bucket", le="60.0") == 1
    assert RESTORE_BUCKETS_S[-1] == float("inf")


def test_dead_letters_by_stage_and_a_low_cardinality_reason(
    worker: tuple[Any, list[Any]],
) -> None:
    """Counted where every dead letter is sent (``send_dead_letter``), labelled by reason."""
    saved = dict(faust_app.DEAD_LETTERS), dict(faust_app.DEAD_LETTER_FAILURES)
    faust_app.DEAD_LETTERS.clear()
    faust_app.DEAD_LETTER_FAILURES.clear()
    try:
        _app, stages = worker
        registry = worker_registry(stages)
        sent: list[bytes] = []

        async def send(*, key: bytes, value: bytes) -> None:
            sent.append(value)

        topics = SimpleNamespace(deadletter=SimpleNamespace(send=send))

        def event(offset: int) -> Any:
            message = SimpleNamespace(
                topic="t.audio", partition=0, offset=offset, key=b"s", value=b"x"
            )
            return SimpleNamespace(message=message)

        async def dead_letters() -> None:
            for i, error_type in enumerate(
                ["ValidationError", "ValidationError", "ContractError", "KeyError"]
            ):
                await faust_app.send_dead_letter(
                    topics, event(i), stage="segmenter", reason="r", error_type=error_type
                )
            await faust_app.send_dead_letter(
                topics, event(9), stage="recognizer", reason="asr", error_type="AsrError"
            )

        asyncio.run(dead_letters())
        assert len(sent) == 5
        name = "streamscribe_stage_dead_letters_total"
        assert value(registry, name, stage="segmenter", reason="invalid_audio") == 2
        assert value(registry, name, stage="segmenter", reason="undecodable") == 1
        assert value(registry, name, stage="segmenter", reason="other") == 1
        assert value(registry, name, stage="recognizer", reason="asr_failed") == 1
        failures = "streamscribe_stage_dead_letter_send_failures_total"
        assert value(registry, failures, stage="segmenter") == 0  # none failed
        assert value(registry, name, stage="recognizer", reason="undecodable") == 0  # at 0
    finally:
        faust_app.DEAD_LETTERS.clear()
        faust_app.DEAD_LETTERS.update(saved[0])
        faust_app.DEAD_LETTER_FAILURES.clear()
        faust_app.DEAD_LETTER_FAILURES.update(saved[1])


def test_sessions_live_counts_sessions_not_channels(worker: tuple[Any, list[Any]]) -> None:
    _app, stages = worker
    segmenter = stages[0]
    registry = worker_registry(stages)
    state = object()
    for key in (ChannelKey("call-1", 0), ChannelKey("call-1", 1), ChannelKey("call-2", 0)):
        segmenter.states.put(key, 0, state)
    assert value(registry, "streamscribe_segmenter_sessions") == 2
    assert value(registry, "streamscribe_segmenter_channels") == 3
    segmenter.states.drop(ChannelKey("call-2", 0))
    assert value(registry, "streamscribe_segmenter_sessions") == 1


class FakeReader:
    """What :class:`SinkLag` asks of its reader: the group's committed offsets, watermarks."""

    def __init__(self, high: dict[int, int], committed: dict[int, int]) -> None:
        self.high, self.committed_at = high, committed
        self.closed = False

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        return [
            SimpleNamespace(
                topic=tp.topic,
                partition=tp.partition,
                offset=self.committed_at.get(tp.partition, -1001),
            )
            for tp in tps
        ]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        assert not cached  # asked of the broker: the reader fetches nothing itself
        return 0, self.high[tp.partition]

    def close(self) -> None:
        self.closed = True


def _msg(partition: int, offset: int) -> Any:
    return SimpleNamespace(
        topic=lambda: "t.transcripts", partition=lambda: partition, offset=lambda: offset
    )


def test_sink_lag_is_the_high_watermark_minus_its_own_position() -> None:
    from streamscribe.consumers.sink import SinkLag, SinkStats, sink_metrics

    reader = FakeReader(high={0: 50, 1: 9, 3: 70}, committed={0: 30, 1: 9, 3: 60})
    lag = SinkLag(reader=lambda: reader)
    batches: list[Any] = []
    registry, handle = sink_metrics(SinkStats(), batches.append, lag)
    assert (
        value(registry, "streamscribe_consumer_lag", topic="t.transcripts", partition="0") is None
    )
    handle([_msg(0, 27), _msg(0, 29), _msg(1, 8)])  # positions 30 and 9
    handle([_msg(3, 40)])  # position 41, but the group has committed 60: another sink has it
    assert len(batches) == 2
    name = "streamscribe_consumer_lag"
    assert value(registry, name, topic="t.transcripts", partition="0") == 20
    assert value(registry, name, topic="t.transcripts", partition="1") == 0
    assert value(registry, name, topic="t.transcripts", partition="3") is None
    assert lag.positions == {("t.transcripts", 0): 30, ("t.transcripts", 1): 9}
    lag.close()
    assert reader.closed
