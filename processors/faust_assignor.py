"""The group's partition assignor: faust's, told every member's changelog topics, so that
processes running different stages in one consumer group can keep standby tables.

faust-streaming 0.15.3's leader turns its assignment into Kafka's protocol assignment
keeping a standby partition only for a topic in *its own* table manager's changelogs
(``ClientAssignment.kafka_protocol_assignment``); every member then rebuilds its own
assignment with *its* table manager and asserts that both agree. In a group whose members
run different stages (``streamscribe worker --split-stages``: segmenter processes and
recognizer processes) the leader has the tables of one stage only: it drops the standbys
of the other stage's tables and their members fail that assertion (``AssertionError`` in
``on_assignment``), so split workers used to run without standbys and a takeover restored
the lost member's tables from their changelogs (``bench/README.md``, "Standby tables for
stage processes").

:class:`GroupChangelogAssignor` gives the leader's assignor a view of the tables in which
every changelog topic that some member subscribes to counts: faust names them
``<app id>-<table>-changelog`` and every member subscribes to its tables' changelogs. A
member's own check then agrees: its assignment holds only topics of its own stage.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, cast

from faust.assignor import PartitionAssignor


def is_changelog_of(app_id: str, topic: str) -> bool:
    """Whether ``topic`` is the changelog faust names for a table of app ``app_id``.

    >>> is_changelog_of("g", "g-sessions-changelog"), is_changelog_of("g", "g.audio")
    (True, False)
    """
    return topic.startswith(f"{app_id}-") and topic.endswith("-changelog")


class GroupTables:
    """This process's table manager, with the changelogs of the whole group.

    Everything but :attr:`changelog_topics` is the process's own table manager.
    """

    def __init__(self, tables: Any, app_id: str) -> None:
        self._tables = tables
        self._app_id = app_id
        self.group_changelogs: frozenset[str] = frozenset()

    def note_subscriptions(self, subscriptions: Iterable[Iterable[str]]) -> None:
        """Remember the changelog topics the group's members subscribe to (the leader, at
        each assignment)."""
        self.group_changelogs = frozenset(
            topic
            for subscription in subscriptions
            for topic in subscription
            if is_changelog_of(self._app_id, topic)
        )

    @property
    def changelog_topics(self) -> set[str]:
        return set(self._tables.changelog_topics) | self.group_changelogs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tables, name)


class GroupChangelogAssignor(PartitionAssignor):
    """faust's assignor, whose protocol assignment keeps the standbys of every member's
    tables (module docstring)."""

    def __init__(self, app: Any, replicas: int = 0) -> None:
        super().__init__(app, replicas=replicas)
        self._group_tables = GroupTables(app.tables, app.conf.id)
        self._table_manager = cast(Any, self._group_tables)  # what faust's methods read

    def _perform_assignment(self, cluster: Any, member_metadata: MutableMapping[str, Any]) -> Any:
        self._group_tables.note_subscriptions(
            metadata.subscription for metadata in member_metadata.values()
        )
        return super()._perform_assignment(cluster, member_metadata)
