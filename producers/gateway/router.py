"""The gateway's way back: transcript and session events of the sessions it holds.

One consumer thread per gateway reads every partition of ``streamscribe.transcripts``,
``streamscribe.events`` and ``streamscribe.commands`` (for the spoken replies of
``assistant --speak``), assigned (no consumer group, nothing committed) at the high
watermarks of the moment the gateway starts: a gateway sees what the pipeline says from
then on, and several gateways side by side each read everything and keep only the sessions
they hold (:attr:`KafkaRouter.wanted`). A record of a held session is decoded here and
handed to the event loop with ``loop.call_soon_threadsafe``; a record it cannot decode is
logged and skipped (the pipeline's own readers dead-letter them; this is a view).

Example::

    router = KafkaRouter(settings, wanted=hub.held.__contains__, deliver=on_record)
    router.start(loop)      # ... router.stop()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

from confluent_kafka import Consumer, TopicPartition

from streamscribe.core.errors import ContractError
from streamscribe.core.kafka import reader_config
from streamscribe.core.settings import Settings
from streamscribe.schemas.commands import CommandEvent
from streamscribe.schemas.events import SessionEvent
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import decode_transcript

log = logging.getLogger(__name__)

POLL_S: Final = 0.05
METADATA_TIMEOUT_S: Final = 15.0

#: deliver(session_id, "transcript" | "event" | "command", decoded) on the event loop
Deliver = Callable[[str, str, Any], None]


class KafkaRouter:
    def __init__(self, settings: Settings, *, wanted: Callable[[str], bool], deliver: Deliver):
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.wanted = wanted
        self.deliver = deliver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0
        self.skipped = 0

    def _assign(self, consumer: Consumer) -> None:
        parts: list[TopicPartition] = []
        for topic in (self.topics.transcripts, self.topics.events, self.topics.commands):
            md = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic]
            for p in md.partitions:
                high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=METADATA_TIMEOUT_S
                )[1]
                parts.append(TopicPartition(topic, p, high))
        consumer.assign(parts)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Assign (blocking, so that nothing published after start is missed), then run."""
        client = self.settings.group_for("gateway")  # throwaway group <prefix stem>-gateway-…
        consumer = Consumer(reader_config(self.settings.bootstrap, client=client))
        self._assign(consumer)
        self._thread = threading.Thread(
            target=self._run, args=(consumer, loop), name="gateway-router", daemon=True
        )
        self._thread.start()

    def _run(self, consumer: Consumer, loop: asyncio.AbstractEventLoop) -> None:
        transcripts, commands = self.topics.transcripts, self.topics.commands
        try:
            while not self._stop.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("router: %s", msg.error())
                    continue
                sid = (msg.key() or b"").decode("utf-8", "replace")
                if not self.wanted(sid):
                    continue
                try:
                    if msg.topic() == transcripts:
                        item: Any = decode_transcript(msg.value() or b"").to_dict()
                        kind = "transcript"
                    elif msg.topic() == commands:
                        item = CommandEvent.decode(msg.value() or b"")
                        kind = "command"
                    else:
                        item = SessionEvent.decode(msg.value() or b"")
                        kind = "event"
                except ContractError as exc:
                    self.skipped += 1
                    log.warning(
                        "router: skipped %s[%d]@%d: %s",
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        exc,
                    )
                    continue
                self.records += 1
                loop.call_soon_threadsafe(self.deliver, sid, kind, item)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
