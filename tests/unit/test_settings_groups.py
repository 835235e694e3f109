"""Issue 13, item 10: the topic prefix scopes every default consumer group (one rule,
``Settings.group_for``); an explicit group id still wins."""

from __future__ import annotations

import argparse

import pytest

from streamscribe.cli import build_parser
from streamscribe.core.settings import Settings


@pytest.mark.parametrize(
    ("prefix", "stem"),
    [
        ("streamscribe.", "streamscribe"),
        ("t1.", "t1"),
        ("acme-prod-", "acme-prod"),
        ("acme_prod_", "acme_prod"),
        ("a.b.", "a.b"),
        ("x._-", "x"),
        ("plain", "plain"),
    ],
)
def test_the_stem_is_the_prefix_without_trailing_separators(prefix: str, stem: str) -> None:
    s = Settings(topic_prefix=prefix)
    assert s.group_stem == stem
    assert [s.group_for(r) for r in ("sink", "metrics", "alerts", "assistant", "tail")] == [
        f"{stem}-sink",
        f"{stem}-metrics",
        f"{stem}-alerts",
        f"{stem}-assistant",
        f"{stem}-tail",
    ]
    assert s.group_id == f"{stem}-processors"


def test_the_default_prefix_keeps_every_name() -> None:
    s = Settings()
    assert s.group_id == "streamscribe-processors"
    assert s.group_for("sink") == "streamscribe-sink"


def test_an_empty_prefix_gives_bare_role_names() -> None:
    assert Settings(topic_prefix="").group_for("sink") == "sink"


def test_an_explicit_group_id_wins_from_env_and_overrides() -> None:
    env = {"STREAMSCRIBE_TOPIC_PREFIX": "t1.", "STREAMSCRIBE_GROUP_ID": "retranscribe-1"}
    s = Settings.from_env(env)
    assert s.group_id == "retranscribe-1"
    assert s.group_for("sink") == "t1-sink"  # only the processors' group is explicit
    assert s.with_overrides(group_id="g2").group_id == "g2"
    assert s.with_overrides(topic_prefix="t2.").group_id == "retranscribe-1"


def test_a_prefix_override_moves_the_derived_group() -> None:
    s = Settings.from_env({"STREAMSCRIBE_TOPIC_PREFIX": "t1."})
    assert s.group_id == "t1-processors"
    assert s.with_overrides(topic_prefix="t2.").group_id == "t2-processors"
    assert s.with_overrides(group_id=None).group_id == "t1-processors"  # None is ignored


def test_a_bad_group_id_names_its_variable() -> None:
    from streamscribe.core.errors import UsageError

    with pytest.raises(UsageError, match="STREAMSCRIBE_GROUP_ID"):
        Settings().with_overrides(group_id=3)


@pytest.mark.parametrize("command", ["sink", "metrics", "alerts", "assistant", "worker"])
def test_no_cli_command_fixes_a_group_without_the_prefix(command: str) -> None:
    """The CLI leaves the group to the settings (``None``) unless ``--group-id`` is given."""
    args: argparse.Namespace = build_parser().parse_args([command])
    assert args.group_id is None
    given = build_parser().parse_args([command, "--group-id", "mine"])
    assert given.group_id == "mine"


def test_consumers_resolve_their_group_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_sink`` and the metrics service subscribe as ``<stem>-<role>`` by default."""
    from streamscribe.consumers import metrics, sink

    seen: list[str] = []
    monkeypatch.setattr(sink, "consume_batches", lambda _s, sub, *a, **k: seen.append(sub.group_id))
    monkeypatch.setattr(
        metrics, "consume_batches", lambda _s, sub, *a, **k: seen.append(sub.group_id)
    )
    monkeypatch.setattr(sink.DeliveryProducer, "from_settings", lambda *a, **k: _NullProducer())
    s = Settings(topic_prefix="t9.", db_url="sqlite://")
    sink.run_sink(s)
    sink.run_sink(s, group_id="explicit")
    metrics.MetricsService(s, port=0).run()
    assert seen == ["t9-sink", "explicit", "t9-metrics"]


class _NullProducer:
    def close(self) -> None:
        return None


@pytest.mark.parametrize("command", ["sink", "metrics", "alerts", "assistant"])
def test_live_group_names_the_live_worker_s_group(command: str) -> None:
    """``--live-group`` is the consumer's ``Settings.group_id``: the origin of live traffic."""
    from streamscribe.cli.consumers import with_live_group

    extra = ["--phrases", "x"] if command == "alerts" else []
    args = build_parser().parse_args([command, *extra, "--live-group", "demo-1"])
    s = Settings(topic_prefix="t1.")
    assert with_live_group(s, args).group_id == "demo-1"
    plain = build_parser().parse_args([command, *extra])
    assert with_live_group(s, plain).group_id == "t1-processors"
