"""The faust app of the processors: topics, tables and the helpers every agent shares.

Delivery guarantee (at-least-once, made here for every stage):

1. Agents run with ``concurrency=1`` (more loses in-flight messages on a crash, faust
   issue 606) and read raw bytes (``value_serializer="raw"``): decoding happens in our
   code, inside a ``try``, so an undecodable value becomes a dead letter, never a crash.
2. A batch of events (``take_events``) is handled completely — outputs sent, table state
   written — before faust acks it. An exception inside a faust agent would ack the
   message anyway, so every event is handled inside its own ``try`` at the boundary and a
   failure becomes a dead letter with topic/partition/offset and raw bytes.
3. Faust flushes its producer (outputs and changelog writes) before it commits offsets, so
   a committed offset means its outputs and state are in Kafka -- once
   :func:`install_faust_fixes` has fixed three faust-streaming 0.15.3 bugs that otherwise
   lose messages around a crash: a buffer flush that returns with table writes unsent, a
   restart that skips records fetched before its seek, and a fetch that reads "no active
   partition" as "all partitions" and undoes that seek (see :mod:`faust_fixes`). A crash
   replays the events after the last commit; their state may already be in the changelog,
   so every stage dedupes replays on ids carried by the data (chunk ``seq``, utterance ``part``).
4. A worker that cannot go on (e.g. ASR error budget exhausted) exits non-zero *before*
   the batch is acked, so no audio is dropped silently.

Table writes need faust's current event (it picks the changelog partition); when a batch is
handled, :func:`event_scope` sets it to the event being handled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event  # the context variable behind current_event()

from streamscribe.core.errors import StreamscribeError
from streamscribe.core.security import aiokafka_credentials
from streamscribe.core.security import install as install_security
from streamscribe.core.settings import Settings
from streamscribe.processors.faust_assignor import GroupChangelogAssignor
from streamscribe.processors.faust_fixes import FETCH_MAX_WAIT_ATTR, install_faust_fixes
from streamscribe.schemas.events import DEAD_LETTER_MAX_RAW_BYTES, DeadLetter
from streamscribe.schemas.topics import Topics

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


EXIT_STAGE_FAILURE = 4
# A dead letter's Kafka key is the source key, cut to this many bytes (a longer key is
# hostile; cutting it keeps the dead letter sendable).
DEAD_LETTER_MAX_KEY = 4096
# Dead letters that could not be sent, by stage (logged; the worker goes on).
DEAD_LETTER_FAILURES: dict[str, int] = {}
# Dead letters sent or attempted, by (stage, error type): the worker's /metrics reads it.
DEAD_LETTERS: dict[tuple[str, str], int] = {}


async def guarded(
    handle: Callable[[list[Any]], Awaitable[None]], events: list[Any], stage: str
) -> None:
    """Run a batch handler; if it fails as a whole, exit before faust acks the batch.

    Errors about one message are handled inside ``handle`` (dead letters). An exception
    that escapes it is systemic (a bug, a broken model, Kafka gone): faust would ack the
    batch and move on, losing it, so the process exits non-zero instead and the batch is
    processed again after the restart.
    """
    try:
        await handle(events)
    except Exception:
        log.critical(
            "%s: batch of %d events failed; exiting before ack", stage, len(events), exc_info=True
        )
        logging.shutdown()
        os._exit(EXIT_STAGE_FAILURE)


@contextlib.contextmanager
def event_scope(event: Any) -> Iterator[None]:
    """Make ``event`` faust's current event (table writes and sends attach to it)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def make_app(
    settings: Settings,
    *,
    instance: str | None = None,
    from_earliest: bool = False,
    standby_replicas: int = 1,
) -> faust.App:
    """The processors' faust app; its id is the consumer group (``settings.group_id``).

    ``instance`` turns on static group membership (``group.instance.id``; it must be unique
    per worker process): a worker restarted after a crash with the same id takes its
    partitions back at once, without a rebalance. Without one, a restart waits for the old
    member's session to expire (``session_timeout_s``, 2 s by default). (Static
    membership once lost messages here; that was faust's restart seek bug, fixed by
    :func:`install_seek_before_resume`; ``bench/bench_crash_restart.py --arms static``.)

    ``standby_replicas``: faust's ``table_standby_replicas`` (a warm copy of other members'
    tables, for a faster takeover). The group's assignor
    (:class:`~streamscribe.processors.faust_assignor.GroupChangelogAssignor`) keeps them
    also where the members run different stages (``worker --split-stages``).
    """
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    install_faust_fixes()
    # The same client properties file as every other client, translated for aiokafka.
    credentials, ssl_context = aiokafka_credentials(install_security(settings))
    app = faust.App(
        settings.group_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=credentials,
        ssl_context=ssl_context,
        store="memory://",
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        web_enabled=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_group_instance_id=instance,
        consumer_auto_offset_reset="earliest" if from_earliest else "latest",
        broker_commit_every=500,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=2_500_000,
        stream_wait_empty=False,
        topic_allow_declare=True,
        table_standby_replicas=standby_replicas,
        PartitionAssignor=GroupChangelogAssignor,
    )
    setattr(app, FETCH_MAX_WAIT_ATTR, settings.fetch_max_wait_ms)  # install_fetch_max_wait
    return app


