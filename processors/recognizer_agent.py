"""The recognizer agent: a thin faust loop around :class:`RecognizerCore` and the ASR model.

Reads ``streamscribe.utterances`` (raw bytes) one event at a time: decodes it, hands it to
the core, sends what the core returns and applies its table writes. The lines live in
memory in the core; the tables hold their changelog copy: each part of a line is stored
once in ``recognizer-audio``, the line's small state in ``recognizer-lines``. When a
partition is revoked its lines are dropped from memory (``app.on_partitions_revoked``); a
later message of such a line rebuilds it from the tables (see :meth:`RecognizerCore.evict`).

- **Acks are manual** (``stream.noack()``): an event is acked when everything it asked for
  is done. A **final** is decoded in a task of its own, so the loop goes on (other lines'
  parts, partials, finals) while it decodes; its event is acked only after the final is
  delivered, its done marker is durable and its audio is deleted, in that order
  (:meth:`RecognizerStage._final`). faust commits an offset only when every
  offset before it is acked, so a crash can never lose a final: after a restart its
  message (and the ones after it, which are duplicates then) is read again. Finals of
  one channel are published in utterance order (each waits for the one before). Finals
  go through the worker's :class:`DecodeScheduler` ahead of every partial; at most
  ``MAX_PENDING_FINALS`` are in flight (the loop waits for the oldest beyond that).
- A line of a session **not watched live** stores nothing in the tables: each of its
  messages is held unacked (``Accepted.held``) and acked right after the line's final
  event, so the committed offset never passes the line's first message until its final
  is out, and a crash or a rebalance brings the whole line again from the topic. A replay
  writes no audio changelog (a third of its recognizer CPU, ``bench/README.md``).
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
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import faust

from streamscribe.core.errors import StreamscribeError
from streamscribe.core.settings import Settings
from streamscribe.processors.decode_scheduler import (
    DecodeOutcome,
    DecodeScheduler,
    lower_thread_priority,
)
from streamscribe.processors.drafts import DraftBook
from streamscribe.processors.faust_app import (
    EXIT_STAGE_FAILURE,
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
MAX_PENDING_FINALS = 256


def retire_interval_s(settings: Settings) -> float:
    """How often the done markers are swept: a tenth of their time to live, 1..30 s."""
    return min(30.0, max(1.0, settings.line_done_ttl_s / 10))


class RecognizerStage:
    """Registers the recognizer agent, its two tables and the model loader on ``app``.

    Example::

        app = make_app(settings)
        RecognizerStage(app, settings, StageTopics.declare(app, settings), executor)
    """

    def __init__(
        self, app: faust.App, settings: Settings, topics: StageTopics, executor: Executor
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.executor = executor
        self.asr: Any = None
        config = RecognizerConfig.from_settings(settings)
        p = settings.partitions
        self.lines = app.Table(LINES_TABLE, partitions=p, default=None)
        self.pieces = app.Table(AUDIO_TABLE, partitions=p, default=None, value_type=bytes)
        self.core = RecognizerCore(config, self.lines, self.pieces)
        # The tokens of each line's earlier decodes, drafts for its next (memory only).
        self.drafts = DraftBook()
        faults = injected_failures(
            lambda _audio: None, config.fail_patterns, config.slow_patterns, config.slow_s
        )

        def decode_fn(lid: str, audio: Audio) -> Any:
            faults(lid, audio)
            return self._transcribe(lid, audio)

        self.scheduler = DecodeScheduler(
            decode_fn,
            executor,
            workers=settings.asr_workers,
            stale_after_s=settings.partial_stale_s,
            decode_batch=self._transcribe_batch,
            batch_max=settings.partial_batch_max,
            final_batch_max=settings.replay_batch_max,
            gather_s=settings.replay_gather_ms / 1000,
            behind_after_s=(settings.final_behind_ms / 1000)
            if settings.final_behind_ms > 0
            else None,
            partial_executor=ThreadPoolExecutor(
                1,
                "asr-partials",
                initializer=lower_thread_priority,
                initargs=(settings.partial_nice,),
            ),
        )
        self._fail_patterns = config.fail_patterns
        self._pending: set[asyncio.Task[None]] = set()
        self._last_final: dict[tuple[str, int], asyncio.Future[None]] = {}  # published
        self._held: dict[str, list[Any]] = {}  # events acked with their line's final
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

        @app.agent(topics.utterances, name="recognizer", concurrency=1)
        async def recognizer(stream: Any) -> None:
            async for event in stream.noack().events():
                await guarded(self.handle, [event], STAGE)

        @app.task
        async def load_model() -> None:
            await self.ensure_asr()

        @app.timer(interval=retire_interval_s(settings))
        async def retire_lines() -> None:
            self.retire()

    async def ensure_asr(self) -> Any:
        if self.asr is None:
            from streamscribe.processors.asr import MoonshineAsr

            def load() -> Any:
                asr = MoonshineAsr.load(
                    intra_threads=self.settings.ort_intra_threads,
                    step_graph=self.settings.asr_step_graph,
                    drafts=self.settings.asr_drafts,
                )
                asr.warm_up()
                return asr

            self.asr = await asyncio.get_running_loop().run_in_executor(self.executor, load)
            await self.scheduler.start()
            log.info("ASR model loaded and warmed up")
        return self.asr

    def _transcribe(self, lid: str, audio: Audio) -> Any:
        if not getattr(self.asr, "drafts", False):  # a model loaded without drafts
            return self.asr.transcribe(audio)
        draft = self.drafts.draft(lid, audio)
        decoded = self.asr.transcribe(audio, draft)
        self.drafts.decoded(lid, audio, draft, decoded)
        return decoded

    def _transcribe_batch(self, items: list[tuple[str, Audio]]) -> list[Any]:
        """Partial segments, or finals of sessions not watched live, in one batch; an
        injected failure fails only its own line."""
        fail = injected_failures(lambda audio: None, self._fail_patterns)
        out: list[Any] = [None] * len(items)
        todo = []
        for i, (lid, _) in enumerate(items):
            try:
                fail(lid, None)
                todo.append(i)
            except StreamscribeError as exc:
                out[i] = exc
        if not getattr(self.asr, "drafts", False):  # a model loaded without drafts
            for i, decoded in zip(
                todo, self.asr.transcribe_batch([items[i][1] for i in todo]), strict=True
            ):
                out[i] = decoded
            return out
        drafts = [self.drafts.draft(items[i][0], items[i][1]) for i in todo]
        for i, draft, decoded in zip(
            todo,
            drafts,
            self.asr.transcribe_batch([items[i][1] for i in todo], drafts=drafts),
            strict=True,
        ):
            out[i] = decoded
            if not isinstance(decoded, Exception):
                self.drafts.decoded(items[i][0], items[i][1], draft, decoded)
        return out

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
            self._held.pop(lid, None)  # come again from the committed offset

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
                    ev.ack()
                    continue
                step = self.core.accept(msg, ev.message.partition)
                if await self._on_message(step, ev, msg.line_id):
                    ev.ack()

    async def _on_message(self, step: Accepted, ev: Any, lid: str) -> bool:
        """Apply one accepted step; False when a final task will ack the event later."""
        self._write(step.writes)
        decode = step.decode
        if step.discarded:  # new audio: a speculation still queued is of no use now
            self.scheduler.cancel_speculative(lid)
        if step.held:  # its audio is in memory only: acked with the line's final
            self._held.setdefault(lid, []).append(ev)
            return False
        if decode is None:
            return True
        if decode.speculative:
            start_speculation(self.scheduler, decode)
            return True
        if not decode.final:
            self.scheduler.submit_partial(
                decode.line_id, decode.job.segments, self._publisher(decode)
            )
            return True
        while len(self._pending) >= MAX_PENDING_FINALS:
            await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        channel = (decode.msg.session_id, decode.msg.channel)
        published: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = self._last_final.get(channel)
        task = asyncio.create_task(self._final(decode, ev, before, published))
        self._last_final[channel] = published
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(lambda _t: self._forget(channel, published))
        return False

    def _forget(self, channel: tuple[str, int], published: asyncio.Future[None]) -> None:
        if self._last_final.get(channel) is published:
            del self._last_final[channel]

    async def _final(
        self,
        decode: Decode,
        ev: Any,
        before: asyncio.Future[None] | None,
        published: asyncio.Future[None],
    ) -> None:
        """Decode, publish and store one final, then ack its event (module docstring).

        The order is what makes a SIGKILL anywhere in between harmless (a replay of the
        event then finds the line as it must): the final is delivered first; then the
        line's done marker is written and made durable (a flush); only then is its audio
        deleted; then the event is acked. A replay before the marker decodes the final
        again from its audio (the sink keeps one); after it, the final is late and only
        its leftover audio is deleted (:meth:`RecognizerCore.accept`).

        Anything escaping here is systemic: the process exits before the ack, as
        :func:`~streamscribe.processors.faust_app.guarded` does for the loop.
        """
        try:
            out = await final_outcome(self.scheduler, decode)
            if before is not None:
                await asyncio.shield(before)  # the channel's previous final goes out first
            with event_scope(ev):
                done = self.core.finish(
                    decode, out, source=(ev.message.partition, ev.message.offset)
                )
                sent = await self.topics.transcripts.send(
                    key=decode.msg.key, value=done.event.encode()
                )
                await sent  # delivered (acks=all) before anything says the line is done
                published.set_result(None)
                self.drafts.forget(decode.line_id)
                if done.dead_letter is not None:
                    await send_dead_letter(
                        self.topics,
                        ev,
                        stage=STAGE,
                        reason=done.dead_letter,
                        error_type=ASR_ERROR_TYPE,
                        session_id=decode.msg.session_id,
                    )
                self._write(w for w in done.writes if w.table == LINES_TABLE)
                await self.app.producer.flush()  # the done marker is durable ...
                self._write(w for w in done.writes if w.table != LINES_TABLE)  # ... audio goes
            ev.ack()
            for held in self._held.pop(decode.line_id, ()):
                held.ack()
        except Exception:
            log.critical("final of %s failed; exiting before ack", decode.line_id, exc_info=True)
            logging.shutdown()
            os._exit(EXIT_STAGE_FAILURE)
        if self.core.budget.exceeded():  # only a final's decode changes the budget
            log.critical(
                "ASR error rate over %.0f%% of the last %d decodes: stopping before the next "
                "event is acked",
                100 * self.settings.max_error_rate,
                len(self.core.budget.outcomes),
            )
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_ERROR_BUDGET)

    def retire(self) -> int:
        """Tombstone the done markers no replay needs any more (:meth:`RecognizerCore.retired`).

        Runs on a timer, outside any event, so each tombstone goes to the changelog
        partition the marker was written to (its final's partition) by hand. Nothing
        depends on it being durable: a marker whose tombstone is lost is found again by a
        later sweep. Returns how many went.
        """
        if self.app.rebalancing:
            return 0
        topic = self.topics.names.utterances
        committed = {
            tp.partition: offset
            for tp, offset in self.app.monitor.tp_committed_offsets.items()
            if tp.topic == topic
        }
        gone = self.core.retired(list(self.lines.items()), committed)
        for partition, lid in gone:
            self.lines.send_changelog(partition, lid, None, value_serializer="raw")
            self.lines.data.pop(lid, None)
        self.core.stats.retired += len(gone)
        return len(gone)

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
