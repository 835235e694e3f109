"""Retries and waits, one convention: tenacity.

A call that may fail and is worth repeating (a database write, a decode, a schema race) is
wrapped in ``tenacity.Retrying`` where it is made, with its attempts and backoff named as
constants there. A wait for something outside us (a broker becoming ready, a process
stopping, a final arriving) is :func:`poll_until`, also on tenacity.

A check is called until it returns true, ``interval_s`` apart, for at most ``timeout_s``;
exceptions listed in ``retry_on`` count as "not yet", any other exception ends the wait at
once (that is how a check says "this will never happen", e.g. the process died).

Example::

    >>> calls = []
    >>> poll_until(lambda: calls.append(1) or len(calls) == 3, timeout_s=5, interval_s=0)
    True
    >>> poll_until(lambda: False, timeout_s=0.05, interval_s=0.01)
    False
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    stop_never,
    wait_fixed,
)


def poll_until(
    check: Callable[[], bool],
    *,
    timeout_s: float | None,
    interval_s: float,
    retry_on: tuple[type[BaseException], ...] = (),
) -> bool:
    """Call ``check`` until it returns true (True) or ``timeout_s`` has passed (False).

    ``timeout_s=None`` waits for ever. An exception of a ``retry_on`` type is a failed
    attempt; any other exception propagates from the first attempt that raises it.
    """

    def timed_out(_state: RetryCallState) -> bool:
        return False

    retry = retry_if_result(operator.not_)
    if retry_on:
        retry = retry | retry_if_exception_type(retry_on)  # type: ignore[assignment]
    retrying = Retrying(
        stop=stop_never if timeout_s is None else stop_after_delay(max(0.0, timeout_s)),
        wait=wait_fixed(interval_s),
        retry=retry,
        retry_error_callback=timed_out,
    )
    return bool(retrying(check))
