"""The shared-store setting: worker mode refuses a per-machine SQLite history store."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import CaretakerSettings, is_sqlite_url
from history.store import open_store


@pytest.mark.parametrize(
    ("url", "sqlite"),
    [
        ("sqlite:///var/lib/caretaker.db", True),
        ("sqlite+pysqlite:////tmp/x.db", True),
        ("SQLite:///x.db", True),
        ("postgresql+psycopg://caretaker@db.internal/caretaker", False),
        ("postgresql://u@h/sqlite", False),
        ("postgresql+asyncpg://u@h/db", False),
    ],
)
def test_is_sqlite_url(url: str, sqlite: bool) -> None:
    assert is_sqlite_url(url) is sqlite


@pytest.mark.parametrize(
    ("shared", "url", "refused"),
    [
        (False, None, False),  # the embedded default: the SQLite file
        (False, "sqlite:///{data}/other.db", False),
        (False, "postgresql+psycopg://u@127.0.0.1/db", False),
        (True, "postgresql+psycopg://u@127.0.0.1/db", False),
        (True, None, True),  # shared, but nobody said where: the per-machine default
        (True, "sqlite:///{data}/other.db", True),  # shared, but a file is per machine
    ],
)
def test_store_url_refuses_sqlite_only_when_the_store_must_be_shared(
    tmp_path: Path, shared: bool, url: str | None, refused: bool
) -> None:
    current = CaretakerSettings(
        data_dir=tmp_path,
        history_store_shared=shared,
        history_store_url=url.format(data=tmp_path) if url else None,
    )
    if refused:
        with pytest.raises(ConfigError, match="must be shared by every worker") as caught:
            current.store_url()
        assert "CARETAKER_HISTORY_STORE_URL" in str(caught.value)
    else:
        assert current.store_url() == (
            url.format(data=tmp_path) if url else f"sqlite:///{tmp_path / 'caretaker.db'}"
        )


def test_the_environment_says_shared_and_open_store_refuses_before_creating_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARETAKER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CARETAKER_HISTORY_STORE_URL", raising=False)
    monkeypatch.setenv("CARETAKER_HISTORY_STORE_SHARED", "true")

    with pytest.raises(ConfigError, match="only this machine sees"):
        open_store()
    assert not (tmp_path / "caretaker.db").exists()

    # An explicit URL given to open_store is the caller's choice (tests, the import command).
    with open_store(f"sqlite:///{tmp_path / 'given.db'}") as store:
        assert store.dialect == "sqlite"
