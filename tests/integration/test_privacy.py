"""Care with speech on the real broker: the speech topics' retention (``topics create``), and
no transcript text nor audio in the logs of a whole pipeline run (produce -> worker -> sink).

The log test runs every process through the ``streamscribe`` command line, as a user
would, each with its stdout and stderr in a file, at the default log level and with
``--log-level INFO``. The words it looks for are the transcript's own: the words of the
stored finals that no program message could carry (a word of the source vocabulary of
streamscribe, faust, mode, aiokafka or confluent_kafka -- "failed", "received" -- could be
in a log for its own reasons, so it is left out). At least ``MIN_WORDS`` remain, and the
same search finds every one of them in ``streamscribe transcript``'s output (the check
can see them where they are). No final's whole text (three words or more) may be in a log
either.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from streamscribe.consumers.store import TranscriptStore
from streamscribe.core.admin import admin_client, create_topics, topic_configs
from streamscribe.core.settings import Settings
from streamscribe.processors.segmenter import segment_file
from streamscribe.schemas.topics import HOUR_MS, MONTH_MS, WEEK_MS, Retention, Topics
from tests.integration.pipeline import ASR_READY, WORKER_READY, wait_finals, worker_env
from tests.procs import ROOT, Proc, streamscribe_cmd

pytestmark = pytest.mark.integration

SESSION = "privacy-1"
MIN_WORDS = 8
MIN_WORD_LEN = 5
RUN_TIMEOUT_S = 240
#: The packages whose messages (log templates) the logs are made of, besides ours.
LOGGING_PACKAGES = ("faust", "mode", "aiokafka", "confluent_kafka")
#: 16 escaped bytes in a row (a ``bytes`` repr of a payload), or a base64 run of 64+ chars.
AUDIO_PATTERNS = (re.compile(r"(\\x[0-9a-f]{2}){16}"), re.compile(r"[A-Za-z0-9+/]{64,}={0,2}"))


# ------------------------------------------------------------------------------ retention
def _retention_ms(bootstrap: str, names: list[str]) -> dict[str, str | None]:
    found = topic_configs(admin_client(bootstrap), names)
    return {n: found[n]["retention.ms"] for n in names}


def test_create_sets_the_retention_and_updates_it_on_existing_topics(
    kafka_bootstrap: str,
) -> None:
    prefix = f"ret{uuid.uuid4().hex[:8]}."
    first = Topics(prefix, Retention(audio_ms=HOUR_MS, utterances_ms=2 * HOUR_MS))
    speech = [first.audio, first.utterances, first.transcripts]

    assert set(create_topics(kafka_bootstrap, first.specs(2)).values()) == {"created"}
    assert _retention_ms(kafka_bootstrap, [*speech, first.events]) == {
        first.audio: str(HOUR_MS),
        first.utterances: str(2 * HOUR_MS),
        first.transcripts: str(MONTH_MS),
        first.events: str(WEEK_MS),
    }

    # The settings' retention (what `streamscribe topics create` uses) on existing topics
    settings = Settings(
        topic_prefix=prefix,
        audio_retention_hours=0.5,
        utterances_retention_hours=2,
        transcripts_retention_hours=24,
    )
    outcome = create_topics(kafka_bootstrap, Topics.from_settings(settings).specs(2))
    assert outcome[first.audio] == (f"exists (retention.ms set to {HOUR_MS // 2}, was {HOUR_MS})")
    assert outcome[first.utterances] == "exists"  # already as wanted: nothing changed
    assert outcome[first.transcripts] == (
        f"exists (retention.ms set to {24 * HOUR_MS}, was {MONTH_MS})"
    )
    assert outcome[first.events] == "exists"
    assert _retention_ms(kafka_bootstrap, speech) == {
        first.audio: str(HOUR_MS // 2),
        first.utterances: str(2 * HOUR_MS),
        first.transcripts: str(24 * HOUR_MS),
    }
    configs = topic_configs(admin_client(kafka_bootstrap), [first.audio])[first.audio]
    assert configs["message.timestamp.type"] == "LogAppendTime"  # the others stay
    assert configs["max.message.bytes"] == "2097152"

    # Topics without a retention (a gateway, a test fixture) never undo it
    outcome = create_topics(kafka_bootstrap, Topics(prefix).specs(2))
    assert set(outcome.values()) == {"exists"}
    assert _retention_ms(kafka_bootstrap, [first.audio]) == {first.audio: str(HOUR_MS // 2)}


def test_topics_create_command_applies_the_retention_settings(kafka_bootstrap: str) -> None:
    prefix = f"retcli{uuid.uuid4().hex[:8]}."
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAMSCRIBE_TOPIC_PREFIX": prefix}

    def topics_create(**retention: str) -> str:
        done = subprocess.run(
            streamscribe_cmd("topics", "create", "--partitions", "2"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **env, **retention},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = topics_create(STREAMSCRIBE_AUDIO_RETENTION_HOURS="2")
    assert f"{prefix}audio: created" in out
    assert _retention_ms(kafka_bootstrap, [f"{prefix}audio"]) == {
        f"{prefix}audio": str(2 * HOUR_MS)
    }
    out = topics_create(STREAMSCRIBE_AUDIO_RETENTION_HOURS="3")
    assert f"{prefix}audio: exists (retention.ms set to {3 * HOUR_MS}, was {2 * HOUR_MS})" in out
    assert f"{prefix}utterances: exists\n" in out
    assert _retention_ms(kafka_bootstrap, [f"{prefix}audio"]) == {
        f"{prefix}audio": str(3 * HOUR_MS)
    }


# ----------------------------------------------------------------------------- the logs
def source_vocabulary() -> set[str]:
    """Every word in the Python source of streamscribe and of the logging packages."""
    roots = [ROOT / d for d in ("streamscribe", "producers", "processors", "consumers", "schemas")]
    for name in LOGGING_PACKAGES:
        # PathFinder searches sys.path only: another test may have put a stand-in module
        # without a spec into sys.modules, which importlib.util.find_spec refuses.
        spec = importlib.machinery.PathFinder.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        roots += [Path(p) for p in spec.submodule_search_locations]
    words: set[str] = set()
    for root in roots:
        for path in root.rglob("*.py"):
            words.update(
                w.lower() for w in re.findall(r"[A-Za-z]+", path.read_text(errors="replace"))
            )
    return words


def transcript_words(texts: list[str], vocabulary: set[str]) -> set[str]:
    words = {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}
    return {w for w in words if len(w) >= MIN_WORD_LEN and w not in vocabulary}


def words_in(text: str, words: set[str]) -> set[str]:
    return {w for w in words if re.search(rf"\b{w}\b", text, re.IGNORECASE)}


def run_cli(args: list[str], log: Path, env: dict[str, str]) -> str:
    """Run one ``streamscribe`` command to its end; its stdout+stderr go to ``log``."""
    with log.open("wb") as out:
        done = subprocess.run(
            streamscribe_cmd(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=RUN_TIMEOUT_S,
            cwd=ROOT,
            env={**os.environ, **env},
        )
    text = log.read_text(errors="replace")
    assert done.returncode == 0, text[-3000:]
    return text


@pytest.mark.parametrize("log_level", [None, "INFO"], ids=["default", "info"])
def test_a_pipeline_run_logs_no_transcript_text_and_no_audio(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, log_level: str | None
) -> None:
    wav = assets / "two_cities.wav"
    expected = len(segment_file(wav))
    level = ["--log-level", log_level] if log_level else []
    group = f"priv-{uuid.uuid4().hex[:6]}"
    db = f"sqlite:///{tmp_path / 'transcripts.db'}"
    env = worker_env(kafka_bootstrap, topics, tmp_path / "worker-data")
    logs: dict[str, str] = {}

    worker = Proc(
        streamscribe_cmd(*level, "worker", "--group-id", group, "--from-earliest"),
        tmp_path / "worker.log",
        env=env,
    )
    try:
        worker.wait_for_log(WORKER_READY, 120)
        worker.wait_for_log(ASR_READY, 120)
        # real time, so that partials are decoded and published too
        logs["produce"] = run_cli(
            [*level, "produce", str(wav), "--session-id", SESSION, "--pace", "realtime"],
            tmp_path / "produce.log",
            env,
        )
        wait_finals(kafka_bootstrap, topics, {SESSION: expected}, timeout_s=RUN_TIMEOUT_S)
    finally:
        worker.stop()
        logs["worker"] = worker.log_text()
    logs["sink"] = run_cli(
        [*level, "sink", "--db", db, "--group-id", f"{group}-sink", "--max-idle", "5"],
        tmp_path / "sink.log",
        env,
    )
    partials = int(re.search(r"(\d+) partials", logs["sink"]).group(1))  # type: ignore[union-attr]
    assert partials > 0, logs["sink"]  # the partial path ran (and its logs are checked)
    shown = run_cli(["transcript", SESSION, "--db", db], tmp_path / "transcript.log", env)

    with TranscriptStore(db, create=False) as store:
        texts = [row.final.text for row in store.finals(SESSION)]
    assert len(texts) == expected
    words = transcript_words(texts, source_vocabulary())
    assert len(words) >= MIN_WORDS, words
    assert words_in(shown, words) == words  # the search sees them where they are

    assert WORKER_READY in logs["worker"]  # the logs are the processes' own output
    lines = [" ".join(t.lower().split()) for t in texts if len(t.split()) >= 3]
    assert lines and all(t in " ".join(shown.lower().split()) for t in lines)
    for name, text in logs.items():
        assert words_in(text, words) == set(), f"transcript words in the {name} log"
        flat = " ".join(text.lower().split())
        assert [t for t in lines if t in flat] == [], f"a final's text in the {name} log"
        for pattern in AUDIO_PATTERNS:
            found = pattern.search(text)
            assert found is None, f"bytes in the {name} log: {found.group(0)[:80]!r}"
