"""Speculative finals at the edge of the decode queue: start one, and finish a final with it.

The core (:class:`~streamscribe.processors.recognizer_core.RecognizerCore`) decides *when*:
an end-candidate update gives a ``Decode`` with ``speculative`` set, and a final whose audio
is exactly that decode's carries its :class:`~streamscribe.processors.recognizer_line.
Speculation`. These two helpers do the asynchronous part with the worker's
:class:`~streamscribe.processors.decode_scheduler.DecodeScheduler`:

- :func:`start_speculation` queues the decode (final priority, ahead of partials) and keeps
  its future in the line's speculation. It never waits: the loop goes on and acks.
- :func:`final_outcome` is what a final awaits: the speculation's outcome when there is
  one that did not fail (awaiting it if it is still running, moving it among the finals if
  it is still queued), else a fresh decode of the final's audio. The caller publishes the
  final only after this returns, so the delivery guarantee is unchanged.

Example (a fake decode that counts its calls: the final reuses the speculation)::

    >>> import asyncio
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> from streamscribe.processors.decode_scheduler import DecodeScheduler
    >>> from streamscribe.processors.recognizer_core import Decode
    >>> from streamscribe.processors.recognizer_line import RecognizerLine, Speculation
    >>> calls = []
    >>> def decode(lid, audio):
    ...     calls.append(lid)
    ...     return "text"
    >>> line = RecognizerLine("agent", 0)
    >>> spec = Speculation(0, 0)
    >>> async def main():
    ...     sched = DecodeScheduler(decode, ThreadPoolExecutor(1), workers=1)
    ...     await sched.start()
    ...     start_speculation(sched, Decode("s/0/0", line.job(final=True), None,
    ...                                     speculative=True, speculation=spec))
    ...     out = await final_outcome(sched, Decode("s/0/0", line.job(final=True), None,
    ...                                             speculation=spec))
    ...     await sched.stop()
    ...     return out.result, out.speculative
    >>> asyncio.run(main()), calls
    (('text', True), ['s/0/0'])
"""

from __future__ import annotations

from streamscribe.processors.decode_scheduler import DecodeOutcome, DecodeScheduler
from streamscribe.processors.recognizer_core import Decode


def start_speculation(scheduler: DecodeScheduler, decode: Decode) -> bool:
    """Queue the speculative decode of ``decode`` (``speculative`` set); never waits.

    Only when a finals slot is idle (:meth:`DecodeScheduler.finals_idle`): under load the
    speculation is skipped (False) and the final is decoded when it comes.
    """
    if decode.speculation is None:
        raise ValueError("start_speculation needs a speculative Decode")
    if not scheduler.finals_idle():
        scheduler.stats.speculative_skipped += 1
        return False
    decode.speculation.handle = scheduler.submit_speculative(decode.line_id, decode.audio)
    return True


async def final_outcome(scheduler: DecodeScheduler, decode: Decode) -> DecodeOutcome:
    """The outcome of a final: its usable speculation's, else a fresh decode."""
    spec = decode.speculation
    handle = None if spec is None else spec.handle
    if handle is not None and not handle.cancelled():
        scheduler.promote(decode.line_id)
        out: DecodeOutcome = await handle
        if out.error is None:
            return out
    return await scheduler.decode_final(decode.line_id, decode.audio, batch=decode.batchable)
