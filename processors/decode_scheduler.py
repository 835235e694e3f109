"""One decode queue per worker, shared by all sessions: finals first, partials coalesced.

Order of service: finals, then speculative finals (:meth:`DecodeScheduler.
submit_speculative`: a final decode started on an end-candidate update, not awaited by the
loop; :meth:`~DecodeScheduler.promote` moves it among the finals when its real final
arrives, :meth:`~DecodeScheduler.cancel_speculative` drops it while still queued), then
partials. The finals slot serves speculative finals too.

``workers`` decodes run at a time, each in the ASR thread pool (never on the event loop).
A final is never dropped and jumps ahead of every waiting partial. A partial replaces the
waiting partial of the same line (only the newest is decoded; it keeps the line's place,
so lines are served in the order their wait began), and a partial whose request waited
longer than the policy allows is shed, and with two or more decode slots all but one
decode finals only — so when the worker falls behind, the partial rate of each line falls
and finals keep their latency. (Partial batches may run on a thread of lower OS priority,
:func:`lower_thread_priority`, ``partial_nice``; off by default: measured, it made finals
later — a low-priority thread preempted while it holds the GIL stalls the others.)
A failed decode is retried ``retries`` times (tenacity); the last error is reported in
the :class:`DecodeOutcome`, never raised.

**Partials are decoded in batches**: a slot that takes a partial also takes the other
waiting partials (up to ``batch_max``) and decodes all their segments in one call of
``decode_batch`` (``MoonshineAsr.transcribe_batch``: one decoder run per step for the whole
batch, so under load a partial costs much less than alone). A partial's outcome holds one
result per segment. Finals are decoded one by one (``decode``), so a final is exactly the
offline transcription of its audio -- except the finals of sessions not watched live
(``decode_final(..., batch=True)``: a recording replayed as fast as it is read), which are
decoded in batches of up to ``final_batch_max`` when several wait: measured on the bundled
recordings' utterances, a batch of 8 costs 0.61 of decoding them alone, and about one
final in ten then differs from its offline text in a near-tie token (mostly punctuation).
Live finals are batched the same way only when the worker is behind: once the final taken
had waited ``behind_after_s`` in the queue, the finals waiting with it (speculations
excepted) join its batch, because they would all be late otherwise.
A replay's finals are gathered first (``gather_s``): a slot that would start a batch of
fewer than ``final_batch_max`` of them, while nothing else waits, leaves them queued until
the batch is full or the oldest has waited ``gather_s``.

Example::

    sched = DecodeScheduler(decode_fn, executor, workers=2, decode_batch=batch_fn)
    await sched.start()
    sched.submit_partial("s/0/3", [audio], on_done)   # fire and forget
    outcome = await sched.decode_final("s/0/3", audio)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

log = logging.getLogger(__name__)

DecodeFn = Callable[[str, Any], Any]  # (line_id, audio) -> decoded; runs in the executor
BatchFn = Callable[[list[tuple[str, Any]]], list[Any]]
"""[(line_id, audio)] -> a decoded result or the exception, per item; runs in the executor."""


ANY: Final = "any"  # a slot's mode: finals first, then partials
FINALS: Final = "finals"  # finals and speculative finals only
PARTIALS: Final = "partials"  # partials only


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (a thread pool's initializer).

    On Linux a thread is a task of its own, so this lowers only that thread's priority;
    elsewhere it would lower the whole process, so it does nothing there.
    """
    if nice > 0 and sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


@dataclass
class DecodeOutcome:
    result: Any = None
    error: BaseException | None = None
    start_us: int = 0
    end_us: int = 0
    waited_s: float = 0.0
    speculative: bool = False  # the outcome of a speculative final decode


@dataclass
class _Job:
    line_id: str
    audio: Any
    final: bool
    queued_at: float = field(default_factory=time.monotonic)  # its line's wait began
    submitted_at: float = field(default_factory=time.monotonic)  # this request came
    future: asyncio.Future[DecodeOutcome] | None = None
    on_done: Callable[[DecodeOutcome], Awaitable[None]] | None = None
    speculative: bool = False
    batch: bool = False  # a final that may be decoded in a batch (session not watched live)


@dataclass
class SchedulerStats:
    finals: int = 0
    partials: int = 0
    coalesced: int = 0
    shed: int = 0
    retries: int = 0
    speculative: int = 0  # speculative final decodes run
    speculative_dropped: int = 0  # dropped while queued (speech resumed)
    partial_batches: int = 0  # decode_batch calls (partials / partial_batches = mean batch)
    speculative_skipped: int = 0  # not started: every finals slot was busy
    final_batches: int = 0  # batched decoder runs of finals (replays; live ones while behind)
    batched_finals: int = 0  # finals decoded in those (batched_finals / final_batches)
    behind_batches: int = 0  # of those, batches of live finals (the worker was behind)


