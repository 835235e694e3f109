"""tests/pg.py fails loudly, with the install hint, when PostgreSQL is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pg


def test_missing_binaries_raise_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "PG_ROOT", tmp_path)
    with pytest.raises(pg.PostgresUnavailable, match="apt-get install -y postgresql"):
        pg.find_pg_bin()
    (tmp_path / "15" / "bin").mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (tmp_path / "15" / "bin" / name).touch()
    assert pg.find_pg_bin() == tmp_path / "15" / "bin"
