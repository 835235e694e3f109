"""``streamscribe worker``: one faust worker process running the processor stages.

Example::

    streamscribe worker --group-id streamscribe-processors
    streamscribe worker --group-id retranscribe-2026-11 --from-earliest   # replay history
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import StageTopics, make_app

log = logging.getLogger(__name__)

STAGES = ("segmenter", "recognizer")


def build_worker(
    settings: Settings,
    *,
    stages: tuple[str, ...] = STAGES,
    instance: str | None = None,
    from_earliest: bool = False,
) -> tuple[faust.App, list[Any]]:
    """The faust app with the chosen stages registered on it (nothing runs yet)."""
    app = make_app(settings, instance=instance, from_earliest=from_earliest)
    topics = StageTopics.declare(app, settings)
    built: list[Any] = []
    if "segmenter" in stages:
        from streamscribe.processors.segmenter_agent import SegmenterStage

        built.append(SegmenterStage(app, settings, topics, ThreadPoolExecutor(1, "vad")))
    if "recognizer" in stages:
        from streamscribe.processors.recognizer_agent import RecognizerStage

        built.append(
            RecognizerStage(app, settings, topics, ThreadPoolExecutor(settings.asr_workers, "asr"))
        )
    return app, built


def run_worker(
    settings: Settings,
    *,
    stages: tuple[str, ...] = STAGES,
    instance: str | None = None,
    from_earliest: bool = False,
    log_level: str = "info",
) -> None:
    """Run one worker in this process until SIGTERM/SIGINT (faust's own main loop)."""
    app, _ = build_worker(settings, stages=stages, instance=instance, from_earliest=from_earliest)
    ensure_changelog_topics(app, settings)
    sys.argv = [sys.argv[0], "worker", "-l", log_level, "--without-web"]
    app.main()


def ensure_changelog_topics(app: faust.App, settings: Settings) -> None:
    """Create the tables' changelog topics before faust starts.

    faust creates them itself at start-up, but its consumer's metadata may not list them
    yet when the first table write checks partition counts (``PartitionsMismatch``).
    Created here, before the consumer exists, they are in its first metadata.
    """
    from streamscribe.core.admin import create_topics
    from streamscribe.schemas.topics import TopicSpec

    specs = [
        TopicSpec(
            f"{settings.group_id}-{name}-changelog",
            settings.partitions,
            {"cleanup.policy": "compact", "max.message.bytes": "2097152"},
        )
        for name in app.tables
    ]
    create_topics(settings.bootstrap, specs)


def spawn_workers(n: int, argv: list[str]) -> int:
    """Run ``n`` worker processes (child ``i`` gets ``--instance-index i``); wait for them all."""
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "streamscribe.cli", *argv, "--instance-index", str(i)]
        procs.append(subprocess.Popen(cmd, env=os.environ.copy()))
    code = 0
    try:
        for p in procs:
            code = max(code, p.wait())
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    return code
