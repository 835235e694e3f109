"""The recognizer agent: a thin faust loop around the ASR core and :mod:`recognizer_core`.

Reads ``streamscribe.utterances`` (raw bytes) one event at a time. Each part of a line is
stored once in the ``recognizer-audio`` table (a replayed part is dropped by its ``part``
index), the line's small state in ``recognizer-lines``.

- A **final** is decoded before the loop moves on (faust acks the event only then), so a
  crash can never lose it: after a restart the final message is read again and decoded.
  It goes through the worker's :class:`DecodeScheduler` ahead of every partial.
- A **partial** is handed to the scheduler and the loop goes on: partials of a line are
  coalesced, stale ones shed; the published partial goes straight to the transcripts topic.
  The line's stabiliser lives in memory and is snapshotted into the line state whenever a
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
import fnmatch
import json
import logging
import os
import sys
from concurrent.futures import Executor
from typing import Any

import faust
import numpy as np

from streamscribe.core.errors import AsrError, ContractError, StreamscribeError
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
    RATE,
    ErrorBudget,
    LineState,
    PartialPolicy,
    Verdict,
    accept_part,
    piece_key,
)
from streamscribe.processors.stabilize import LineStabilizer
from streamscribe.schemas.events import now_us
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript
from streamscribe.schemas.utterances import KIND_FINAL, UtteranceMessage, line_id

log = logging.getLogger(__name__)

STAGE = "recognizer"
EXIT_ERROR_BUDGET = 3


class RecognizerStage:
    def __init__(
        self, app: faust.App, settings: Settings, topics: StageTopics, executor: Executor
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.executor = executor
        self.asr: Any = None
        self.policy = PartialPolicy(
            interval_samples=int(settings.update_interval_s * RATE),
            growth=settings.partial_growth,
            stale_after_s=settings.partial_stale_s,
        )
        self.budget = ErrorBudget(settings.max_error_rate)
        self.fail_patterns = [p for p in settings.asr_fail_lines.split(",") if p]
        self.scheduler = DecodeScheduler(
            self._transcribe,
            executor,
            workers=settings.asr_workers,
            stale_after_s=settings.partial_stale_s,
        )
        self.stabilizers: dict[str, LineStabilizer] = {}
        self.finished: set[str] = set()  # lines finalised in this process
        p = settings.partitions
        self.lines = app.Table("recognizer-lines", partitions=p, default=None)
        self.pieces = app.Table("recognizer-audio", partitions=p, default=None, value_type=bytes)
        self.stats = {"finals": 0, "partials": 0, "duplicates": 0, "errors": 0, "foreign": 0}

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

    # ------------------------------------------------------------------ events
    async def handle(self, events: list[Any]) -> None:
        await self.ensure_asr()
        for ev in events:
            with event_scope(ev):
                try:
                    msg = self._decode(ev)
                except StreamscribeError as err:
                    await dead_letter_for(self.topics, ev, err, stage=STAGE)
                    continue
                await self._on_message(msg, ev)
        if self.budget.exceeded():
            log.critical(
                "ASR error rate over %.0f%% of the last %d decodes: stopping before the event "
                "is acked",
                100 * self.settings.max_error_rate,
                len(self.budget.outcomes),
            )
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_ERROR_BUDGET)

    def _decode(self, ev: Any) -> UtteranceMessage:
        msg = UtteranceMessage.decode(ev.message.value)
        key = ev.message.key
        if key is None or bytes(key).decode("utf-8", "replace") != msg.session_id:
            raise ContractError(f"message key {key!r} is not the session id", raw=ev.message.value)
        return msg

    async def _on_message(self, msg: UtteranceMessage, ev: Any) -> None:
        if msg.origin is not None and msg.origin != self.settings.group_id:
            self.stats["foreign"] += 1  # another processor group's segmentation
            return
        lid = msg.line_id
        doc = self.lines.get(lid)
        line = LineState.from_dict(doc) if doc else None
        if accept_part(line, msg.part) != Verdict.ACCEPT:
            self.stats["duplicates"] += 1
            return
        if line is None:
            line = LineState(
                role=msg.role, start_sample=msg.start_sample, end_sample=msg.start_sample
            )
        if msg.part > line.next_part:
            line.missing_parts += msg.part - line.next_part
            log.warning("line %s: parts %d..%d missing", lid, line.next_part, msg.part - 1)
        self.pieces[piece_key(lid, msg.part)] = msg.payload
        line.next_part = msg.part + 1
        line.end_sample = max(line.end_sample, msg.end_sample)
        stab = self._stabilizer(lid, line)
        line.stabilizer = stab.to_dict()
        if msg.kind == KIND_FINAL:
            await self._final(lid, line, msg, ev)
            return
        if self.policy.due(line.decoded_samples, line.audio_samples):
            line.decoded_samples = line.audio_samples
            self.scheduler.submit_partial(
                lid, self._audio(lid, line), self._partial_publisher(lid, line, msg)
            )
        self.lines[lid] = line.to_dict()

    def _stabilizer(self, lid: str, line: LineState) -> LineStabilizer:
        stab = self.stabilizers.get(lid)
        if stab is None:
            stab = LineStabilizer.from_dict(line.stabilizer)
            self.stabilizers[lid] = stab
        return stab

    def _audio(self, lid: str, line: LineState) -> np.ndarray[Any, Any]:
        pieces = [self.pieces.get(piece_key(lid, i)) for i in range(line.next_part)]
        pcm = b"".join(p for p in pieces if p)
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768.0)

    def _transcribe(self, lid: str, audio: np.ndarray[Any, Any]) -> Any:
        if any(fnmatch.fnmatchcase(lid, p) for p in self.fail_patterns):
            raise AsrError(f"injected inference failure for line {lid}")
        return self.asr.transcribe(audio)

    # ---------------------------------------------------------------- publish
    @staticmethod
    def _timestamps(msg: UtteranceMessage, out: DecodeOutcome) -> dict[str, int]:
        ts = {
            "captured_at_us": msg.captured_at_us,
            "broker_at_us": msg.broker_at_us,
            "received_at_us": msg.received_at_us,
            "decided_at_us": msg.decided_at_us,
            "decode_start_us": out.start_us,
            "decode_end_us": out.end_us,
        }
        return {k: int(v) for k, v in ts.items() if v and v > 0}

    def _partial_publisher(self, lid: str, line: LineState, msg: UtteranceMessage) -> Any:
        samples = line.audio_samples
        start_sample, role = line.start_sample, line.role

        async def publish(out: DecodeOutcome) -> None:
            if out.error is not None or lid in self.finished:
                return
            stab = self.stabilizers.get(lid)
            if stab is None or stab.closed:
                return
            view = stab.update(out.result.text)
            ts = self._timestamps(msg, out)
            ts["published_at_us"] = now_us()
            event = PartialTranscript(
                session_id=msg.session_id,
                channel=msg.channel,
                role=role,
                utterance=msg.utterance,
                revision=view.revision,
                text=view.text,
                stable_text=view.stable_text,
                start_ms=start_sample * 1000 / RATE,
                end_ms=(start_sample + samples) * 1000 / RATE,
                confidence=out.result.confidence,
                timestamps=ts,
                degraded=msg.degraded,
            )
            await self.topics.transcripts.send(key=msg.key, value=event.encode())
            self.stats["partials"] += 1

        return publish

    async def _final(self, lid: str, line: LineState, msg: UtteranceMessage, ev: Any) -> None:
        out = await self.scheduler.decode_final(lid, self._audio(lid, line))
        self.budget.record(out.error is None)
        stab = self.stabilizers.pop(lid, None) or LineStabilizer.from_dict(line.stabilizer)
        error = None if out.error is None else f"{type(out.error).__name__}: {out.error}"
        text = out.result.text if out.error is None else stab.stable_text
        view = stab.finalize(text)
        ts = self._timestamps(msg, out)
        ts["published_at_us"] = now_us()
        event = FinalTranscript(
            session_id=msg.session_id,
            channel=msg.channel,
            role=line.role,
            utterance=msg.utterance,
            revision=view.revision,
            text=view.text,
            start_ms=msg.start_sample * 1000 / RATE,
            end_ms=msg.end_sample * 1000 / RATE,
            confidence=None if out.error is not None else out.result.confidence,
            error=error,
            timestamps=ts,
            summary=json.loads(msg.summary_json) if msg.summary_json else None,
            degraded=msg.degraded or line.missing_parts > 0,
            reason=msg.reason,
        )
        await self.topics.transcripts.send(key=msg.key, value=event.encode())
        if error is not None:
            self.stats["errors"] += 1
            await send_dead_letter(
                self.topics,
                ev,
                stage=STAGE,
                reason=f"line {lid}: {error}",
                error_type="AsrError",
                session_id=msg.session_id,
            )
        for i in range(line.next_part):
            self.pieces.pop(piece_key(lid, i), None)
        # A small "done" marker makes a replayed part of this line recognisable as late;
        # the marker of the line before it is no longer needed.
        done = LineState(line.role, line.start_sample, done=True, stabilizer={})
        self.lines[lid] = done.to_dict()
        if msg.utterance > 0:
            self.lines.pop(line_id(msg.session_id, msg.channel, msg.utterance - 1), None)
        self.finished.add(lid)
        if len(self.finished) > 10_000:
            self.finished.clear()
        self.stats["finals"] += 1
