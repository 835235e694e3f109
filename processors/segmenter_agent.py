"""The segmenter agent: a thin faust loop around :class:`StreamSegmenter`.

Reads ``streamscribe.audio`` as raw bytes in batches; for each event: decode the
``AudioChunk`` (or a :class:`~streamscribe.schemas.control.Tick`), check its key, validate
its payload — a failure becomes a dead letter and the session goes on. Valid arrivals are
grouped by channel and handed, with each channel's state from the ``segmenter-channels``
table, to the core in the executor (VAD is CPU work). Back on the loop: utterance messages
and session events are sent, the new state is written to the table, finished channels are
deleted. Ticks finalise sessions idle for longer than ``idle_timeout_s``.

See :mod:`streamscribe.processors.faust_app` for the delivery guarantee.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import Executor
from typing import Any

import faust

from streamscribe.core.errors import ContractError, StreamscribeError
from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import (
    StageTopics,
    dead_letter_for,
    event_scope,
    guarded,
    send_dead_letter,
)
from streamscribe.processors.reassembly import JitterConfig
from streamscribe.processors.segmenter import SegmenterConfig
from streamscribe.processors.stream_segmenter import (
    Arrival,
    ChannelBatch,
    ChannelKey,
    ChannelResult,
    Stamps,
    StreamSegmenter,
)
from streamscribe.processors.vad import SileroVad
from streamscribe.processors.validate import ValidationConfig, decode_checked
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.control import TICK_KEY, Tick, is_tick
from streamscribe.schemas.events import now_us

log = logging.getLogger(__name__)

STAGE = "segmenter"
SESSION_TOUCH_EVERY_S = 1.0  # how often a live session's "last seen" is written


class SegmenterStage:
    def __init__(
        self, app: faust.App, settings: Settings, topics: StageTopics, executor: Executor
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.executor = executor
        self.validation = ValidationConfig(max_payload_bytes=settings.max_payload_bytes)
        self.seg_config = SegmenterConfig.from_settings(settings)
        self.jitter_config = JitterConfig.from_settings(settings)
        self.core: StreamSegmenter | None = None
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
        self.stats = {"chunks": 0, "batches": 0, "dead_letters": 0}

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

        @app.timer(interval=max(0.5, settings.idle_timeout_s / 4))
        async def idle_ticks() -> None:
            tick = Tick(now_us(), f"segmenter-{id(self):x}").encode()
            for partition in range(p):
                await topics.audio.send(key=TICK_KEY, value=tick, partition=partition)

        @app.task
        async def load_models() -> None:
            await self.ensure_core()

    async def ensure_core(self) -> StreamSegmenter:
        if self.core is None:
            loop = asyncio.get_running_loop()
            vad = await loop.run_in_executor(
                self.executor, lambda: SileroVad(intra_op_threads=self.settings.ort_intra_threads)
            )
            self.core = StreamSegmenter(
                vad, self.seg_config, self.jitter_config, origin=self.settings.group_id
            )
        return self.core

    # ------------------------------------------------------------------ batch
    async def handle(self, events: list[Any]) -> None:
        core = await self.ensure_core()
        received = now_us()
        by_channel: OrderedDict[ChannelKey, list[Arrival]] = OrderedDict()
        ticks = []
        for ev in events:
            with event_scope(ev):
                try:
                    value = ev.message.value
                    if is_tick(value):
                        ticks.append(ev)
                        continue
                    arrival = self._arrival(ev, received)
                    key = ChannelKey(arrival.chunk.session_id, arrival.chunk.channel)
                    by_channel.setdefault(key, []).append(arrival)
                except StreamscribeError as err:
                    self.stats["dead_letters"] += 1
                    await dead_letter_for(
                        self.topics, ev, err, stage=STAGE, session_id=_key_text(ev)
                    )
        if by_channel:
            batches = [ChannelBatch(k, self.channels.get(str(k)), a) for k, a in by_channel.items()]
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, core.process, batches)
            for batch, res in zip(batches, results, strict=True):
                await self._apply(res, batch.arrivals[-1].ref)
            self._touch_sessions(by_channel)
        for tick in ticks:
            with event_scope(tick):
                await self._idle_scan(tick)
        self.stats["batches"] += 1
        self.stats["chunks"] += sum(len(a) for a in by_channel.values())

    def _arrival(self, ev: Any, received: int) -> Arrival:
        msg = ev.message
        chunk = AudioChunk.decode(msg.value)
        key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
        if key != chunk.session_id:
            raise ContractError(
                f"message key {key!r} is not the chunk's session id {chunk.session_id!r}",
                raw=msg.value,
            )
        decode_checked(
            chunk.payload,
            encoding=chunk.encoding,
            sample_rate=chunk.sample_rate,
            n_samples=chunk.n_samples,
            config=self.validation,
        )
        broker_us = int(msg.timestamp * 1_000_000) if msg.timestamp else received
        return Arrival(chunk, Stamps(chunk.captured_at_us, broker_us, received), ev)

    async def _apply(self, res: ChannelResult, last_ref: Any) -> None:
        for ref, err in res.rejected:
            with event_scope(ref):
                self.stats["dead_letters"] += 1
                await dead_letter_for(
                    self.topics, ref, err, stage=STAGE, session_id=res.key.session_id
                )
        if res.failed is not None:
            log.error("channel %s failed: %s", res.key, res.failed.reason)
            with event_scope(last_ref):
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
        with event_scope(last_ref):
            if res.state is None:
                self.channels.pop(str(res.key), None)
                self._end_channel(res.key)
            else:
                self.channels[str(res.key)] = res.state

    # --------------------------------------------------------------- sessions
    def _touch_sessions(self, by_channel: OrderedDict[ChannelKey, list[Arrival]]) -> None:
        for key, arrivals in by_channel.items():
            ref = arrivals[-1].ref
            with event_scope(ref):
                doc = dict(self.sessions.get(key.session_id) or {})
                if not doc and str(key) not in self.channels:
                    continue  # the session already ended in this batch
                chans = set(doc.get("channels", [])) | {key.channel}
                chans -= set(doc.get("ended", []))
                if not chans and doc:
                    continue
                now = time.time()
                fresh = now - doc.get("last", 0) < SESSION_TOUCH_EVERY_S
                if doc and fresh and sorted(chans) == doc.get("channels"):
                    continue  # nothing new to remember; keeps the changelog small
                doc.update(p=ref.message.partition, last=now, channels=sorted(chans))
                doc.setdefault("ended", [])
                self.sessions[key.session_id] = doc

    def _end_channel(self, key: ChannelKey) -> None:
        doc = dict(self.sessions.get(key.session_id) or {"channels": [], "ended": []})
        ended = sorted(set(doc.get("ended", [])) | {key.channel})
        remaining = [c for c in doc.get("channels", []) if c not in ended]
        if remaining:
            doc.update(ended=ended, channels=remaining)
            self.sessions[key.session_id] = doc
        else:
            self.sessions.pop(key.session_id, None)

    async def _idle_scan(self, tick: Any) -> None:
        partition = tick.message.partition
        deadline = time.time() - self.settings.idle_timeout_s
        idle = [
            (sid, doc)
            for sid, doc in list(self.sessions.items())
            if doc and doc.get("p") == partition and doc.get("last", 0) < deadline
        ]
        core = await self.ensure_core()
        loop = asyncio.get_running_loop()
        for sid, doc in idle:
            for ch in doc.get("channels", []):
                key = ChannelKey(sid, int(ch))
                state = self.channels.get(str(key))
                if state is None:
                    continue
                res = await loop.run_in_executor(self.executor, core.finish_idle, key, state, tick)
                await self._apply(res, tick)
            self.sessions.pop(sid, None)
            log.info("session %s idle for %.0f s: finalised", sid, self.settings.idle_timeout_s)


def _key_text(ev: Any) -> str | None:
    key = ev.message.key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "replace") if key != TICK_KEY else None
    return None