@dataclass
class StageTopics:
    """The faust topic objects of the pipeline (all raw bytes)."""

    names: Topics
    audio: faust.TopicT
    utterances: faust.TopicT
    transcripts: faust.TopicT
    events: faust.TopicT
    deadletter: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> StageTopics:
        names = Topics(settings.topic_prefix)
        p = settings.partitions
        return cls(
            names=names,
            # retention: used only when faust creates a missing topic (topics create sets it)
            audio=app.topic(
                names.audio, partitions=p, retention=settings.audio_retention_hours * 3600, **RAW
            ),
            utterances=app.topic(
                names.utterances,
                partitions=p,
                retention=settings.utterances_retention_hours * 3600,
                **RAW,
            ),
            transcripts=app.topic(
                names.transcripts,
                partitions=p,
                retention=settings.transcripts_retention_hours * 3600,
                **RAW,
            ),
            events=app.topic(names.events, partitions=p, **RAW),
            deadletter=app.topic(names.deadletter, partitions=p, **RAW),
        )


async def send_dead_letter(
    topics: StageTopics,
    event: Any,
    *,
    stage: str,
    reason: str,
    error_type: str,
    session_id: str | None = None,
) -> bool:
    """Publish a dead letter for ``event`` (its topic/partition/offset, raw value).

    It never raises: a dead letter is cut to a sendable size (:meth:`DeadLetter.from_raw`:
    raw bytes over ``DEAD_LETTER_MAX_RAW_BYTES`` stay only in the source topic, referenced by
    offset), and if sending still fails it is retried once without the raw bytes, then logged
    and counted in :data:`DEAD_LETTER_FAILURES` -- the dead-letter path must never stop the
    worker (which would crash-loop on the same message). False if it was not sent.
    """
    msg = event.message
    raw = msg.value if isinstance(msg.value, bytes | bytearray) else None
    key = msg.key if isinstance(msg.key, bytes | bytearray) else None
    DEAD_LETTERS[(stage, error_type)] = DEAD_LETTERS.get((stage, error_type), 0) + 1
    log.warning(
        "dead letter from %s[%s]@%s (%s): %.500s",
        msg.topic,
        msg.partition,
        msg.offset,
        stage,
        reason,
    )
    for limit in (DEAD_LETTER_MAX_RAW_BYTES, 0):
        try:
            dl = DeadLetter.from_raw(
                raw,
                reason=reason,
                stage=stage,
                source_topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                key=key,
                error_type=error_type,
                session_id=session_id,
                max_raw_bytes=limit,
            )
            await topics.deadletter.send(
                key=bytes(key or b"")[:DEAD_LETTER_MAX_KEY], value=dl.encode()
            )
            return True
        except Exception:  # the dead-letter path must never kill the worker
            log.error(
                "dead letter for %s[%s]@%s not sent (raw kept: %d bytes)",
                msg.topic,
                msg.partition,
                msg.offset,
                limit,
                exc_info=True,
            )
    DEAD_LETTER_FAILURES[stage] = DEAD_LETTER_FAILURES.get(stage, 0) + 1
    return False


async def dead_letter_for(
    topics: StageTopics,
    event: Any,
    err: StreamscribeError,
    *,
    stage: str,
    session_id: str | None = None,
) -> bool:
    return await send_dead_letter(
        topics,
        event,
        stage=stage,
        reason=err.reason,
        error_type=type(err).__name__,
        session_id=session_id,
    )
