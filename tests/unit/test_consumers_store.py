"""The transcript store on SQLite: idempotent upserts, the later-publish rule (replays,
late older events, re-transcriptions), partials, sessions, batching, schema migration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from streamscribe.consumers import store as store_module
from streamscribe.consumers.store import SCHEMA_VERSION, TranscriptStore, schema_version
from streamscribe.core.errors import SinkError
from streamscribe.schemas.transcripts import FinalTranscript, PartialTranscript


def final(
    u: int,
    *,
    rev: int = 1,
    text: str | None = None,
    ch: int = 0,
    session: str = "call-1",
    start_ms: float | None = None,
    ts: dict[str, int] | None = None,
    pub: int = 81_000,
) -> FinalTranscript:
    """A final published at ``pub`` (unless ``ts`` gives the whole timestamp dict)."""
    start = u * 2000.0 if start_ms is None else start_ms
    return FinalTranscript(
        session_id=session,
        channel=ch,
        role=("agent", "customer")[ch],
        utterance=u,
        revision=rev,
        text=f"line {u} rev {rev}" if text is None else text,
        start_ms=start,
        end_ms=start + 1500.0,
        confidence=0.9,
        timestamps=ts if ts is not None else {"captured_at_us": 1_000, "published_at_us": pub},
        summary={"words": 3},
        reason="endpoint",
    )


def partial(u: int, rev: int, text: str, ch: int = 1) -> PartialTranscript:
    return PartialTranscript(
        session_id="call-1",
        channel=ch,
        role=("agent", "customer")[ch],
        utterance=u,
        revision=rev,
        text=text,
        stable_text=text[:2],
        start_ms=u * 2000.0,
        end_ms=u * 2000.0 + 500,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TranscriptStore]:
    s = TranscriptStore(f"sqlite:///{tmp_path / 'db' / 't.db'}")
    yield s
    s.close()


def rows(store: TranscriptStore, session: str = "call-1") -> list[tuple[int, int, int, str, int]]:
    return [
        (r.final.channel, r.final.utterance, r.final.revision, r.final.text, r.stored_at_us)
        for r in store.finals(session)
    ]


def test_duplicates_and_out_of_order_finals_are_stored_once(store: TranscriptStore) -> None:
    res = store.write([final(2), final(0), final(2), final(1)], stored_at_us=100)
    assert (res.finals_in, res.finals_written, res.finals_unchanged) == (4, 3, 1)
    res = store.write([final(1), final(0), final(3), final(2)], stored_at_us=200)
    assert (res.finals_written, res.finals_unchanged) == (1, 3)
    assert rows(store) == [
        (0, 0, 1, "line 0 rev 1", 100),
        (0, 1, 1, "line 1 rev 1", 100),
        (0, 2, 1, "line 2 rev 1", 100),
        (0, 3, 1, "line 3 rev 1", 200),
    ]
    assert store.counts() == {
        "sessions": 1,
        "channels": 1,
        "utterances": 4,
        "partials": 0,
        "latency": 4,
    }


def published(store: TranscriptStore) -> list[int | None]:
    with store.engine.connect() as conn:
        q = sa.select(store_module.utterances.c.published_at_us).order_by(
            store_module.utterances.c.channel, store_module.utterances.c.utterance
        )
        return list(conn.execute(q).scalars())


def test_a_later_publish_replaces_the_row_an_equal_or_earlier_one_does_not(
    store: TranscriptStore,
) -> None:
    store.write([final(0, rev=2, text="two", pub=5_000)], stored_at_us=100)
    res = store.write(
        [
            final(0, rev=2, text="two again", pub=5_000),  # duplicate / replay: same publish
            final(0, rev=9, text="older", pub=4_000),  # late and older, even at a higher rev
        ],
        stored_at_us=200,
    )
    assert (res.finals_written, res.finals_unchanged, res.sessions_touched) == (0, 2, 0)
    assert rows(store) == [(0, 0, 2, "two", 100)]
    # a re-transcription: same key, a lower revision, published later -> replaces the row
    res = store.write([final(0, rev=1, text="retranscribed", pub=6_000)], stored_at_us=300)
    assert (res.finals_written, res.sessions_touched) == (1, 1)
    assert rows(store) == [(0, 0, 1, "retranscribed", 300)]
    assert published(store) == [6_000]
    f = store.finals("call-1")[0].final
    assert (f.reason, f.summary, f.confidence, f.role) == ("endpoint", {"words": 3}, 0.9, "agent")
    assert f.timestamps == {"captured_at_us": 1_000, "published_at_us": 6_000}
    assert store.counts()["utterances"] == 1


def test_without_a_publish_time_the_revision_decides(store: TranscriptStore) -> None:
    store.write([final(0, rev=2, text="two", ts={})], stored_at_us=100)
    res = store.write(
        [final(0, rev=2, text="same rev", pub=9_000), final(0, rev=1, text="lower", ts={})],
        stored_at_us=200,
    )
    assert res.finals_written == 0
    assert rows(store) == [(0, 0, 2, "two", 100)]
    assert published(store) == [None]
    store.write([final(0, rev=3, text="three", pub=9_000)], stored_at_us=300)
    assert rows(store) == [(0, 0, 3, "three", 300)]
    assert published(store) == [9_000]
    store.write([final(0, rev=4, text="four", ts={})], stored_at_us=400)  # stored has one
    assert rows(store) == [(0, 0, 4, "four", 400)]
    assert published(store) == [None]


def test_the_sql_guard_alone_applies_the_rule(
    store: TranscriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the read-first filter disabled (as when a concurrent writer got in between),
    the ON CONFLICT .. WHERE guard still keeps the later final."""
    store.write([final(0, pub=5_000, text="kept"), final(1, ts={}, rev=2)], stored_at_us=100)
    monkeypatch.setattr(store_module, "supersedes", lambda *a: True)
    store.write(
        [
            final(0, rev=7, pub=5_000, text="replay"),
            final(1, rev=1, ts={}, text="lower"),
            final(2, pub=1, text="new line"),
        ],
        stored_at_us=200,
    )
    assert rows(store) == [
        (0, 0, 1, "kept", 100),
        (0, 1, 2, "line 1 rev 2", 100),
        (0, 2, 1, "new line", 200),
    ]
    store.write([final(0, rev=1, pub=5_001, text="later")], stored_at_us=300)
    assert rows(store)[0] == (0, 0, 1, "later", 300)


