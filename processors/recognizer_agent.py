"""The recognizer agent: a thin faust loop around the ASR core and :mod:`recognizer_core`.

Reads ``streamscribe.utterances`` (raw bytes) in batches. Each part of a line is stored
once in the ``recognizer-audio`` table (a replayed part is dropped by its ``part`` index),
the line's small state in ``recognizer-lines``. Then one decode queue for the whole worker:
finals first, then at most one partial per line (the newest, coalesced), partials shed
when stale; decodes run in the ASR thread pool (one ORT thread each), never on the event
loop. Results go to ``streamscribe.transcripts`` as :class:`PartialTranscript` /
:class:`FinalTranscript`. A decode error is retried once; then the line is finalised with
an error flag and a dead letter, and the session goes on. When the error rate passes
``max_error_rate`` the worker exits non-zero before acking the batch.

See :mod:`streamscribe.processors.faust_app` for the delivery guarantee.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import sys
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import faust
import numpy as np

from streamscribe.processors.faust_app import (
    StageTopics,
    dead_letter_for,
    event_scope,
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
from streamscribe.schemas.errors import AsrError, ContractError, StreamscribeError
from streamscribe.schemas.events import now_us
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript
from streamscribe.schemas.utterances import KIND_FINAL, UtteranceMessage, line_id
from streamscribe.settings import Settings

log = logging.getLogger(__name__)

STAGE = "recognizer"
BATCH_MAX = 64
BATCH_WITHIN_S = 0.01
EXIT_ERROR_BUDGET = 3


@dataclass
class Job:
    line_id: str
    line: LineState
    msg: UtteranceMessage  # the newest message of the line in this batch
    event: Any
    final: bool
    samples: int


@dataclass
class Outcome:
    text: str = ""
    confidence: float | None = None
    error: str | None = None
    decode_start_us: int = 0
    decode_end_us: int = 0


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
        p = settings.partitions
        self.lines = app.Table(
            "recognizer-lines", partitions=p, default=None, key_type=str, value_type=dict
        )
        self.pieces = app.Table(
            "recognizer-audio", partitions=p, default=None, key_type=str, value_type=bytes
        )
        self.stats = {"finals": 0, "partials": 0, "shed": 0, "duplicates": 0, "errors": 0}

        @app.agent(topics.utterances, name="recognizer", concurrency=1)
        async def recognizer(stream: Any) -> None:
            async for events in stream.take_events(BATCH_MAX, BATCH_WITHIN_S):
                await self.handle(events)

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
            log.info("ASR model loaded and warmed up")
        return self.asr

    # ------------------------------------------------------------------ batch
    async def handle(self, events: list[Any]) -> None:
        await self.ensure_asr()
        touched: OrderedDict[str, Job] = OrderedDict()
        for ev in events:
            with event_scope(ev):
                try:
                    msg = self._decode(ev)
                except StreamscribeError as err:
                    await dead_letter_for(self.topics, ev, err, stage=STAGE)
                    continue
                self._absorb(msg, ev, touched)
        now = now_us()
        jobs: list[Job] = []
        for job in touched.values():
            if job.final:
                jobs.append(job)
            elif self.policy.due(job.line.decoded_samples, job.samples) and self.policy.fresh(
                job.msg.decided_at_us, now
            ):
                jobs.append(job)
            else:
                self.stats["shed"] += 1
        jobs.sort(key=lambda j: not j.final)  # finals first in the pool's queue
        outcomes = await asyncio.gather(*(self._run(job) for job in jobs))
        for job, outcome in zip(jobs, outcomes, strict=True):
            with event_scope(job.event):
                if job.final:
                    await self._publish_final(job, outcome)
                elif outcome.error is None:
                    await self._publish_partial(job, outcome)
        if self.budget.exceeded():
            log.critical(
                "ASR error rate over %.0f%% of the last %d decodes: stopping before the batch "
                "is acked", 100 * self.settings.max_error_rate, len(self.budget.outcomes),
            )
            sys.stderr.flush()
            os._exit(EXIT_ERROR_BUDGET)

    def _decode(self, ev: Any) -> UtteranceMessage:
        msg = UtteranceMessage.decode(ev.message.value)
        key = ev.message.key
        if key is None or bytes(key).decode("utf-8", "replace") != msg.session_id:
            raise ContractError(f"message key {key!r} is not the session id", raw=ev.message.value)
        return msg

    def _absorb(self, msg: UtteranceMessage, ev: Any, touched: OrderedDict[str, Job]) -> None:
        lid = msg.line_id
        doc = self.lines.get(lid)
        line = LineState.from_dict(doc) if doc else None
        verdict = accept_part(line, msg.part)
        if verdict != Verdict.ACCEPT:
            self.stats["duplicates"] += 1
            return
        if line is None:
            line = LineState(role=msg.role, start_sample=msg.start_sample, end_sample=msg.start_sample)
        if msg.part > line.next_part:
            line.missing_parts += msg.part - line.next_part
            log.warning("line %s: parts %d..%d missing", lid, line.next_part, msg.part - 1)
        self.pieces[piece_key(lid, msg.part)] = msg.payload
        line.next_part = msg.part + 1
        line.end_sample = max(line.end_sample, msg.end_sample)
        self.lines[lid] = line.to_dict()
        prev = touched.get(lid)
        final = msg.kind == KIND_FINAL or (prev is not None and prev.final)
        touched[lid] = Job(lid, line, msg, ev, final, line.audio_samples)

    # ----------------------------------------------------------------- decode
    def _audio(self, job: Job) -> np.ndarray[Any, Any]:
        pieces = [self.pieces.get(piece_key(job.line_id, i)) for i in range(job.line.next_part)]
        pcm = b"".join(p for p in pieces if p)
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768.0)

    def _transcribe(self, job: Job, audio: np.ndarray[Any, Any]) -> Any:
        if any(fnmatch.fnmatchcase(job.line_id, p) for p in self.fail_patterns):
            raise AsrError(f"injected inference failure for line {job.line_id}")
        return self.asr.transcribe(audio)

    async def _run(self, job: Job) -> Outcome:
        audio = self._audio(job)
        loop = asyncio.get_running_loop()
        out = Outcome(decode_start_us=now_us())
        last_error: Exception | None = None
        for _attempt in range(2):
            try:
                decoded = await loop.run_in_executor(self.executor, self._transcribe, job, audio)
            except (StreamscribeError, RuntimeError, ValueError) as exc:  # ORT raises these
                last_error = exc
                log.warning("decode of %s failed: %s", job.line_id, exc)
                continue
            out.text, out.confidence = decoded.text, decoded.confidence
            break
        out.decode_end_us = now_us()
        ok = out.confidence is not None
        self.budget.record(ok)
        if not ok:
            out.error = f"{type(last_error).__name__}: {last_error}"
            self.stats["errors"] += 1
        return out

    # ---------------------------------------------------------------- publish
    def _timestamps(self, msg: UtteranceMessage, out: Outcome) -> dict[str, int]:
        ts = {
            "captured_at_us": msg.captured_at_us,
            "broker_at_us": msg.broker_at_us,
            "received_at_us": msg.received_at_us,
            "decided_at_us": msg.decided_at_us,
            "decode_start_us": out.decode_start_us,
            "decode_end_us": out.decode_end_us,
        }
        return {k: int(v) for k, v in ts.items() if v and v > 0}

    async def _publish_partial(self, job: Job, out: Outcome) -> None:
        stab = LineStabilizer.from_dict(job.line.stabilizer)
        view = stab.update(out.text)
        job.line.stabilizer = stab.to_dict()
        job.line.decoded_samples = job.samples
        self.lines[job.line_id] = job.line.to_dict()
        ts = self._timestamps(job.msg, out)
        ts["published_at_us"] = now_us()
        event = PartialTranscript(
            session_id=job.msg.session_id, channel=job.msg.channel, role=job.line.role,
            utterance=job.msg.utterance, revision=view.revision, text=view.text,
            stable_text=view.stable_text, start_ms=job.line.start_sample * 1000 / RATE,
            end_ms=(job.line.start_sample + job.samples) * 1000 / RATE,
            confidence=out.confidence, timestamps=ts, degraded=job.msg.degraded,
        )
        await self.topics.transcripts.send(key=job.msg.key, value=event.encode())
        self.stats["partials"] += 1

    async def _publish_final(self, job: Job, out: Outcome) -> None:
        msg = job.msg
        stab = LineStabilizer.from_dict(job.line.stabilizer)
        text = out.text if out.error is None else stab.stable_text
        view = stab.finalize(text)
        ts = self._timestamps(msg, out)
        ts["published_at_us"] = now_us()
        event = FinalTranscript(
            session_id=msg.session_id, channel=msg.channel, role=job.line.role,
            utterance=msg.utterance, revision=view.revision, text=view.text,
            start_ms=msg.start_sample * 1000 / RATE, end_ms=msg.end_sample * 1000 / RATE,
            confidence=out.confidence, error=out.error, timestamps=ts,
            summary=json.loads(msg.summary_json) if msg.summary_json else None,
            degraded=msg.degraded or job.line.missing_parts > 0, reason=msg.reason,
        )
        await self.topics.transcripts.send(key=msg.key, value=event.encode())
        if out.error is not None:
            await send_dead_letter(
                self.topics, job.event, stage=STAGE, reason=f"line {job.line_id}: {out.error}",
                error_type="AsrError", session_id=msg.session_id,
            )
        for i in range(job.line.next_part):
            self.pieces.pop(piece_key(job.line_id, i), None)
        # keep a small "done" marker so a replayed part of this line is recognised as late;
        # the marker of the line before it is no longer needed.
        self.lines[job.line_id] = {**LineState(job.line.role, job.line.start_sample).to_dict(),
                                   "done": True, "stabilizer": {}}
        if msg.utterance > 0:
            self.lines.pop(line_id(msg.session_id, msg.channel, msg.utterance - 1), None)
        self.stats["finals"] += 1
