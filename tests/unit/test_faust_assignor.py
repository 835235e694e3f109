"""The group's partition assignor with members that run different stages
(``streamscribe worker --split-stages --workers 2``): every member accepts its assignment
and keeps standby tables of its own stage.

The real stage apps (:func:`build_worker`) and faust's own assignment code run here; only
the broker's side of a rebalance (subscriptions in, assignments out) is played by the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor import PartitionAssignor
from faust.types import TP

from streamscribe.core.settings import Settings
from streamscribe.processors.faust_assignor import GroupChangelogAssignor
from streamscribe.processors.worker import build_worker

PARTITIONS = 4


class _Cluster:
    """What the assignor reads of the cluster's metadata: partitions per topic."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))


def _member(stage: str) -> tuple[Any, list[str]]:
    """A stage process's app and the topics its consumer subscribes to (the stage's source
    topic and its tables' changelogs)."""
    settings = Settings(partitions=PARTITIONS, group_id="g")
    app, built = build_worker(settings, stages=(stage,))
    source = {"segmenter": built[0].topics.audio, "recognizer": built[0].topics.utterances}
    return app, sorted([source[stage].get_topic_name(), *app.tables.changelog_topics])


def _rebalance(leader: Any, members: dict[str, tuple[Any, list[str]]]) -> dict[str, Any]:
    """The leader's assignment of ``members`` (member id -> app, subscription)."""
    metadata = {
        member_id: ConsumerProtocolMemberMetadata(
            leader.version, subscription, leader._metadata.dumps()
        )
        for member_id, (_app, subscription) in members.items()
    }
    return leader.assign(_Cluster(), metadata)


def _split_group() -> dict[str, tuple[Any, list[str]]]:
    return {
        "seg-a": _member("segmenter"),
        "seg-b": _member("segmenter"),
        "rec-a": _member("recognizer"),
        "rec-b": _member("recognizer"),
    }


def test_every_stage_process_keeps_standbys_of_its_own_tables() -> None:
    group = _split_group()
    for app, _ in group.values():
        assert type(app.assignor) is GroupChangelogAssignor
        assert app.conf.table_standby_replicas == 1
    for leader_id in ("seg-a", "rec-a"):  # whichever stage the group's leader runs
        assignment = _rebalance(group[leader_id][0].assignor, group)
        for member_id, (app, subscription) in group.items():
            mine = app.assignor
            mine.on_assignment(assignment[member_id])  # faust asserts leader == member
            changelogs = set(app.tables.changelog_topics)
            actives = {tp for tp in mine.assigned_actives() if tp.topic in changelogs}
            standbys = {tp for tp in mine.assigned_standbys() if tp.topic in changelogs}
            assert {tp.topic for tp in standbys} == changelogs, member_id
            partner = {"a": "b", "b": "a"}[member_id[-1]]
            partner_app = group[f"{member_id[:-1]}{partner}"][0]
            # partner's assignment, read from the same rebalance
            partner_app.assignor.on_assignment(assignment[f"{member_id[:-1]}{partner}"])
            partner_actives = {
                tp for tp in partner_app.assignor.assigned_actives() if tp.topic in changelogs
            }
            # each member is the warm copy of its partner's tables, and of nothing else
            assert standbys == partner_actives, member_id
            assert actives.isdisjoint(standbys)
            assert {tp.partition for tp in actives} | {tp.partition for tp in standbys} == set(
                range(PARTITIONS)
            )
            source = [t for t in subscription if not t.endswith("-changelog")]
            assert {tp.partition for tp in mine.assigned_actives() if tp.topic in source} == {
                tp.partition for tp in actives
            }, "a table's partitions follow its source topic's"


def test_faust_s_own_assignor_fails_a_member_that_runs_the_other_stage() -> None:
    """What the group assignor is for: with faust's, the leader drops the standbys of the
    tables it does not have, and that member's check fails."""
    group = _split_group()
    leader_app = group["seg-a"][0]
    plain = PartitionAssignor(leader_app, replicas=1)
    assignment = _rebalance(plain, group)
    group["seg-b"][0].assignor.on_assignment(assignment["seg-b"])  # its own stage: fine
    with pytest.raises(AssertionError):
        group["rec-a"][0].assignor.on_assignment(assignment["rec-a"])


def test_one_process_per_worker_is_assigned_as_before() -> None:
    """Both stages in one process: the group assignor's assignment is faust's."""
    settings = Settings(partitions=PARTITIONS, group_id="g")
    apps = [build_worker(settings)[0] for _ in range(2)]
    subscription = sorted(
        {"streamscribe.audio", "streamscribe.utterances", *apps[0].tables.changelog_topics}
    )
    members = {"w-a": (apps[0], subscription), "w-b": (apps[1], subscription)}
    ours = _rebalance(apps[0].assignor, members)
    faust_s = _rebalance(PartitionAssignor(apps[0], replicas=1), members)
    assert {m: a.assignment for m, a in ours.items()} == {
        m: a.assignment for m, a in faust_s.items()
    }
    held = set()
    for member_id, app in zip(members, apps, strict=True):
        app.assignor.on_assignment(ours[member_id])
        assert {tp.topic for tp in app.assignor.assigned_standbys()} >= set(
            app.tables.changelog_topics
        )
        held |= app.assignor.assigned_actives()
    assert {TP("streamscribe.audio", p) for p in range(PARTITIONS)} <= held