def test_within_one_batch_the_latest_publish_wins(store: TranscriptStore) -> None:
    res = store.write(
        [
            final(0, rev=3, text="a", pub=100),
            final(0, rev=1, text="c", pub=300),
            final(0, rev=2, text="b", pub=200),
            final(0, rev=5, text="c tie", pub=300),  # a tie: the first one seen stays
        ],
        stored_at_us=10,
    )
    assert (res.finals_in, res.finals_written) == (4, 1)
    assert rows(store) == [(0, 0, 1, "c", 10)]
    res = store.write(
        [final(1, rev=1, text="x", ts={}), final(1, rev=3, text="z", ts={})], stored_at_us=20
    )
    assert rows(store)[1] == (0, 1, 3, "z", 20)


def test_a_replayed_partial_of_a_finished_line_changes_nothing(store: TranscriptStore) -> None:
    store.write([partial(0, 1, "he"), partial(1, 1, "ot")], stored_at_us=10)
    store.write([final(0, ch=1, text="hello")], stored_at_us=20)
    res = store.write([partial(0, 1, "he"), partial(0, 2, "hel")], stored_at_us=30)
    assert (res.partials_in, res.partials_written, res.sessions_touched) == (2, 0, 0)
    assert [(p.utterance, p.text) for p in store.partials("call-1")] == [(1, "ot")]
    [s] = store.sessions()
    assert (s.first_seen_us, s.last_seen_us) == (10, 20)


def test_partials_keep_the_latest_and_vanish_with_the_final(store: TranscriptStore) -> None:
    store.write(
        [partial(0, 1, "he"), partial(0, 3, "hello th"), partial(0, 2, "hel")], stored_at_us=10
    )
    assert [(p.revision, p.text) for p in store.partials("call-1")] == [(3, "hello th")]
    store.write([partial(0, 2, "stale")], stored_at_us=20)
    assert [p.text for p in store.partials("call-1")] == ["hello th"]
    store.write([final(0, ch=1, text="hello there"), partial(1, 1, "ne")], stored_at_us=30)
    assert [(p.utterance, p.text) for p in store.partials("call-1")] == [(1, "ne")]
    assert store.counts()["partials"] == 1


