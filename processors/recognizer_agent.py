"""The recognizer agent: a thin faust loop around :class:`RecognizerCore` and the ASR model.

Reads ``streamscribe.utterances`` (raw bytes) one event at a time: decodes it, hands it to
the core, sends what the core returns and applies its table writes. The lines live in
memory in the core; the tables hold their changelog copy: each part of a line is stored
once in ``recognizer-audio``, the line's small state in ``recognizer-lines``. When a
partition is revoked its lines are dropped from memory (``app.on_partitions_revoked``); a
later message of such a line rebuilds it from the tables (see :meth:`RecognizerCore.evict`).

- A **final** is decoded before the loop moves on (faust acks the event only then), so a
  crash can never lose it: after a restart the final message is read again and decoded.
  It goes through the worker's :class:`DecodeScheduler` ahead of every partial.
- A **speculative final** (an end-candidate update, :mod:`speculation`) is handed to the
  scheduler with final priority and the loop goes on; the real final awaits it (or
  decodes afresh when its audio differs or the speculation failed) before it is published
  and acked. It is in memory only: after a crash the final is simply decoded.
- A **partial** is handed to the scheduler and the loop goes on: partials of a line are
  coalesced, stale ones shed; the published partial goes straight to the transcripts topic.
  The line's stabiliser lives in the line and is copied into its table state whenever a
  message of the line passes through the loop (so a restart keeps the stable prefix).
- Only utterances written by this group's own segmenter are read (``origin``): a
  re-transcription group started from the earliest offset does not decode the first
  group's copies of the same lines.
- A decode error is retried once; then the line is finalised with an error flag and a dead
  letter, and the session goes on. When the error rate passes ``max_error_rate`` the worker
  exits non-zero before acking, so no audio is dropped silently.

See :mod:`streamscribe.processors.faust_app` for the delivery guarantee.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any

import faust

from streamscribe.core.errors import StreamscribeError
from streamscribe.core.settings import Settings
from streamscribe.processors.decode_scheduler import DecodeOutcome, DecodeScheduler
from streamscribe.processors.faust_app import (
    StageTopics,
    dead_letter_for,
    event_scope,
    guarded,
    send_dead_letter,
)
from streamscribe.processors.recognizer_core import (
    ASR_ERROR_TYPE,
    AUDIO_TABLE,
    LINES_TABLE,
    Accepted,
    Decode,
    RecognizerConfig,
    RecognizerCore,
    TableWrite,
    decode_message,
    injected_failures,
)
from streamscribe.processors.recognizer_line import Audio
from streamscribe.processors.speculation import final_outcome, start_speculation

log = logging.getLogger(__name__)

STAGE = "recognizer"
EXIT_ERROR_BUDGET = 3


class RecognizerStage:
    """Registers the recognizer agent, its two tables and the model loader on ``app``.

    Example::

        app = make_app(settings)
        RecognizerStage(app, settings, StageTopics.declare(app, settings), executor)
    """

    def __init__(
        self, app: faust.App, settings: Settings, topics: StageTopics, executor: Executor
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.executor = executor
        self.asr: Any = None
        config = RecognizerConfig.from_settings(settings)
        p = settings.partitions
        self.lines = app.Table(LINES_TABLE, partitions=p, default=None)
        self.pieces = app.Table(AUDIO_TABLE, partitions=p, default=None, value_type=bytes)
        self.core = RecognizerCore(config, self.lines, self.pieces)
        self.scheduler = DecodeScheduler(
            injected_failures(self._transcribe, config.fail_patterns),
            executor,
            workers=settings.asr_workers,
            stale_after_s=settings.partial_stale_s,
        )
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

        @app.agent(topics.utterances, name="recognizer", concurrency=1)
        async def recognizer(stream: Any) -> None:
            async for event in stream.events():
                await guarded(self.handle, [event], STAGE)

        @app.task
        async def load_model() -> None:
            await self.ensure_asr()

    async def ensure_asr(self) -> Any:
        if self.asr is None:
            from streamscribe.processors.asr import MoonshineAsr

            def load() -> Any:
                asr = MoonshineAsr.load(intra_threads=self.settings.ort_intra_threads)
                asr.warm_up()
                return asr

            self.asr = await asyncio.get_running_loop().run_in_executor(self.executor, load)
            await self.scheduler.start()
            log.info("ASR model loaded and warmed up")
        return self.asr

    def _transcribe(self, audio: Audio) -> Any:
        return self.asr.transcribe(audio)

    def _partitions(self, tp_sets: Iterable[Iterable[Any]]) -> set[int]:
        topic = self.topics.names.utterances
        return {tp.partition for tps in tp_sets for tp in tps if tp.topic == topic}

    async def _on_revoked(self, sender: Any, /, *args: Iterable[Any], **kwargs: Any) -> None:
        """Drop the lines of revoked utterance partitions (and their waiting partials).

        faust sends ``on_partitions_revoked(app, revoked: set[TP])``.
        """
        for lid in self.core.evict(self._partitions(args)):
            self.scheduler.cancel_partials(lid)
            self.scheduler.cancel_speculative(lid)

    async def _on_assigned(self, sender: Any, /, *args: Iterable[Any], **kwargs: Any) -> None:
        """faust sends ``on_partitions_assigned(app, assigned: set[TP])``."""
        self.core.assigned(self._partitions(args))

    # ------------------------------------------------------------------ events
    async def handle(self, events: list[Any]) -> None:
        await self.ensure_asr()
        for ev in events:
            with event_scope(ev):
                try:
                    msg = decode_message(ev.message.value, ev.message.key)
                except StreamscribeError as err:
                    await dead_letter_for(self.topics, ev, err, stage=STAGE)
                    continue
                await self._on_message(self.core.accept(msg, ev.message.partition), ev, msg.line_id)
        if self.core.budget.exceeded():
            log.critical(
                "ASR error rate over %.0f%% of the last %d decodes: stopping before the event "
                "is acked",
                100 * self.settings.max_error_rate,
                len(self.core.budget.outcomes),
            )
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_ERROR_BUDGET)

    async def _on_message(self, step: Accepted, ev: Any, lid: str) -> None:
        self._write(step.writes)
        decode = step.decode
        if step.discarded:  # new audio: a speculation still queued is of no use now
            self.scheduler.cancel_speculative(lid)
        if decode is None:
            return
        if decode.speculative:
            start_speculation(self.scheduler, decode)
            return
        if not decode.final:
            self.scheduler.submit_partial(decode.line_id, decode.audio, self._publisher(decode))
            return
        out = await final_outcome(self.scheduler, decode)
        done = self.core.finish(decode, out)
        await self.topics.transcripts.send(key=decode.msg.key, value=done.event.encode())
        if done.dead_letter is not None:
            await send_dead_letter(
                self.topics,
                ev,
                stage=STAGE,
                reason=done.dead_letter,
                error_type=ASR_ERROR_TYPE,
                session_id=decode.msg.session_id,
            )
        self._write(done.writes)

    def _write(self, writes: Iterable[TableWrite]) -> None:
        for w in writes:
            table = self.lines if w.table == LINES_TABLE else self.pieces
            if w.value is None:
                table.pop(w.key, None)
            else:
                table[w.key] = w.value

    def _publisher(self, decode: Decode) -> Callable[[DecodeOutcome], Awaitable[None]]:
        async def publish(out: DecodeOutcome) -> None:
            event = self.core.partial_event(decode, out)
            if event is not None:
                await self.topics.transcripts.send(key=decode.msg.key, value=event.encode())

        return publish
