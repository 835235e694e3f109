"""Drafts for a line's next decode: the tokens of its earlier decodes. Pure; no Kafka.

A line's audio is decoded many times: each partial decodes the tail window since the
line's anchor (a cut splits it into a block and the rest), a speculation decodes the whole
line, the final the whole line again. Most of the tokens of the next decode are the
tokens of those before it, and :meth:`MoonshineAsr.transcribe
<streamscribe.processors.asr.MoonshineAsr.transcribe>` checks a *draft* in one decoder
run instead of decoding it token by token (the tokens are the same either way; a draft
only saves time).

A :class:`DraftBook` keeps, per line, the latest decode of each segment start, keyed by
the segment's first samples (:data:`KEY_SAMPLES`, hashed): the same start of the same line
has the same samples, so no positions have to travel with the audio. The draft of a
segment is the chain from its start: the tokens of the latest decode that started there,
then of the latest that started where that one ended, and so on (a final's draft is the
committed blocks' tokens and the last tail's). Decodes run on several threads; a lock
guards the book. It is memory only (a crash loses it, which costs time, not text) and
bounded (:attr:`DraftBook.max_lines`, least recently used out first).

Example::

    >>> import numpy as np
    >>> book = DraftBook()
    >>> audio = np.arange(48000, dtype=np.float32)
    >>> book.record("s/0/0", audio[:16000], [1, 2])      # a partial's block
    >>> book.record("s/0/0", audio[16000:40000], [3])    # and the rest of its window
    >>> book.draft("s/0/0", audio)                       # the final's draft
    [1, 2, 3]
    >>> book.forget("s/0/0"); book.draft("s/0/0", audio)
    []
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

KEY_SAMPLES: Final = 1600
"""Samples (0.1 s at 16 kHz) that name a segment start; shorter segments are not kept."""
MAX_HOPS: Final = 64
"""Most segments one draft is chained from."""


def _key(audio: Any, offset: int) -> bytes:
    return hashlib.blake2b(audio[offset : offset + KEY_SAMPLES].tobytes(), digest_size=8).digest()


@dataclass
class DraftStats:
    """What the drafts did (the worker's metrics export them)."""

    decodes: int = 0  # segments decoded
    drafted: int = 0  # of those, given a draft
    tokens: int = 0  # tokens of those decodes
    draft_tokens: int = 0  # of those, taken from a draft (checked, not decoded one by one)


class DraftBook:
    """The latest tokens of each line's segment starts (see the module docstring)."""

    def __init__(self, max_lines: int = 4096) -> None:
        self.max_lines = max_lines
        self.stats = DraftStats()
        self._lines: OrderedDict[str, dict[bytes, tuple[int, list[int]]]] = OrderedDict()
        self._lock = threading.Lock()

    def decoded(self, line_id: str, audio: Any, draft: Sequence[int], decoded: Any) -> None:
        """Count a decode (a :class:`~streamscribe.processors.asr.Decoded`) given ``draft``
        and keep its tokens (:meth:`record`)."""
        with self._lock:
            self.stats.decodes += 1
            self.stats.drafted += bool(draft)
            self.stats.tokens += len(decoded.token_ids)
            self.stats.draft_tokens += decoded.draft_tokens
        self.record(line_id, audio, decoded.token_ids)

    def __len__(self) -> int:
        return len(self._lines)

    def record(self, line_id: str, audio: Any, tokens: Sequence[int]) -> None:
        """Keep ``tokens`` as the latest decode of the segment ``audio`` of ``line_id``."""
        if len(audio) < KEY_SAMPLES:
            return
        key = _key(audio, 0)
        with self._lock:
            entries = self._lines.get(line_id)
            if entries is None:
                entries = self._lines[line_id] = {}
                while len(self._lines) > self.max_lines:
                    self._lines.popitem(last=False)
            else:
                self._lines.move_to_end(line_id)
            entries[key] = (len(audio), list(tokens))

    def draft(self, line_id: str, audio: Any) -> list[int]:
        """The draft for decoding ``audio`` (a segment of ``line_id``); [] when none."""
        with self._lock:
            entries = self._lines.get(line_id)
            if not entries:
                return []
            out: list[int] = []
            offset = 0
            for _ in range(MAX_HOPS):
                if len(audio) - offset < KEY_SAMPLES:
                    break
                entry = entries.get(_key(audio, offset))
                if entry is None:
                    break
                length, tokens = entry
                out.extend(tokens)
                offset += length
            return out

    def forget(self, line_id: str) -> None:
        """Drop a line (its final is out)."""
        with self._lock:
            self._lines.pop(line_id, None)
