"""Pacing: when each chunk leaves the edge.

``realtime`` sends a chunk when its last sample would have been captured, on an absolute
schedule from the session's start (``start + (position + n_samples) / rate``), so there is
no drift however long the stream runs. ``xN`` divides that schedule by N; ``asap`` does not
wait.

Example::

    >>> parse_pace("x4").speed, parse_pace("realtime").speed, parse_pace("asap").speed
    (4.0, 1.0, None)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from streamscribe.core.errors import ProducerError


@dataclass(frozen=True)
class Pace:
    """``speed`` None means as fast as possible."""

    speed: float | None

    def due(self, start_monotonic: float, audio_seconds: float) -> float:
        if self.speed is None:
            return start_monotonic
        return start_monotonic + audio_seconds / self.speed


def parse_pace(text: str) -> Pace:
    if text == "asap":
        return Pace(None)
    if text == "realtime":
        return Pace(1.0)
    if text.startswith("x"):
        try:
            speed = float(text[1:])
        except ValueError:
            speed = 0.0
        if speed > 0:
            return Pace(speed)
    raise ProducerError(f"--pace {text!r}: expected realtime, asap or xN (e.g. x4)")


def sleep_until(deadline_monotonic: float) -> None:
    delay = deadline_monotonic - time.monotonic()
    if delay > 0:
        time.sleep(delay)
