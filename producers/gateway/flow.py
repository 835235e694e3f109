"""Flow hints: the frame duration each client should send (adaptive chunking, pure).

The measure is the delivery latency of the session's finals as the gateway sees them: from
the gateway's receipt of the chunk that ended the speech (the final's
``timestamps.captured_at_us``, stamped by the gateway) to the final's arrival back at the
gateway — which grows with the pipeline's lag. A smoothed latency above ``high_ms`` for
``patience`` finals in a row steps the frame duration up one level (fewer, larger chunks:
less per-message work for a loaded pipeline); below ``low_ms`` for ``patience`` finals it
steps down (lower latency when the pipeline is idle).

Example::

    >>> f = FlowPolicy(start_ms=100, high_ms=1000, low_ms=300, patience=2)
    >>> f.observe(2000), f.observe(2000)
    (None, 200)
    >>> f.chunk_ms
    200
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

LEVELS_MS: Final = (50, 100, 200, 400)
SMOOTHING: Final = 0.5  # weight of the newest latency in the moving average


@dataclass
class FlowPolicy:
    start_ms: int = 100
    high_ms: float = 1500.0
    low_ms: float = 600.0
    patience: int = 2
    levels: tuple[int, ...] = LEVELS_MS
    chunk_ms: int = field(init=False)
    smoothed_ms: float | None = field(init=False, default=None)
    _streak: int = field(init=False, default=0)  # + above high, - below low

    def __post_init__(self) -> None:
        self.chunk_ms = min(self.levels, key=lambda v: abs(v - self.start_ms))

    def observe(self, latency_ms: float) -> int | None:
        """One final's latency; the new frame duration when it changes, else None."""
        s = latency_ms if self.smoothed_ms is None else self.smoothed_ms
        self.smoothed_ms = s + SMOOTHING * (latency_ms - s)
        if self.smoothed_ms > self.high_ms:
            self._streak = max(self._streak, 0) + 1
        elif self.smoothed_ms < self.low_ms:
            self._streak = min(self._streak, 0) - 1
        else:
            self._streak = 0
        i = self.levels.index(self.chunk_ms)
        if self._streak >= self.patience and i + 1 < len(self.levels):
            i += 1
        elif self._streak <= -self.patience and i > 0:
            i -= 1
        else:
            return None
        self._streak = 0
        self.chunk_ms = self.levels[i]
        return self.chunk_ms
