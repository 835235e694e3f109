"""Streaming polyphase resampler to 16 kHz whose chunked output equals whole-signal output.

Rate ``sr`` is converted by the rational factor ``up / down = 16000 / sr`` (reduced by the
gcd: 48 kHz is 1/3, 44.1 kHz is 160/441, 8 kHz is 2/1) with a Kaiser-windowed sinc FIR —
the filter ``scipy.signal.resample_poly`` designs (cutoff at the lower Nyquist,
``half_len = 10 * max(up, down)`` taps per side, beta 5) — evaluated in polyphase form.

**Delay and length bookkeeping.** The filter's delay is compensated: output sample ``k`` is
the signal at input time ``k * down / up``, exactly like ``resample_poly``, so 16 kHz sample
indices map onto the source timeline with no offset. Output ``k`` needs input up to index
``(k * down + half_len) // up``, so after ``n`` input samples
:func:`available_outputs` ``= max(0, ceil((n * up - half_len) / down))`` samples are out
(a look-ahead of ``half_len / up`` input samples: 30 at 48 kHz, ~28 at 44.1 kHz, 10 at 8 kHz,
under 1 ms everywhere). :meth:`StreamingResampler.flush` at end of stream pads zeros and
completes the total to ``ceil(n * up / down)``, the length ``resample_poly`` returns.
Each output sample is computed by the same arithmetic whatever the chunking, so chunked
output is bit-identical to one-shot output. 16 kHz input passes through unchanged.

Example::

    >>> import numpy as np
    >>> x = np.sin(2 * np.pi * 1000 * np.arange(4800) / 48000).astype(np.float32)
    >>> r = StreamingResampler(48000)
    >>> y = np.concatenate([r.process(x[:1000]), r.process(x[1000:]), r.flush()])
    >>> len(y), r.n_out
    (1600, 1600)
    >>> from scipy.signal import resample_poly
    >>> bool(np.abs(y - resample_poly(x.astype(np.float64), 1, 3)).max() < 1e-6)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import firwin

from streamscribe.processors.reassembly import pack_state, unpack_state
from streamscribe.schemas.pcm import Float32Array

TARGET_RATE: Final = 16000
KAISER_BETA: Final = 5.0
HALF_LEN_PER_RATE: Final = 10  # resample_poly's half filter length, in units of max(up, down)
# Output samples computed per vectorised block (bounds temporary memory for huge chunks).
BLOCK_OUTPUTS: Final = 4096
# Rate pairs with at most this many phases (48, 32, 24, 16, 8 kHz) are computed from strided
# views; others (44.1, 22.05, 11.025 kHz) by gathering (see _strided).
STRIDED_MAX_UP: Final = 8


@dataclass(frozen=True)
class PolyphaseFilter:
    """A rational resampling filter split into ``up`` phases of ``taps_per_phase`` taps."""

    up: int
    down: int
    half_len: int
    phases: npt.NDArray[np.float64]  # [up, taps_per_phase]; phases[p, t] = h[p + t * up]

    @property
    def taps_per_phase(self) -> int:
        return int(self.phases.shape[1])


@lru_cache(maxsize=16)
def design_filter(source_rate: int, target_rate: int = TARGET_RATE) -> PolyphaseFilter:
    """The polyphase filter for ``source_rate -> target_rate`` (cached per rate pair)."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    g = math.gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    max_rate = max(up, down)
    half_len = HALF_LEN_PER_RATE * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", KAISER_BETA)) * up
    k = -(-len(h) // up)
    padded = np.zeros(k * up)
    padded[: len(h)] = h
    phases = np.ascontiguousarray(padded.reshape(k, up).T)
    phases.setflags(write=False)
    return PolyphaseFilter(up=up, down=down, half_len=half_len, phases=phases)


def available_outputs(n_in: int, source_rate: int, target_rate: int = TARGET_RATE) -> int:
    """Output samples produced after ``n_in`` input samples, before :meth:`flush`.

    >>> available_outputs(4800, 48000), total_outputs(4800, 48000)
    (1590, 1600)
    """
    if source_rate == target_rate:
        return n_in
    f = design_filter(source_rate, target_rate)
    return max(0, -(-(n_in * f.up - f.half_len) // f.down))


def total_outputs(n_in: int, source_rate: int, target_rate: int = TARGET_RATE) -> int:
    """Output samples after ``n_in`` input samples and :meth:`flush`: ``ceil(n_in*up/down)``."""
    g = math.gcd(source_rate, target_rate)
    return -(-(n_in * (target_rate // g)) // (source_rate // g))


class StreamingResampler:
    """Chunk-invariant polyphase resampler for one channel; state is ``taps_per_phase`` floats.

    State: input/output counters and the last ``taps_per_phase - 1`` input samples
    (60 at 48 kHz, 55 at 44.1 kHz); about 300 bytes serialised.
    """

    def __init__(self, source_rate: int, target_rate: int = TARGET_RATE) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self.identity = source_rate == target_rate
        self._filter = None if self.identity else design_filter(source_rate, target_rate)
        keep = 0 if self._filter is None else self._filter.taps_per_phase - 1
        self._history: Float32Array = np.zeros(keep, dtype=np.float32)
        self.n_in = 0
        self.n_out = 0
        self.flushed = False

    def process(self, samples: Float32Array) -> Float32Array:
        """Feed source samples; return every 16 kHz sample that is now fully determined."""
        x = np.asarray(samples, dtype=np.float32)
        if self.flushed:
            raise ValueError("resampler already flushed")
        if self.identity:
            self.n_in += len(x)
            self.n_out += len(x)
            return x.copy()
        n_new = self.n_in + len(x)
        return self._run(x, n_new, available_outputs(n_new, self.source_rate, self.target_rate))

    def flush(self) -> Float32Array:
        """End of stream: zero-pad and emit the rest, up to ``ceil(n_in * up / down)`` in all."""
        if self.flushed:
            return np.zeros(0, dtype=np.float32)
        self.flushed = True
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        f = self._filter
        assert f is not None
        end = total_outputs(self.n_in, self.source_rate, self.target_rate)
        if end <= self.n_out:
            return np.zeros(0, dtype=np.float32)
        need = ((end - 1) * f.down + f.half_len) // f.up + 1  # inputs needed for the last output
        pad = np.zeros(max(0, need - self.n_in), dtype=np.float32)
        out = self._run(pad, self.n_in + len(pad), end)
        return out

    def _run(self, x: Float32Array, n_new: int, k_end: int) -> Float32Array:
        f = self._filter
        assert f is not None
        buf = np.concatenate([self._history, x]).astype(np.float64)
        base = self.n_in - len(self._history)  # stream index of buf[0]
        k_start = self.n_out
        out = np.empty(max(0, k_end - k_start), dtype=np.float32)
        if f.up <= STRIDED_MAX_UP:
            _strided(f, buf, base, k_start, k_end, out)
        else:
            _gathered(f, buf, base, k_start, k_end, out)
        keep = len(self._history)
        tail = buf[len(buf) - keep :] if keep else buf[:0]
        if len(tail) < keep:
            tail = np.concatenate([np.zeros(keep - len(tail)), tail])
        self._history = tail.astype(np.float32)
        self.n_in = n_new
        self.n_out = max(self.n_out, k_end)
        return out

    # ---------------------------------------------------------------- state

    def state_meta(self) -> dict[str, Any]:
        """Scalars of the state (the history travels as an array)."""
        return {
            "sr": self.source_rate,
            "tr": self.target_rate,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "flushed": self.flushed,
        }

    @property
    def history(self) -> Float32Array:
        """The carried input samples (part of the state)."""
        return self._history

    @classmethod
    def from_state(cls, meta: dict[str, Any], history: npt.ArrayLike) -> StreamingResampler:
        """Inverse of :meth:`state_meta` + :attr:`history`."""
        r = cls(meta["sr"], meta["tr"])
        r.n_in, r.n_out, r.flushed = meta["n_in"], meta["n_out"], meta["flushed"]
        r._history = np.asarray(history, dtype=np.float32).copy()
        return r

    def to_bytes(self) -> bytes:
        """Compact state: JSON header + the float32 history."""
        return pack_state("resampler", self.state_meta(), {"h": self._history})

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamingResampler:
        """Restore a resampler saved by :meth:`to_bytes`."""
        s = unpack_state(data, "resampler")
        return cls.from_state(s.meta, s.arrays["h"])


def _strided(
    f: PolyphaseFilter,
    buf: npt.NDArray[np.float64],
    base: int,
    k_start: int,
    k_end: int,
    out: Float32Array,
) -> None:
    """Outputs ``k_start..k_end`` into ``out`` from strided views of ``buf`` (no gather).

    ``windows[i, t] = buf[i + taps - 1 - t]``: output ``k`` is the window ending at its
    newest input, times its phase, summed over ``t`` -- the products and the sum of
    :func:`_gathered`, in the same order, so the two give the same bits. Outputs ``k`` and
    ``k + up`` share the phase and are ``down`` windows apart: one view per class of
    ``k mod up`` (twice as fast as the gather at 48 and 24 kHz; with many phases, e.g.
    44.1 kHz's 160, the per-class loop costs more than it saves).
    """
    taps = f.taps_per_phase
    if k_end <= k_start:
        return
    windows = sliding_window_view(buf, taps)[:, ::-1]
    block = f.up * max(1, BLOCK_OUTPUTS // f.up)
    for b0 in range(k_start, k_end, block):
        b1 = min(k_end, b0 + block)
        for k0 in range(b0, min(b1, b0 + f.up)):
            m0 = k0 * f.down + f.half_len
            first = m0 // f.up - base - (taps - 1)
            count = len(range(k0, b1, f.up))
            if first < 0 or first + (count - 1) * f.down >= len(windows):
                raise ValueError("resampler history does not cover the filter")  # a bug
            rows = windows[first : first + (count - 1) * f.down + 1 : f.down]
            out[k0 - k_start : b1 - k_start : f.up] = (rows * f.phases[m0 % f.up]).sum(axis=1)


def _gathered(
    f: PolyphaseFilter,
    buf: npt.NDArray[np.float64],
    base: int,
    k_start: int,
    k_end: int,
    out: Float32Array,
) -> None:
    """Outputs ``k_start..k_end`` into ``out``, each row of inputs gathered by index."""
    taps = np.arange(f.taps_per_phase)
    for b0 in range(k_start, k_end, BLOCK_OUTPUTS):
        ks = np.arange(b0, min(k_end, b0 + BLOCK_OUTPUTS), dtype=np.int64)
        m = ks * f.down + f.half_len
        j_hi = m // f.up
        idx = (j_hi - base)[:, None] - taps[None, :]
        gathered = buf[idx]
        out[b0 - k_start : b0 - k_start + len(ks)] = (gathered * f.phases[m % f.up]).sum(axis=1)