def test_sessions_channels_and_roles(store: TranscriptStore) -> None:
    store.write([final(0, ch=0)], stored_at_us=100)
    store.write([final(0, ch=1), final(1, ch=1)], stored_at_us=300)
    store.write([final(0, ch=0)], stored_at_us=999)  # a replay touches nothing
    [s] = store.sessions()
    assert (s.session_id, s.first_seen_us, s.last_seen_us, s.channels) == ("call-1", 100, 300, 2)
    assert s.roles == {"0": "agent", "1": "customer"}
    assert (s.finals, s.end_ms) == (3, 3500.0)
    store.write([final(0, session="call-2")], stored_at_us=500)
    assert [x.session_id for x in store.sessions(limit=5)] == ["call-2", "call-1"]
    assert [x.session_id for x in store.sessions(limit=1)] == ["call-2"]
    assert store.session("nope") is None


def test_latency_rows_follow_the_written_revision(store: TranscriptStore) -> None:
    ts = {"captured_at_us": 0, "decided_at_us": 300_000, "published_at_us": 400_000}
    store.write([final(0, ts=ts)], stored_at_us=410_000)
    [rec] = store.latency_records()
    assert rec.stages_ms == {
        "processor_to_decision": 300.0,
        "decode_to_publish": 100.0,
        "publish_to_sink": 10.0,
    }
    assert rec.end_to_end_ms == 410.0
    store.write([final(0, ts=ts)], stored_at_us=990_000)  # replay: unchanged
    assert store.latency_records()[0].end_to_end_ms == 410.0
    store.write([final(0, rev=2, ts={})], stored_at_us=990_000)  # no timestamps: no figures
    assert store.latency_records() == []
    assert store.latency_records(since_us=1) == []


def test_write_batched_bounds_events_per_transaction(store: TranscriptStore) -> None:
    commits: list[int] = []
    sa.event.listen(store.engine, "commit", lambda conn: commits.append(1))
    events = [final(u) for u in range(23)]
    res = store.write_batched(events, batch_size=10, stored_at_us=5)
    assert (res.finals_in, res.finals_written) == (23, 23)
    assert len(commits) == 3
    with pytest.raises(ValueError):
        store.write_batched(events, batch_size=0)


def test_schema_version_and_newer_database_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    s = TranscriptStore(url)
    assert s.schema_version() == SCHEMA_VERSION
    with s.engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION + 1, applied_at_us=0))
    s.close()
    with pytest.raises(SinkError, match="newer than this streamscribe"):
        TranscriptStore(url)


def test_a_v1_database_is_migrated_and_backfilled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    with TranscriptStore(url) as s:
        s.write([final(0, pub=5_000), final(1, ts={"captured_at_us": 7})], stored_at_us=100)
        with s.engine.begin() as conn:  # back to the v1 schema: no published_at_us column
            conn.execute(sa.text("ALTER TABLE utterances DROP COLUMN published_at_us"))
            conn.execute(schema_version.update().values(version=1))
            cols = {c["name"] for c in sa.inspect(conn).get_columns("utterances")}
            assert "published_at_us" not in cols
    with TranscriptStore(url) as s:
        assert s.schema_version() == SCHEMA_VERSION == 2
        with s.engine.connect() as conn:
            versions = conn.execute(sa.select(schema_version.c.version)).scalars().all()
        assert sorted(versions) == [1, 2]
        assert published(s) == [5_000, None]
        res = s.write(
            [final(0, pub=5_000, text="replay"), final(1, rev=1, ts={})], stored_at_us=200
        )
        assert res.finals_written == 0
        s.write([final(0, pub=6_000, text="later")], stored_at_us=300)
        assert [r[3:] for r in rows(s)] == [("later", 300), ("line 1 rev 1", 100)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "bad database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite:////nonexistent-dir-xyz/t.db", "no transcript database"),
    ],
)
def test_bad_urls_are_sink_errors(url: str, message: str) -> None:
    with pytest.raises(SinkError, match=message):
        TranscriptStore(url, create=False)


def test_concurrent_first_opens_create_one_schema(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'race.db'}"
    with ThreadPoolExecutor(max_workers=6) as pool:
        stores = list(pool.map(lambda _: TranscriptStore(url), range(12)))
    with stores[0].engine.connect() as conn:
        versions = conn.execute(sa.select(schema_version.c.version)).scalars().all()
    assert versions == [SCHEMA_VERSION]
    for s in stores:
        s.close()