class DecodeScheduler:
    """The decode queue of one worker (see the module docstring)."""

    def __init__(
        self,
        decode: DecodeFn,
        executor: Executor,
        *,
        workers: int = 2,
        stale_after_s: float = 1.5,
        retries: int = 1,
        decode_batch: BatchFn | None = None,
        batch_max: int = 16,
        partial_executor: Executor | None = None,
        final_batch_max: int = 1,
        behind_after_s: float | None = None,
        gather_s: float = 0.0,
    ) -> None:
        self.decode = decode
        self.decode_batch = decode_batch or self._one_by_one
        self.decode_final_batch = self.decode_batch  # untimed: metrics wrap decode_batch
        self.batch_max = max(1, batch_max)
        self.final_batch_max = max(1, final_batch_max)
        # A live final that waited this long means the worker is behind: the finals waiting
        # then are decoded in one batch (None: live finals always alone).
        self.behind_after_s = behind_after_s
        # A replay's batch of finals waits up to this long (from its oldest final's arrival)
        # to fill up, while nothing else waits (0: take what is there).
        self.gather_s = gather_s
        self.executor = executor
        self.partial_executor = partial_executor or executor
        self.workers = workers
        self.stale_after_s = stale_after_s
        self.retries = retries
        self.stats = SchedulerStats()
        self._finals: deque[_Job] = deque()
        self._partials: OrderedDict[str, _Job] = OrderedDict()
        self._speculative: OrderedDict[str, _Job] = OrderedDict()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._final_slots = 0

    async def start(self) -> None:
        if not self._tasks:
            # With two or more decode slots, all but one decode finals only (a final never
            # waits behind a partial decode) and one decodes finals first, then partials
            # (batches on ``partial_executor`` when given).
            split = [FINALS] * (self.workers - 1) + [ANY]
            modes = split if self.workers >= 2 else [ANY]
            self._final_slots = len(modes)
            self._tasks = [asyncio.create_task(self._loop(mode)) for mode in modes]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    @property
    def backlog(self) -> int:
        return len(self._finals) + len(self._speculative) + len(self._partials)

    async def _wait_for_work(self, timeout_s: float | None = None) -> None:
        """Sleep until a job is submitted (every idle slot wakes and looks), or at most
        ``timeout_s``."""
        event = self._wake
        if timeout_s is None:
            await event.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def _notify(self) -> None:
        """Wake every idle slot: swap in a fresh event and set the old one."""
        event, self._wake = self._wake, asyncio.Event()
        event.set()

    def submit_partial(
        self,
        line_id: str,
        segments: Sequence[Any],
        on_done: Callable[[DecodeOutcome], Awaitable[None]],
    ) -> None:
        """Queue a partial decode of ``segments`` (replacing the line's waiting partial).

        The newer request takes the waiting one's place in the queue: lines are served in
        the order their wait began, so under load every line's partials stretch alike.
        (Moved to the back instead, a line that updates while it waits could be passed
        over again and again: measured at 48 sessions, 40 % of the lines longer than
        1.5 s got no partial at all.)
        """
        job = _Job(line_id, tuple(segments), final=False, on_done=on_done)
        waiting = self._partials.get(line_id)
        if waiting is not None:
            self.stats.coalesced += 1
            job.queued_at = waiting.queued_at
        self._partials[line_id] = job  # a key already there keeps its position
        self._notify()

    def cancel_partials(self, line_id: str) -> None:
        self._partials.pop(line_id, None)

    def finals_idle(self) -> bool:
        """Whether no final waits and the speculations waiting fit the slots.

        Speculation is skipped otherwise (:func:`~streamscribe.processors.speculation.
        start_speculation`): under load a speculative decode that speech then resumes over
        would delay real finals; the final is then decoded when it comes.
        """
        return not self._finals and len(self._speculative) < max(self._final_slots, 1)

    def submit_speculative(self, line_id: str, audio: Any) -> asyncio.Future[DecodeOutcome]:
        """Queue a speculative final decode (ahead of partials); its outcome's future.

        Never blocks: the caller keeps the future and awaits it only if the real final
        comes with the same audio. A newer speculation of the line replaces a queued one.
        """
        self.cancel_partials(line_id)
        self.cancel_speculative(line_id)
        fut: asyncio.Future[DecodeOutcome] = asyncio.get_running_loop().create_future()
        self._speculative[line_id] = _Job(line_id, audio, True, future=fut, speculative=True)
        self._notify()
        return fut

    def cancel_speculative(self, line_id: str) -> None:
        """Drop the line's speculation if it has not started (its future is cancelled)."""
        job = self._speculative.pop(line_id, None)
        if job is not None:
            self.stats.speculative_dropped += 1
            if job.future is not None:
                job.future.cancel()

    def promote(self, line_id: str) -> None:
        """The line's final arrived: its queued speculation waits among the finals now."""
        job = self._speculative.pop(line_id, None)
        if job is not None:
            self._finals.append(job)

    async def decode_final(self, line_id: str, audio: Any, *, batch: bool = False) -> DecodeOutcome:
        """Queue a final and wait for its outcome.

        ``batch``: the line's session is not watched live; waiting finals of such sessions
        are decoded together (``decode_batch``, up to ``final_batch_max``). A final whose
        batch item failed is decoded again alone, with the retries.
        """
        self.cancel_partials(line_id)
        fut: asyncio.Future[DecodeOutcome] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(line_id, audio, final=True, future=fut, batch=batch))
        self._notify()
        await self.start()
        return await fut

    def _one_by_one(self, items: list[tuple[str, Any]]) -> list[Any]:
        """``decode_batch`` when none is given: ``decode`` on each item."""
        out: list[Any] = []
        for lid, audio in items:
            try:
                out.append(self.decode(lid, audio))
            except Exception as exc:  # reported per item, like a batch decoder does
                out.append(exc)
        return out

    def _more_partials(self, limit: int) -> list[_Job]:
        """Up to ``limit`` more waiting partials whose request is not stale (longest
        waiting first)."""
        now, jobs = time.monotonic(), list[_Job]()
        while self._partials and len(jobs) < limit:
            _, job = self._partials.popitem(last=False)
            if now - job.submitted_at <= self.stale_after_s:
                jobs.append(job)
            else:
                self.stats.shed += 1
        return jobs

    async def _run_partials(self, jobs: list[_Job]) -> None:
        """Decode the segments of ``jobs`` in one batch; each job's outcome to its callback."""
        items = [(job.line_id, seg) for job in jobs for seg in job.audio]
        picked = time.monotonic()
        start_us = time.time_ns() // 1000
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.partial_executor, self.decode_batch, items
            )
        except Exception as exc:  # the whole batch failed: every partial reports it
            results = [exc] * len(items)
        end_us = time.time_ns() // 1000
        self.stats.partial_batches += 1
        i = 0
        for job in jobs:
            mine = results[i : i + len(job.audio)]
            i += len(job.audio)
            out = DecodeOutcome(start_us=start_us, end_us=end_us, waited_s=picked - job.queued_at)
            errors = [r for r in mine if isinstance(r, BaseException)]
            if errors:
                out.error = errors[0]
            else:
                out.result = list(mine)
            self.stats.partials += 1
            if job.on_done is not None:
                try:
                    await job.on_done(out)
                except Exception:
                    log.exception("publishing the partial of %s failed", job.line_id)

    def _next(self, mode: str = ANY) -> _Job | None:
        if mode != PARTIALS:
            if self._finals:
                return self._finals.popleft()
            if self._speculative:
                return self._speculative.popitem(last=False)[1]
            if mode == FINALS:
                return None
        jobs = self._more_partials(1)
        return jobs[0] if jobs else None

    async def _decode_with_retries(self, job: _Job) -> Any:
        """Run the decode in the executor; a failure is retried ``retries`` times."""
        loop = asyncio.get_running_loop()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            retry=retry_if_exception_type(Exception),
            after=lambda state: log.warning(
                "decode of %s failed (attempt %d): %s",
                job.line_id,
                state.attempt_number,
                state.outcome.exception() if state.outcome else None,
            ),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await loop.run_in_executor(
                    self.executor, self.decode, job.line_id, job.audio
                )
        raise AssertionError("unreachable: tenacity returns or re-raises")  # pragma: no cover

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    def _behind(self, job: _Job) -> bool:
        """Whether live final ``job`` waited so long that the worker is behind."""
        return (
            self.behind_after_s is not None
            and not job.speculative
            and time.monotonic() - job.queued_at >= self.behind_after_s
        )

    def _gather_left_s(self, job: _Job) -> float:
        """How much longer replay final ``job`` (just taken) should wait for its batch to
        fill: 0 once the batch would be full, the oldest waited ``gather_s``, or anything
        that is not a replay final waits (a live final or a speculation goes first)."""
        if self.gather_s <= 0 or not job.batch or self.final_batch_max <= 1:
            return 0.0
        left = self.gather_s - (time.monotonic() - job.queued_at)
        if left <= 0 or self._speculative or self._partials:
            return 0.0
        if len(self._finals) + 1 >= self.final_batch_max:
            return 0.0
        if not all(j.batch for j in self._finals):
            return 0.0
        return left

    def _more_batch_finals(
        self, limit: int, *, behind: bool = False, like: _Job | None = None
    ) -> list[_Job]:
        """Up to ``limit`` more waiting batchable finals (queue order; the others keep
        their places); ``behind``: every waiting final that is not a speculation.

        ``like`` (the replay final that heads the batch): when more than ``limit`` wait,
        those closest to its length. A batch pads every row to its longest (the decoder
        attends to the padded encoder frames at every step), so rows of like length cost
        less (offline, 90 utterances in batches of 8: 10-25 % less CPU than queue order;
        in a replay within the box's noise, ``bench/README.md``). Nobody waits for ever:
        the head of the queue is always in its batch.
        """

        def fits(j: _Job) -> bool:
            return j.batch or (behind and not j.speculative)

        candidates = [j for j in self._finals if fits(j)]
        if limit <= 0 or not candidates:
            return []
        if like is not None and len(candidates) > limit:
            n = _length(like.audio)  # sorted() is stable: a tie goes to the older
            candidates = sorted(candidates, key=lambda j: abs(_length(j.audio) - n))
        chosen = {id(j) for j in candidates[:limit]}
        taken = [j for j in self._finals if id(j) in chosen]
        self._finals = deque(j for j in self._finals if id(j) not in chosen)
        return taken

    async def _run_final_batch(self, jobs: list[_Job]) -> None:
        """Decode the finals of ``jobs`` in one batch; an item that failed (or a batch that
        failed as a whole) is decoded again alone, with the retries."""
        start_us = time.time_ns() // 1000
        picked = time.monotonic()
        items = [(job.line_id, job.audio) for job in jobs]
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.decode_final_batch, items
            )
        except Exception as exc:  # the whole batch failed: each final is tried alone
            log.warning("batch of %d finals failed, decoding them one by one: %s", len(jobs), exc)
            results = [exc] * len(jobs)
        end_us = time.time_ns() // 1000
        self.stats.final_batches += 1
        if not all(job.batch for job in jobs):
            self.stats.behind_batches += 1
        for job, result in zip(jobs, results, strict=True):
            out = DecodeOutcome(start_us=start_us, end_us=end_us, waited_s=picked - job.queued_at)
            if isinstance(result, BaseException):
                await self._decode_alone(job, out)
            else:
                out.result = result
                self.stats.batched_finals += 1
            self.stats.finals += 1
            if job.future is not None and not job.future.done():
                job.future.set_result(out)

    async def _decode_alone(self, job: _Job, out: DecodeOutcome) -> None:
        """Decode ``job`` alone with the retries into ``out`` (result or error, times)."""
        out.start_us = time.time_ns() // 1000
        try:
            out.result = await self._decode_with_retries(job)
        except Exception as exc:  # the model failed after its retries: reported
            out.error = exc
        out.end_us = time.time_ns() // 1000

    async def _loop(self, mode: str = ANY) -> None:
        while True:
            job = self._next(mode)
            if job is None:
                await self._wait_for_work()
                continue
            if not job.final:
                await self._run_partials([job, *self._more_partials(self.batch_max - 1)])
                continue
            if left := self._gather_left_s(job):
                self._finals.appendleft(job)  # back in its place until the batch fills
                await self._wait_for_work(left)
                continue
            behind = self._behind(job)
            if (job.batch or behind) and self.final_batch_max > 1:
                like = job if job.batch and not behind else None
                more = self._more_batch_finals(self.final_batch_max - 1, behind=behind, like=like)
                if more:
                    await self._run_final_batch([job, *more])
                    continue
            out = DecodeOutcome(waited_s=time.monotonic() - job.queued_at)
            out.speculative = job.speculative
            await self._decode_alone(job, out)
            if job.speculative:
                self.stats.speculative += 1
            else:
                self.stats.finals += 1
            if job.future is not None and not job.future.done():
                job.future.set_result(out)


def _length(audio: Any) -> int:
    """Samples of a job's audio (0 for what has no length: the tests' stand-ins)."""
    return len(audio) if hasattr(audio, "__len__") else 0
