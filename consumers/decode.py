"""Finals out of raw transcript values, for the consumers that only read finals.

The metrics service and the alerts consumer skip partials and count, log and skip a value
that does not decode: the sink is the one that dead-letters it (:mod:`.sink`), so these
readers never do.

Example::

    >>> from streamscribe.schemas.transcripts import FinalTranscript
    >>> f = FinalTranscript(session_id="s", channel=0, role="agent", utterance=0,
    ...                     revision=1, text="hi", start_ms=0.0, end_ms=1.0)
    >>> counts = ReadCounts()
    >>> [x.text for x in finals_of([f.encode(), b"garbage", None], counts)]
    ['hi']
    >>> counts
    ReadCounts(messages=3, finals=1, undecodable=2)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from streamscribe.core.errors import ContractError
from streamscribe.schemas.transcripts import FinalTranscript, decode_transcript

log = logging.getLogger(__name__)


@dataclass
class ReadCounts:
    """Values read, finals among them, and values that did not decode."""

    messages: int = 0
    finals: int = 0
    undecodable: int = 0


def finals_of(values: Iterable[bytes | None], counts: ReadCounts) -> Iterator[FinalTranscript]:
    """The finals among ``values`` (an empty value is undecodable), counted in ``counts``."""
    for raw in values:
        counts.messages += 1
        try:
            event = decode_transcript(raw if raw is not None else b"")
        except ContractError as exc:
            counts.undecodable += 1
            log.warning("undecodable transcript (the sink dead-letters it): %s", exc.reason)
            continue
        if isinstance(event, FinalTranscript):
            counts.finals += 1
            yield event
