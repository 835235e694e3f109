"""The one settings object, read once from the environment and passed down.

Every knob is an environment variable with the ``STREAMSCRIBE_`` prefix (plus the standard
``KAFKA_BOOTSTRAP_SERVERS``). Nothing else in the code base reads ``os.environ`` for
configuration; CLI flags override fields with :meth:`Settings.with_overrides`. Values are
parsed and checked by pydantic (``STREAMSCRIBE_PARTITIONS=four`` is a
:class:`~streamscribe.core.errors.UsageError` naming the variable).

Example::

    >>> from streamscribe.core.settings import Settings
    >>> s = Settings.from_env({"STREAMSCRIBE_TOPIC_PREFIX": "t1."})
    >>> s.topic_prefix
    't1.'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from streamscribe.core.errors import UsageError

ENV_PREFIX = "STREAMSCRIBE_"
DEFAULT_BROKER_PORT = 9092
KAFKA_VERSION = "4.3.1"
GROUP_STEM_STRIP = ".-_"  # stripped from the end of the topic prefix for group ids
PROCESSORS_ROLE = "processors"


def _project_root() -> Path:
    """The checkout when run from one (its ignored ``.cache`` holds state), else ~/.cache."""
    root = Path(__file__).resolve().parents[2]  # streamscribe/core/settings.py
    if (root / "pyproject.toml").exists():
        return root
    return Path.home() / ".cache" / "streamscribe-home"


class Settings(BaseModel):
    """All configuration of streamscribe; frozen, built once by :meth:`from_env`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_alias=True, validate_by_name=True
    )

    # Kafka
    bootstrap_servers: str | None = None  # None = the local broker on broker_port
    # A Kafka client properties file (security.protocol, sasl.*, ssl.ca.location; the
    # format of Kafka's --command-config), applied to every client: core/security.py.
    kafka_config: Path | None = None
    topic_prefix: str = "streamscribe."
    partitions: int = 4
    # How long the topics that carry speech keep it (hours; schemas/topics.py Retention):
    # applied by `streamscribe topics create`, to topics that exist already too.
    audio_retention_hours: float = 168.0
    utterances_retention_hours: float = 168.0
    transcripts_retention_hours: float = 720.0

    # Local broker
    broker_port: int = DEFAULT_BROKER_PORT
    broker_controller_port: int = 0  # 0 = broker_port + 1
    broker_data_dir: Path = _project_root() / ".cache" / "kafka-data"
    broker_cache_dir: Path = _project_root() / ".cache" / "kafka"
    kafka_version: str = KAFKA_VERSION

    # Producers
    chunk_ms: int = 100
    linger_ms: int = 5
    flush_timeout_s: float = 30.0

    # Processors (faust worker)
    # The processors' consumer group = faust app id (STREAMSCRIBE_GROUP_ID, `worker
    # --group-id`); None = derived from the topic prefix. Read it as ``group_id``.
    explicit_group_id: str | None = Field(default=None, alias="group_id")
    worker_data_dir: Path = _project_root() / ".cache" / "worker"
    worker_web_port: int = 6066
    # A SIGKILLed worker's partitions move after this (raised to the cluster's
    # group.min.session.timeout.ms; the local broker allows 1 s). 2 s with heartbeats every
    # 0.5 s cut the worst takeover delay from 3.0-5.4 s to 3.1-3.7 s against 3 s / 1 s, with
    # no false expiry in 3 runs at 48 sessions (bench/README.md, "Standby tables ...").
    session_timeout_s: float = 2.0
    # Static group membership (group.instance.id), unique per worker process: a worker
    # restarted with the same id takes its partitions back at once; without one, a
    # restart waits for the old member's session to time out (session_timeout_s).
    instance_id: str | None = None
    # `streamscribe worker` runs the segmenter and the recognizer in processes of their own
    # (one consumer group) when True; in one process when False; None = split when the
    # process may use 2 cores or more: on this 2-core box it cut the 32-session p95 2-6x,
    # and since stage processes keep standby tables (processors/faust_assignor.py) and
    # wait less at the broker (fetch_max_wait_ms), `kill -9` of one of two workers costs
    # about what it costs one-process workers (bench/README.md, "Standby tables for stage
    # processes"). CLI: --split-stages / --one-process.
    split_stages: bool | None = None
    heartbeat_interval_s: float = 0.5
    # The worker's consumer waits at the broker at most this long for new records (faust
    # fixes 1500 ms). Kafka answers a connection's requests in order, so a takeover's
    # metadata and end-offset requests waited behind such fetches: 1.1-1.5 s of a stage
    # process's takeover after `kill -9` of another worker (bench/README.md).
    fetch_max_wait_ms: int = 100
    jitter_window_chunks: int = 8
    # The segmenter takes up to this many chunks at once (all channels' VAD in one batch,
    # one executor hop), waiting at most segmenter_batch_wait_s for more; 1 = one by one.
    # Only a backlog (a replay, a restart) fills a batch; each channel's state is written
    # once per batch: 256 instead of 64 cut the changelog 3x and the CPU 11 % (bench/).
    # A session that starts and ends within one batch writes no channel state at all.
    segmenter_batch_max: int = 256
    segmenter_batch_wait_s: float = 0.01
    # A live channel's changelog copy is written at most this often (0: after every batch);
    # the chunks it does not cover yet stay unacked until it does, so a crash replays them
    # (processors/segmenter_agent.py). After every batch, 48 live sessions wrote 4 MB/s.
    segmenter_checkpoint_s: float = 1.0
    gap_timeout_ms: int = 1000
    max_payload_bytes: int = 1_048_576
    vad_threshold: float = 0.5
    vad_neg_threshold: float = 0.35
    min_silence_ms: int = 300
    min_speech_ms: int = 250
    pre_roll_ms: int = 200
    max_utterance_s: float = 20.0
    update_interval_s: float = 0.5
    idle_timeout_s: float = 30.0
    energy_gate_dbfs: float = -70.0
    ort_intra_threads: int = 1
    # Decoder steps after the first run the merged decoder's with-cache branch as a graph
    # of its own (processors/asr_graph.py): the same tokens, less time a step.
    asr_step_graph: bool = True
    # A line's decode checks the tokens of its earlier decodes as a draft in one decoder
    # run (processors/drafts.py, MoonshineAsr.transcribe): the same tokens up to near ties,
    # 18 % less model CPU a line at light load; off by default (no gain measured in the
    # pipeline at 32 and 48 sessions, bench/README.md "Drafts").
    asr_drafts: bool = False
    asr_workers: int = 2  # decode slots: one for finals then partials, the others finals only
    max_error_rate: float = 0.2
    partial_growth: float = 0.0  # optional: partial also waits for growth * decoded new audio
    # A partial decodes the line's tail window; past this length the window is cut at its
    # quietest frame and the words before are committed (processors/recognizer_line.py).
    partial_window_s: float = 2.5
    partial_batch_max: int = 16  # partial decodes batched into one decoder run
    # Finals of sessions not watched live (SessionMeta.live false: produce --pace asap)
    # waiting together are decoded in one batch of up to this many (1: one by one).
    replay_batch_max: int = 8
    # A replay's batch of finals waits up to this long for more finals to fill it, while
    # nothing live waits (0: a slot takes what is there, often a single final).
    replay_gather_ms: float = 250.0
    # A live final is decoded alone (exactly the offline transcription) unless it waited in
    # the decode queue this long: the worker is behind, and the finals waiting then are
    # decoded in one batch of up to replay_batch_max (a batch of 8 costs about 0.6 of
    # decoding them alone; about one final in ten then differs from its offline text in a
    # near-tie token). 0: live finals always alone.
    final_behind_ms: float = 150.0
    # An update captured longer ago than this (overload, or a replay faster than real time)
    # gets no partial and no speculative final: the worker spends its CPU catching up.
    partial_max_lag_s: float = 1.0
    # Niceness added to the partial-decode thread (Linux: that thread only). Off: measured,
    # it made finals later (a low-priority thread preempted while holding the GIL).
    partial_nice: int = 0
    # Niceness added to a stage process that runs the recognizer without the segmenter
    # (split stages, Linux): on a box short of CPU the segmenter, which every final waits
    # for, then gets its share first. 0: off.
    recognizer_nice: int = 0
    partial_stale_s: float = 1.5  # shed a partial whose update is older than this
    asr_fail_lines: str = ""  # fault injection: comma list of line-id patterns that fail
    # fault injection: comma list of line-id patterns whose decode first sleeps asr_slow_s
    # (a final that takes long: the window a crash must not lose it in)
    asr_slow_lines: str = ""
    asr_slow_s: float = 0.0
    # Speculative finals: the segmenter flags the update that ends where the utterance will
    # end if the silence holds (post-roll after the first silent frame), and the recognizer
    # decodes the final from it while the segmenter still waits out min_silence_ms.
    # False = no candidate, no speculation (the behaviour before it existed).
    speculative_finals: bool = True
    # A finished line leaves a small done marker in recognizer-lines (a replayed message of
    # it is late). It goes once its final's offset is committed and the channel's next line
    # exists, or, for a channel's last line, after this long (processors/recognizer_core.py).
    line_done_ttl_s: float = 300.0

    # WebSocket gateway (producers/gateway, docs/websocket.md)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8765
    gateway_tokens: str = ""  # comma-separated bearer tokens (or --tokens-file)
    gateway_origins: str = ""  # comma-separated browser Origins allowed besides the page's own
    gateway_max_frame_bytes: int = 65_536  # larger audio frames: close 4413
    gateway_max_session_s: float = 3600.0  # audio seconds per session: then close 4410
    gateway_max_sessions: int = 200  # held by one gateway (live + in grace): then close 4503
    gateway_max_sessions_per_token: int = 50  # then close 4429
    gateway_grace_s: float = 10.0  # a dropped session waits this long for its client
    gateway_start_timeout_s: float = 10.0  # no start message by then: close 4408
    gateway_burst_s: float = 5.0  # audio a client may send ahead of real time before reads pause
    gateway_final_wait_s: float = 60.0  # after end, wait at most this long for the finals
    gateway_flow_high_ms: float = 1500.0  # final latency above this: larger chunks
    gateway_flow_low_ms: float = 600.0  # below this: smaller chunks

    # Consumers
    db_url: str = "sqlite:///" + str(_project_root() / ".cache" / "transcripts.db")
    metrics_port: int = 9108  # `streamscribe metrics` (always serves)
    metrics_host: str = "127.0.0.1"  # every /metrics endpoint; 0.0.0.0 in containers
    process_metrics_port: int | None = None  # worker, sink, alerts: None = no /metrics
    sla_ms: float = 450.0
    sla_violation_rate: float = 0.05

    # Post-processing (processors/postprocess.py): redaction off by default; a comma list
    # of digits, cards, emails. A run of at least redact_min_digits digits is "digits".
    redact: str = ""
    redact_min_digits: int = 6

    # Voice-command assistant (consumers/assistant.py, docs/assistant.md)
    assistant_wake: str = "hey scribe"
    assistant_intents: str = ""  # a YAML file; empty = the one shipped in the package
    assistant_timeout_s: float = 5.0  # command capture after the wake phrase (stream time)
    assistant_wake_threshold: float = 75.0  # rapidfuzz ratio (0-100) of the heard wake words
    assistant_intent_threshold: float = 0.7  # intent match confidence (0-1) to publish

    @property
    def bootstrap(self) -> str:
        """The bootstrap address to use: the given cluster, else the local broker."""
        return self.bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def controller_port(self) -> int:
        return self.broker_controller_port or self.broker_port + 1

    @property
    def group_stem(self) -> str:
        """The topic prefix without its trailing separators: what scopes group ids.

        >>> Settings(topic_prefix="acme.prod.").group_stem
        'acme.prod'
        """
        return self.topic_prefix.rstrip(GROUP_STEM_STRIP)

    def group_for(self, role: str) -> str:
        """The default consumer group of ``role``, scoped by the topic prefix.

        Two pipelines with different prefixes on one cluster share no group, and so no
        faust table changelog (``<group_id>-<table>-changelog``); with the default prefix
        the names are ``streamscribe-processors``, ``streamscribe-sink`` and so on. An
        explicit group id (``--group-id``) is the caller's to prefer.

        >>> Settings(topic_prefix="t1.").group_for("sink")
        't1-sink'
        >>> Settings().group_for("processors")
        'streamscribe-processors'
        """
        stem = self.group_stem
        return f"{stem}-{role}" if stem else role

    @property
    def group_id(self) -> str:
        """The processors' consumer group and faust app id: ``STREAMSCRIBE_GROUP_ID`` if set,
        else :meth:`group_for` ``("processors")``.

        >>> Settings(topic_prefix="t1.").group_id, Settings(group_id="g").group_id
        ('t1-processors', 'g')
        """
        return self.explicit_group_id or self.group_for(PROCESSORS_ROLE)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        names = [field.alias or name for name, field in cls.model_fields.items()]
        values: dict[str, Any] = {
            name: env[ENV_PREFIX + name.upper()]
            for name in names
            if ENV_PREFIX + name.upper() in env
        }
        if "bootstrap_servers" not in values and env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        try:
            return cls.model_validate(values)
        except PydanticValidationError as exc:
            raise UsageError(_describe(exc)) from None

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (and checked); ``None`` values are ignored."""
        values = self.model_dump(by_alias=True)
        values.update({k: v for k, v in changes.items() if v is not None})
        try:
            return type(self).model_validate(values)
        except PydanticValidationError as exc:
            raise UsageError(_describe(exc)) from None


def _describe(exc: PydanticValidationError) -> str:
    """One line per bad value, named as the environment variable that sets it."""
    return "; ".join(
        f"{ENV_PREFIX}{'.'.join(str(x) for x in e['loc']).upper()}: {e['msg']}"
        for e in exc.errors()
    )
