"""The segmenter agent: a thin faust loop around :class:`StreamSegmenter`.

Reads ``streamscribe.audio`` as raw bytes in batches; for each event: decode the
``AudioChunk`` and check its key (:func:`~streamscribe.processors.segmenter_sessions.
parse_arrival`), or take it as a :class:`~streamscribe.schemas.control.Tick` — a failure
becomes a dead letter and the session goes on. Arrivals are grouped by channel and handed,
with each channel's in-memory state (:class:`~streamscribe.processors.segmenter_sessions.
ChannelStates`; rebuilt from the ``segmenter-channels`` table on a miss), to the core in
the executor (admission, resampling and VAD are CPU work). Back on the loop: chunks the core
rejected become dead letters (one per chunk), utterance messages and session events are
sent, and only once the producer has delivered all of them is a state's changelog copy
written to the table (a finished channel's copy is deleted and a small end marker kept in
the ``segmenter-ended`` table for :data:`~streamscribe.processors.segmenter_sessions.
ENDED_KEPT_S`, which refuses later chunks and a reused session id). That order is what
makes a crash inside a batch safe: a changelog copy never gets ahead of the outputs it
implies, so a replay either regenerates the same outputs (deduped downstream by ``part``)
or finds them delivered.

**Checkpoints.** A live channel's copy (8-14 KB: the audio not yet sent on, the VAD's and
the resampler's state) is written at most every ``segmenter_checkpoint_s`` (1 s), not after
every batch: at real time a batch holds about one 100 ms chunk per channel, and writing
each channel's copy after each of them put more bytes on the changelog than the audio
itself (bench/README.md). The events a copy does not cover yet stay unacked (their
message's reference count raised; acked once a copy covering them is written), and faust
commits an offset only when every offset before it is acked, so after a crash the
survivor reads every such chunk again from the committed offset and the restored copy,
fed the same chunks, gives the same messages. A batch that writes no copy does not wait for
the producer either. A finished, failed or revoked channel releases its events (a
revoke without acking them: faust then reads the partition again from its committed
offset; the revoke first writes the copies those chunks lack, see :meth:`SegmenterStage.
revoke`). Ticks finalise sessions idle for longer than ``idle_timeout_s``.

See :mod:`streamscribe.processors.faust_app` for the delivery guarantee.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import faust

from streamscribe.core.errors import StreamscribeError
from streamscribe.core.settings import Settings
from streamscribe.processors import features
from streamscribe.processors.faust_app import (
    StageTopics,
    dead_letter_for,
    event_scope,
    guarded,
    send_dead_letter,
)
from streamscribe.processors.reassembly import JitterConfig
from streamscribe.processors.segmenter_sessions import (
    ENDED_KEPT_S,
    ChannelStates,
    end_channel,
    expired_markers,
    idle_sessions,
    parse_arrival,
    touch_session,
)
from streamscribe.processors.segmenter_types import SegmenterConfig
from streamscribe.processors.stream_segmenter import (
    Arrival,
    ChannelBatch,
    ChannelKey,
    ChannelResult,
    EndedChannel,
    StreamSegmenter,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.schemas.control import TICK_KEY, Tick, is_tick
from streamscribe.schemas.events import now_us

log = logging.getLogger(__name__)

STAGE = "segmenter"


class SegmenterStage:
    def __init__(
        self, app: faust.App, settings: Settings, topics: StageTopics, executor: Executor
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.executor = executor
        self.seg_config = SegmenterConfig.from_settings(settings)
        self.jitter_config = JitterConfig.from_settings(settings)
        self.core: StreamSegmenter | None = None
        self.states = ChannelStates()
        self._clock: Callable[[], float] = time.monotonic  # checkpoint ages (tests set it)
        self._lock = asyncio.Lock()  # a batch and a revoke never change the states together
        p = settings.partitions
        self.channels = app.Table(
            "segmenter-channels",
            partitions=p,
            default=None,
            value_type=bytes,
        )
        self.sessions = app.Table(
            "segmenter-sessions",
            partitions=p,
            default=None,
        )
        self.ended = app.Table(  # channel key -> EndedChannel document
            "segmenter-ended",
            partitions=p,
            default=None,
        )
        self.stats = {"chunks": 0, "batches": 0, "dead_letters": 0, "checkpoints": 0}

        @app.agent(topics.audio, name="segmenter", concurrency=1)
        async def segmenter(stream: Any) -> None:
            # faust acks the events of a batch only after the loop body has handled them
            # (``take_events`` acks when the generator resumes). Batches lost chunks after a
            # restart until ``faust_fixes.install_fetch_snapshot`` (3 of 8 crash runs before,
            # 0 of 12 after).
            if settings.segmenter_batch_max <= 1:
                async for event in stream.events():
                    await guarded(self.handle, [event], STAGE)
                return
            async for events in stream.take_events(
                settings.segmenter_batch_max, within=settings.segmenter_batch_wait_s
            ):
                await guarded(self.handle, list(events), STAGE)

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode's handler type
        async def drop_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            (revoked,) = args  # the set of TPs taken from this worker
            await self.revoke({tp.partition for tp in revoked})

        @app.timer(interval=max(0.5, settings.idle_timeout_s / 4))
        async def idle_ticks() -> None:
            tick = Tick(now_us(), f"segmenter-{id(self):x}").encode()
            for partition in range(p):
                await topics.audio.send(key=TICK_KEY, value=tick, partition=partition)

        @app.task
        async def load_models() -> None:
            await self.ensure_core()

    def _load(self) -> SileroVad:
        features.warm_up()  # the first channel does not wait for the mel bank (about 1 s)
        return SileroVad(intra_op_threads=self.settings.ort_intra_threads)

    async def ensure_core(self) -> StreamSegmenter:
        if self.core is None:
            loop = asyncio.get_running_loop()
            vad = await loop.run_in_executor(self.executor, self._load)
            self.core = StreamSegmenter(
                vad, self.seg_config, self.jitter_config, origin=self.settings.group_id
            )
        return self.core

    async def revoke(self, partitions: set[int]) -> None:
        """Partitions taken from this worker: write the changelog copies their held chunks
        lack, then forget their in-memory states (the held chunks stay unacked).

        faust may still hand this worker events it fetched before the revoke, and a batch
        handled then starts from the table's copy: without the write, that copy would lack
        the held chunks and the batch would find a hole where they were (the chaos suite
        saw a gap declared that way after a broker restart). Never while a batch is
        changing the states (``_lock``).
        """
        async with self._lock:
            dirty = self.states.unsaved(partitions)
            for key, state, last_ref in dirty:
                with event_scope(last_ref):
                    self.channels[str(key)] = state.to_bytes()
            if dirty:
                await self._flush()
            dropped = self.states.drop_partitions(partitions)
        log.info(
            "partitions revoked: %d in-memory channel states dropped (%d written first)",
            dropped,
            len(dirty),
        )

    # ------------------------------------------------------------------ batch
    async def handle(self, events: list[Any]) -> None:
        async with self._lock:
            await self._handle(events)

    async def _handle(self, events: list[Any]) -> None:
        core = await self.ensure_core()
        received = now_us()
        by_channel: OrderedDict[ChannelKey, list[Arrival]] = OrderedDict()
        ticks = []
        for ev in events:
            with event_scope(ev):
                msg = ev.message
                try:
                    if is_tick(msg.value):
                        ticks.append(ev)
                        continue
                    arrival = parse_arrival(
                        msg.value, msg.key, msg.timestamp, received, ev, msg.offset
                    )
                    key = ChannelKey(arrival.chunk.session_id, arrival.chunk.channel)
                    by_channel.setdefault(key, []).append(arrival)
                except StreamscribeError as err:
                    self.stats["dead_letters"] += 1
                    await dead_letter_for(
                        self.topics, ev, err, stage=STAGE, session_id=_key_text(ev)
                    )
        if by_channel:
            batches = [ChannelBatch(k, self._state(k), a) for k, a in by_channel.items()]
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, core.process, batches)
            for batch, res in zip(batches, results, strict=True):
                self.stats["chunks"] += len(batch.arrivals) - len(res.rejected) - res.replayed
                await self._send_outputs(res, batch.arrivals[-1].ref)
            now = self._clock()
            saves = [self._save_due(res, now) for res in results]
            if any(saves):
                await self._flush()
            for batch, res, save in zip(batches, results, saves, strict=True):
                refs = [a.ref for a in batch.arrivals]
                self._store_state(res, batch.arrivals[-1].ref, save=save, refs=refs, now=now)
            self._touch_sessions(by_channel, results)
        for tick in ticks:
            with event_scope(tick):
                await self._idle_scan(tick)
        self.stats["batches"] += 1

    def _state(self, key: ChannelKey) -> Any:
        """The channel's state: in memory, else its changelog copy, else its end marker (it
        ended), else None (a new channel)."""
        state = self.states.get(key) or self.channels.get(str(key))
        if state is None:
            doc = self.ended.get(str(key))
            state = EndedChannel.from_doc(doc) if doc is not None else None
        return state

    async def _flush(self) -> None:
        """Wait until every message sent so far is delivered (before any state is written)."""
        producer = getattr(self.app, "producer", None)
        if producer is not None:
            await producer.flush()

    async def _apply(self, res: ChannelResult, last_ref: Any) -> None:
        """Send one channel's outputs, then (delivered) write its state."""
        await self._send_outputs(res, last_ref)
        await self._flush()
        self._store_state(res, last_ref, save=True, refs=[], now=self._clock())

    def _save_due(self, res: ChannelResult, now: float) -> bool:
        """Whether this batch writes ``res``'s changelog copy (or deletes it)."""
        if res.failed is not None or res.ended or res.state is None:
            return res.ended
        return self.states.save_due(res.key, now, self.settings.segmenter_checkpoint_s)

    @staticmethod
    def _release(events: list[Any]) -> None:
        """Ack events held until a changelog copy covered them (see :meth:`_hold`)."""
        for ev in events:
            ev.ack()

    def _hold(self, key: ChannelKey, refs: list[Any]) -> None:
        """Keep this batch's events of ``key`` unacked: its changelog copy lags them.

        The batch's own ack (faust's ``take_events``) then only lowers each message's
        reference count; :meth:`_release` acks it once a copy covering it is written.
        """
        for ref in refs:
            ref.message.incref()
        self.states.hold(key, refs)

    async def _send_outputs(self, res: ChannelResult, last_ref: Any) -> None:
        for ref, err in res.rejected:
            with event_scope(ref):
                self.stats["dead_letters"] += 1
                await dead_letter_for(
                    self.topics, ref, err, stage=STAGE, session_id=res.key.session_id
                )
        if res.failed is not None:
            # maybe half-changed: rebuild from the table next time; what the table's copy
            # does not cover is lost with the failure (it is dead-lettered here)
            self._release(self.states.drop(res.key))
            log.error("channel %s failed: %s", res.key, res.failed.reason)
            with event_scope(last_ref):
                self.stats["dead_letters"] += 1
                await send_dead_letter(
                    self.topics,
                    last_ref,
                    stage=STAGE,
                    reason=res.failed.reason,
                    error_type=type(res.failed).__name__,
                    session_id=res.key.session_id,
                )
            return
        key = res.key.session_id.encode()
        for msg, ref in res.utterances:
            with event_scope(ref or last_ref):
                await self.topics.utterances.send(key=key, value=msg.encode())
        for sev, ref in res.events:
            with event_scope(ref or last_ref):
                await self.topics.events.send(key=key, value=sev.encode())

    def _store_state(
        self, res: ChannelResult, last_ref: Any, *, save: bool, refs: list[Any], now: float
    ) -> None:
        """Keep ``res``'s state; write its changelog copy if ``save``, else hold ``refs``."""
        if res.failed is not None:
            return
        with event_scope(last_ref):
            if res.ended:
                held = self.states.drop(res.key)
                self.channels.pop(str(res.key), None)
                if res.end_marker is not None:
                    marker = dataclasses.replace(
                        res.end_marker, partition=last_ref.message.partition
                    )
                    self.ended[str(res.key)] = marker.to_doc()
                self._end_channel(res.key)
                self._release(held)
            elif res.state is not None:
                self.states.put(res.key, last_ref.message.partition, res.state)
                if save:
                    self.channels[str(res.key)] = res.state.to_bytes()
                    self.stats["checkpoints"] += 1
                    self._release(self.states.saved(res.key, now))
                else:
                    self._hold(res.key, refs)

    # --------------------------------------------------------------- sessions
    def _touch_sessions(
        self, by_channel: OrderedDict[ChannelKey, list[Arrival]], results: list[ChannelResult]
    ) -> None:
        for (key, arrivals), res in zip(by_channel.items(), results, strict=True):
            ref = arrivals[-1].ref
            with event_scope(ref):
                doc = touch_session(
                    self.sessions.get(key.session_id),
                    key.channel,
                    ref.message.partition,
                    time.time(),
                    live=res.state is not None,
                )
                if doc is not None:
                    self.sessions[key.session_id] = doc

    def _end_channel(self, key: ChannelKey) -> None:
        doc = end_channel(self.sessions.get(key.session_id), key.channel)
        if doc is None:
            self.sessions.pop(key.session_id, None)
        else:
            self.sessions[key.session_id] = doc

    async def _idle_scan(self, tick: Any) -> None:
        partition = tick.message.partition
        deadline = time.time() - self.settings.idle_timeout_s
        idle = idle_sessions(list(self.sessions.items()), partition, deadline)
        core = await self.ensure_core()
        loop = asyncio.get_running_loop()
        for sid, channels in idle:
            for ch in channels:
                key = ChannelKey(sid, ch)
                state = self._state(key)
                if state is None:
                    continue
                res = await loop.run_in_executor(
                    self.executor, core.finish_idle, key, state, tick, tick.message.offset
                )
                await self._apply(res, tick)
            self.sessions.pop(sid, None)
            log.info("session %s idle for %.0f s: finalised", sid, self.settings.idle_timeout_s)
        for key in expired_markers(list(self.ended.items()), partition, time.time() - ENDED_KEPT_S):
            self.ended.pop(key, None)


def _key_text(ev: Any) -> str | None:
    key = ev.message.key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "replace") if key != TICK_KEY else None
    return None
