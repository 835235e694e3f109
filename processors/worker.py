"""``streamscribe worker``: one faust worker process running the processor stages.

``streamscribe worker --workers N`` (the CLI) starts N such processes.

Example::

    streamscribe worker --group-id streamscribe-processors
    streamscribe worker --group-id retranscribe-2026-11 --from-earliest   # replay history
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import faust

from streamscribe.core.settings import Settings
from streamscribe.processors.faust_app import StageTopics, make_app

log = logging.getLogger(__name__)

STAGES = ("segmenter", "recognizer")
CHANGELOG_CONFIGS = {
    "cleanup.policy": "compact",
    "max.message.bytes": "2097152",
    # Compaction only cleans closed segments: roll them every minute and clean often, so a
    # table's changelog stays near its live keys (open lines, their audio parts) and a
    # worker taking over its partitions restores in seconds even after hours of traffic.
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "60000",
}


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
) -> NoReturn:
    """Run one worker in this process until SIGTERM/SIGINT; exits the process.

    What ``faust worker`` does, without its command line (``sys.argv`` is not touched):
    finalise the app, then :class:`faust.Worker` runs it and stops it cleanly on SIGTERM
    or SIGINT. It raises :class:`SystemExit` with 0 after a clean stop and non-zero when
    the app crashed. With ``settings.process_metrics_port`` set it also serves
    ``/metrics`` (:mod:`~streamscribe.processors.worker_metrics`).
    """
    settings = session_timeout(settings)
    if settings.recognizer_nice and "recognizer" in stages and "segmenter" not in stages:
        os.nice(settings.recognizer_nice)
    app, built = build_worker(
        settings, stages=stages, instance=instance, from_earliest=from_earliest
    )
    if settings.process_metrics_port is not None:
        from streamscribe.processors.worker_metrics import start_worker_metrics

        start_worker_metrics(app, built, settings)
    ensure_changelog_topics(app, settings)
    prepare_app(app)
    worker = faust.Worker(app, loglevel=log_level)
    worker.execute_from_commandline()


def prepare_app(app: faust.App) -> None:
    """The start-up steps of ``app.main()`` before it hands over to faust's command line."""
    app.finalize()
    app.worker_init()
    if app.conf.autodiscover:
        app.discover()
    app.worker_init_post_autodiscover()


def ensure_changelog_topics(app: faust.App, settings: Settings) -> None:
    """Create the tables' changelog topics before faust starts.

    faust creates them itself at start-up, but its consumer's metadata may not list them
    yet when the first table write checks partition counts (``PartitionsMismatch``).
    Created here, before the consumer exists, they are in its first metadata.
    """
    from streamscribe.core.admin import create_topics
    from streamscribe.schemas.topics import TopicSpec

    specs = [
        TopicSpec(f"{settings.group_id}-{name}-changelog", settings.partitions, CHANGELOG_CONFIGS)
        for name in app.tables
    ]
    create_topics(settings.bootstrap, specs)


def session_timeout(settings: Settings) -> Settings:
    """``settings`` with ``session_timeout_s`` as the cluster allows it
    (:func:`streamscribe.core.kafka.session_timeout_ms`: 3 s on the local broker)."""
    from streamscribe.core.kafka import session_timeout_ms

    allowed = session_timeout_ms(settings) / 1000
    if allowed != settings.session_timeout_s:
        log.info("session timeout raised to the cluster's minimum, %.1f s", allowed)
        return settings.with_overrides(session_timeout_s=allowed)
    return settings
