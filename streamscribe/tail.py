"""``streamscribe tail TOPIC``: the contract's reader, one JSON object per message.

Like kcat, but it decodes streamscribe's types: audio payloads are summarised as
``payload_bytes`` and ``payload_sha256``; an undecodable message is printed with the
contract's error (never skipped).

Example::

    streamscribe tail streamscribe.audio --from-beginning --session call-1 --idle-timeout 5
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from streamscribe.core.errors import BrokerError, ContractError
from streamscribe.core.kafka import reader_config
from streamscribe.core.settings import Settings
from streamscribe.schemas.audio import AudioChunk
from streamscribe.schemas.control import Tick, is_tick
from streamscribe.schemas.events import Alert, DeadLetter, SessionEvent
from streamscribe.schemas.topics import (
    ALERTS,
    AUDIO,
    DEADLETTER,
    EVENTS,
    TRANSCRIPTS,
    UTTERANCES,
    Topics,
)
from streamscribe.schemas.transcripts import decode_transcript
from streamscribe.schemas.utterances import UtteranceMessage

POLL_S = 0.5
METADATA_TIMEOUT_S = 10.0


def _decoder_for(kind: str | None) -> Callable[[bytes], dict[str, Any]]:
    from dataclasses import asdict

    decoders: dict[str | None, Callable[[bytes], dict[str, Any]]] = {
        AUDIO: _audio_or_tick,
        UTTERANCES: lambda v: {
            "type": "UtteranceMessage",
            **UtteranceMessage.decode(v).summary_view(),
        },
        TRANSCRIPTS: lambda v: {"type": "TranscriptEvent", **decode_transcript(v).to_dict()},
        EVENTS: lambda v: {"type": "SessionEvent", **asdict(SessionEvent.decode(v))},
        DEADLETTER: lambda v: {"type": "DeadLetter", **asdict(DeadLetter.decode(v))},
        ALERTS: lambda v: {"type": "Alert", **asdict(Alert.decode(v))},
    }
    return decoders.get(kind, _raw_json)


def _audio_or_tick(value: bytes) -> dict[str, Any]:
    from dataclasses import asdict

    if is_tick(value):
        return {"type": "Tick", **asdict(Tick.decode(value))}
    return {"type": "AudioChunk", **AudioChunk.decode(value).summary()}


def _raw_json(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"not a streamscribe topic and not JSON: {exc}", raw=value) from exc
    return {"type": "json", "value": doc}


@dataclass(frozen=True)
class TailOptions:
    topic: str
    from_beginning: bool = False
    session: str | None = None
    max_messages: int | None = None
    idle_timeout_s: float | None = None


def tail_messages(settings: Settings, opts: TailOptions) -> Iterator[dict[str, Any]]:
    """Decoded messages of ``opts.topic`` as dicts (key, partition, offset, fields).

    The topic's type is known from its name under ``settings.topic_prefix``.
    """
    bootstrap = settings.bootstrap
    decode = _decoder_for(Topics(settings.topic_prefix).kind_of(opts.topic))
    consumer = Consumer(reader_config(bootstrap, client=settings.group_for("tail")))
    try:
        try:
            md = consumer.list_topics(opts.topic, timeout=METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerError(f"no Kafka broker answers at {bootstrap}: {exc}") from exc
        tmd = md.topics.get(opts.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise BrokerError(f"topic {opts.topic} does not exist")
        start = OFFSET_BEGINNING if opts.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(opts.topic, p, start) for p in tmd.partitions])
        count = 0
        last = time.monotonic()
        while opts.max_messages is None or count < opts.max_messages:
            msg = consumer.poll(POLL_S)
            if msg is None:
                if (
                    opts.idle_timeout_s is not None
                    and time.monotonic() - last > opts.idle_timeout_s
                ):
                    return
                continue
            if msg.error():
                continue
            last = time.monotonic()
            key = msg.key()
            key_text = key.decode("utf-8", "replace") if key is not None else None
            if opts.session is not None and key_text != opts.session:
                continue
            head: dict[str, Any] = {
                "key": key_text,
                "partition": msg.partition(),
                "offset": msg.offset(),
                "timestamp_ms": msg.timestamp()[1],
            }
            value = msg.value() or b""
            try:
                head.update(decode(value))
            except ContractError as exc:
                head.update({"type": "undecodable", "error": exc.reason, "raw_bytes": len(value)})
            count += 1
            yield head
    finally:
        consumer.close()


def run_tail(settings: Settings, opts: TailOptions, out: TextIO = sys.stdout) -> int:
    """Write the decoded messages to ``out`` as JSON lines; returns how many."""
    n = 0
    for doc in tail_messages(settings, opts):
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        out.flush()
        n += 1
    return n
