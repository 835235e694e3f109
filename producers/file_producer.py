"""File producer, replay and load generator: ``streamscribe produce FILE...``.

Every (session, channel) is a lazy stream of chunks with a due time; one heap merges them
all, so one process and one thread replay N concurrent sessions with staggered starts at
real-time pace (the load generator) as cheaply as one.

Example::

    from streamscribe.core.settings import Settings
    from streamscribe.producers.file_producer import ProduceJob, run_produce
    report = run_produce(ProduceJob(files=["two_cities.wav"], pace="asap"), Settings.from_env())
    print(report.delivery.delivered, report.chunks_by_session)   # to <prefix>audio
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from streamscribe.core.admin import probe_broker
from streamscribe.core.errors import ProducerError
from streamscribe.core.kafka import DeliveryProducer, DeliveryStats
from streamscribe.core.settings import Settings
from streamscribe.producers.inject import Injector, Outgoing, parse_inject_spec
from streamscribe.producers.pacing import parse_pace, sleep_until
from streamscribe.producers.source import (
    AudioSource,
    check_chunk_ms,
    chunk_channel,
    default_roles,
    read_audio,
)
from streamscribe.schemas.audio import SessionMeta
from streamscribe.schemas.events import now_us
from streamscribe.schemas.topics import Topics

PROGRESS_EVERY_S = 5.0
PROBE_TIMEOUT_S = 5.0  # no broker answering within this: one clear error
CLIENT_ID = "streamscribe-produce"


@dataclass(frozen=True)
class ProduceJob:
    files: list[str]
    session_id: str | None = None
    chunk_ms: int = 100
    pace: str = "asap"
    roles: tuple[str, ...] | None = None
    sessions: int | None = None
    stagger_s: float = 0.0
    inject: str | None = None
    seed: int = 0
    encoding: str | None = None
    language: str = "en"
    call_id: str | None = None
    live: bool | None = None  # None: live unless the pace is asap (SessionMeta.live)

    @property
    def is_live(self) -> bool:
        """Whether the sessions are marked live: ``live`` if given, else not for ``asap``
        (a recording read as fast as it can be: nobody watches it, so finals only)."""
        return self.live if self.live is not None else parse_pace(self.pace).speed is not None


@dataclass
class ProduceReport:
    delivery: DeliveryStats
    chunks_by_session: dict[str, int]
    sessions: list[str]
    audio_seconds: float
    wall_seconds: float
    injected: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        d = self.delivery
        rate = d.sent / self.wall_seconds if self.wall_seconds else 0.0
        mb = d.bytes_sent / 1e6
        out = [
            f"sessions: {len(self.sessions)} ({', '.join(self.sessions[:4])}"
            f"{', ...' if len(self.sessions) > 4 else ''})",
            f"messages sent: {d.sent}, delivered: {d.delivered}, failed: {d.failed}",
            f"throughput: {rate:.0f} msg/s, {mb / max(self.wall_seconds, 1e-9):.2f} MB/s, "
            f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.2f} s "
            f"({self.audio_seconds / max(self.wall_seconds, 1e-9):.1f}x real time)",
        ]
        if self.injected:
            out.append(
                "injected: " + ", ".join(f"{k}={v}" for k, v in sorted(self.injected.items()))
            )
        if d.errors:
            out.append("delivery errors: " + ", ".join(f"{k}={v}" for k, v in d.errors.items()))
        return out


@dataclass(frozen=True)
class SessionPlan:
    session_id: str
    source: AudioSource
    roles: tuple[str, ...]
    start_offset_s: float
    path: str


def plan_sessions(job: ProduceJob) -> list[SessionPlan]:
    """Read the files once and lay out the sessions (one per file, or N for load)."""
    if not job.files:
        raise ProducerError("no input files")
    check_chunk_ms(job.chunk_ms)
    sources = {f: read_audio(f, job.encoding) for f in dict.fromkeys(job.files)}
    base = job.session_id or uuid.uuid4().hex[:8]
    plans: list[SessionPlan] = []
    if job.sessions:
        if job.sessions < 1:
            raise ProducerError("--sessions must be at least 1")
        for i in range(job.sessions):
            f = job.files[i % len(job.files)]
            plans.append(_plan(f"{base}-{i:03d}", sources[f], job, i * job.stagger_s, f))
    elif len(job.files) == 1:
        f = job.files[0]
        sid = job.session_id or f"{Path(f).stem}-{base}"
        plans.append(_plan(sid, sources[f], job, 0.0, f))
    else:
        for i, f in enumerate(job.files):
            plans.append(_plan(f"{base}-{i:03d}-{Path(f).stem}", sources[f], job, 0.0, f))
    return plans


def _plan(sid: str, src: AudioSource, job: ProduceJob, offset: float, path: str) -> SessionPlan:
    roles = job.roles or default_roles(src.channels)
    if len(roles) < src.channels:
        raise ProducerError(
            f"{path}: {src.channels} channels but only {len(roles)} roles given (--roles)"
        )
    return SessionPlan(sid, src, tuple(roles[: src.channels]), offset, path)


def _streams(
    plans: list[SessionPlan], job: ProduceJob, injector: Injector
) -> Iterator[tuple[float, int, Outgoing]]:
    """(audio-time due, tie-breaker, outgoing) for every message, merged in due order."""
    counter = itertools.count()

    def one(
        plan: SessionPlan, channel: int, stream_no: int
    ) -> Iterator[tuple[float, int, Outgoing]]:
        meta = SessionMeta(
            source=plan.path,
            language=job.language,
            call_id=job.call_id,
            channels=plan.source.channels,
            roles=plan.roles,
            live=job.is_live,
        )
        chunks = chunk_channel(
            plan.source,
            channel,
            session_id=plan.session_id,
            role=plan.roles[channel],
            chunk_ms=job.chunk_ms,
            meta=meta,
        )
        rate = plan.source.sample_rate
        for out in injector.apply(chunks, stream_seed=stream_no):
            c = out.chunk
            t = plan.start_offset_s
            if c is not None:
                t += (c.position + c.n_samples) / rate
            yield (t, next(counter), out)

    streams = []
    for n, plan in enumerate(plans):
        for ch in range(plan.source.channels):
            streams.append(one(plan, ch, n * 64 + ch))
    return heapq.merge(*streams, key=lambda item: (item[0], item[1]))


def run_produce(
    job: ProduceJob, settings: Settings, *, progress: TextIO | None = sys.stderr
) -> ProduceReport:
    """Publish the job's sessions to the audio topic of ``settings``; returns counts.

    The cluster, topic prefix, ``linger_ms`` and ``flush_timeout_s`` come from
    ``settings``; the caller exits non-zero when messages were not delivered.
    """
    pace = parse_pace(job.pace)
    spec = parse_inject_spec(job.inject)
    plans = plan_sessions(job)  # bad files and arguments are reported first
    probe_broker(settings.bootstrap, PROBE_TIMEOUT_S)  # one line, in seconds, if none answers
    injector = Injector(spec, job.seed)
    topic = Topics(settings.topic_prefix).audio
    producer = DeliveryProducer.from_settings(settings, client_id=CLIENT_ID)
    by_session: Counter[str] = Counter()
    total_audio = sum(p.source.duration_s for p in plans)
    mono0, wall0 = time.monotonic(), now_us()
    next_progress = mono0 + PROGRESS_EVERY_S
    last_t = 0.0
    for t, _, out in _streams(plans, job, injector):
        due = pace.due(mono0, t)
        if pace.speed is not None:
            sleep_until(due)
            captured = wall0 + int((due - mono0) * 1e6)
        else:
            captured = now_us()
        if out.chunk is not None:
            chunk = dataclasses.replace(out.chunk, captured_at_us=captured)
            producer.send(topic, out.key, chunk.encode())
            by_session[chunk.session_id] += 1
        else:
            producer.send(topic, out.key, out.value())
        last_t = t
        if progress is not None and time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            s = producer.stats
            print(
                f"[produce] stream time {last_t:.1f} s, sent {s.sent}, delivered {s.delivered}",
                file=progress,
                flush=True,
            )
    stats = producer.close()
    wall = time.monotonic() - mono0
    return ProduceReport(
        delivery=stats,
        chunks_by_session=dict(by_session),
        sessions=[p.session_id for p in plans],
        audio_seconds=total_audio,
        wall_seconds=wall,
        injected=injector.counts,
    )
