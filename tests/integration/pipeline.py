"""Helpers for pipeline tests on the real broker: worker processes and reading results."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamscribe.core.settings import Settings
from streamscribe.producers.file_producer import ProduceJob, ProduceReport, run_produce
from streamscribe.schemas.events import DeadLetter, SessionEvent
from streamscribe.schemas.topics import Topics
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript, decode_transcript
from streamscribe.schemas.utterances import UtteranceMessage
from tests.integration.kafka_read import read_topic
from tests.procs import Proc, streamscribe_cmd

WORKER_READY = "[^Worker]: Ready"
ASR_READY = "ASR model loaded"


def worker_env(bootstrap: str, topics: Topics, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test's worker: one process for both stages unless the test asks
    otherwise (``split_stages="true"``, or ``--split-stages``), because these tests read one
    process's log and kill one process; ``test_split_stages.py`` runs the default, which on
    2 cores or more is a process per stage."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMSCRIBE_TOPIC_PREFIX": topics.prefix,
        "STREAMSCRIBE_WORKER_DATA_DIR": str(data_dir),
        "STREAMSCRIBE_IDLE_TIMEOUT_S": "30",
        "STREAMSCRIBE_SPLIT_STAGES": "false",
    }
    env.update({f"STREAMSCRIBE_{k.upper()}": v for k, v in extra.items()})
    return env


def start_worker(
    bootstrap: str,
    topics: Topics,
    tmp: Path,
    *,
    group: str,
    stages: str = "segmenter,recognizer",
    log_name: str = "worker.log",
    **extra: str,
) -> Proc:
    proc = Proc(
        streamscribe_cmd("worker", "--group-id", group, "--from-earliest", "--stages", stages),
        tmp / log_name,
        env=worker_env(bootstrap, topics, tmp / f"data-{group}", **extra),
    )
    try:
        proc.wait_for_log(WORKER_READY, 120)
        if "recognizer" in stages:
            proc.wait_for_log(ASR_READY, 120)
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def worker(bootstrap: str, topics: Topics, tmp: Path, **kw: str) -> Iterator[Proc]:
    proc = start_worker(bootstrap, topics, tmp, **kw)
    try:
        yield proc
    finally:
        proc.stop()


def produce(bootstrap: str, topics: Topics, files: list[str], **kw: object) -> ProduceReport:
    """Publish ``files`` as sessions marked live unless ``live=False`` is given.

    Live, whatever the pace: the tests compare finals with the offline transcription
    exactly, and a session marked not live (``produce --pace asap`` on the command line)
    may have its finals decoded in batches, which can differ in a near-tie token
    (``test_recognizer_stage.py`` tests that mode on its own).
    """
    settings = Settings.from_env().with_overrides(
        bootstrap_servers=bootstrap, topic_prefix=topics.prefix
    )
    kw.setdefault("live", True)
    report = run_produce(ProduceJob(files=files, **kw), settings, progress=None)  # type: ignore[arg-type]
    assert report.delivery.failed == 0 and report.delivery.delivered == report.delivery.sent
    return report


def session_events(bootstrap: str, topics: Topics) -> list[SessionEvent]:
    return [SessionEvent.decode(r.value) for r in read_topic(bootstrap, topics.events)]


def wait_session_end(
    bootstrap: str, topics: Topics, channels: set[tuple[str, int]], timeout_s: float = 180
) -> list[SessionEvent]:
    deadline = time.monotonic() + timeout_s
    events: list[SessionEvent] = []
    while time.monotonic() < deadline:
        events = session_events(bootstrap, topics)
        ended = {
            (e.session_id, e.channel) for e in events if e.kind in ("session_end", "idle_timeout")
        }
        if channels <= ended:
            return events
        time.sleep(1.0)
    raise TimeoutError(f"sessions {channels} did not end; events: {len(events)}")


@dataclass
class Utterance:
    session_id: str
    channel: int
    utterance: int
    parts: dict[int, UtteranceMessage] = field(default_factory=dict)

    @property
    def final(self) -> UtteranceMessage | None:
        return next((m for m in self.parts.values() if m.kind == "final"), None)

    @property
    def audio(self) -> bytes:
        return b"".join(self.parts[p].payload for p in sorted(self.parts))

    @property
    def span(self) -> tuple[int, int]:
        f = self.final
        assert f is not None
        return f.start_sample, f.end_sample


def utterances(
    bootstrap: str, topics: Topics, *, strict: bool = True
) -> dict[tuple[str, int, int], Utterance]:
    """Utterances on the topic; a repeated part must be identical to the first (dedupe id)."""
    out: dict[tuple[str, int, int], Utterance] = {}
    for r in read_topic(bootstrap, topics.utterances):
        m = UtteranceMessage.decode(r.value)
        u = out.setdefault(
            (m.session_id, m.channel, m.utterance), Utterance(m.session_id, m.channel, m.utterance)
        )
        if m.part in u.parts:
            if strict:
                assert u.parts[m.part].payload == m.payload, (
                    f"part {m.part} repeated with other audio"
                )
                assert u.parts[m.part].end_sample == m.end_sample
            continue
        u.parts[m.part] = m
    return out


def transcripts(
    bootstrap: str, topics: Topics
) -> tuple[list[PartialTranscript], list[FinalTranscript]]:
    partials: list[PartialTranscript] = []
    finals: list[FinalTranscript] = []
    for r in read_topic(bootstrap, topics.transcripts):
        t = decode_transcript(r.value)
        (finals if isinstance(t, FinalTranscript) else partials).append(t)  # type: ignore[arg-type]
    return partials, finals


def dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetter]:
    return [DeadLetter.decode(r.value) for r in read_topic(bootstrap, topics.deadletter)]


def finals_by_line(finals: list[FinalTranscript]) -> dict[tuple[str, int, int], FinalTranscript]:
    by: dict[tuple[str, int, int], list[FinalTranscript]] = defaultdict(list)
    for f in finals:
        by[(f.session_id, f.channel, f.utterance)].append(f)
    out = {}
    for k, fs in by.items():
        assert len({(f.text, f.revision) for f in fs}) == 1, f"line {k} finalised differently: {fs}"
        out[k] = fs[0]
    return out


def wait_finals(
    bootstrap: str, topics: Topics, expected: dict[str, int], timeout_s: float = 300
) -> tuple[list[PartialTranscript], list[FinalTranscript]]:
    """Wait until each session has ``expected[session]`` distinct final lines."""
    deadline = time.monotonic() + timeout_s
    while True:
        partials, finals = transcripts(bootstrap, topics)
        have: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for f in finals:
            have[f.session_id].add((f.channel, f.utterance))
        if all(len(have[s]) >= n for s, n in expected.items()):
            return partials, finals
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"finals so far: { {s: len(v) for s, v in have.items()} }, want {expected}"
            )
        time.sleep(1.0)
