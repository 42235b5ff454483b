"""The history store on PostgreSQL: the same contract as on SQLite, on a fresh database.

The module creates a database (``caretaker_test_<random>``) on the server at
127.0.0.1:5432 and drops it afterwards; each test gets a fresh schema in it. Skipped when
that server is unreachable.
Override the administrative URL with ``CARETAKER_TEST_PG_URL``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from history.store import open_store
from tests.unit.test_compliance_store import ComplianceStoreContract
from tests.unit.test_store import StoreContract

ADMIN_URL = os.environ.get(
    "CARETAKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    url = make_url(ADMIN_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError as exc:
        return f"PostgreSQL at {url.host}:{url.port} is unreachable ({exc})"
    return None


_UNREACHABLE = postgres_unreachable()
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(_UNREACHABLE is not None, reason=_UNREACHABLE or ""),
]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """The URL of a new, empty database for this module, dropped afterwards."""
    name = f"caretaker_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: a test that failed half-way may have left connections open.
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture()
def fresh_database(database: str) -> Iterator[str]:
    """A URL whose tables live in a new, empty schema of the module's database.

    A schema per test is much faster than a database per test, and exercises the
    ``options=-csearch_path=...`` URL that docs/store.md recommends.
    """
    schema = f"t_{secrets.token_hex(4)}"
    admin = sa.create_engine(database, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(database).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


class TestPostgresStore(StoreContract):
    """The contract on PostgreSQL."""

    @pytest.fixture()
    def store_url(self, fresh_database: str) -> str:
        return fresh_database


class TestPostgresComplianceStore(ComplianceStoreContract):
    """Audit and verification results on PostgreSQL."""

    @pytest.fixture()
    def store_url(self, fresh_database: str) -> str:
        return fresh_database


def test_timestamps_are_stored_as_timestamptz(fresh_database: str) -> None:
    with open_store(fresh_database) as store:
        store.record_window("acme", datetime(2026, 1, 3, 2, tzinfo=UTC), datetime.now(UTC))
        with store.engine.connect() as conn:
            kind = conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema()"
                    " AND table_name = 'maintenance_windows' AND column_name = 'start'"
                )
            ).scalar_one()
            # Read back in another session time zone: still the same instant.
            conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")
            start = conn.execute(sa.text("SELECT start FROM maintenance_windows")).scalar_one()

    assert kind == "timestamp with time zone"
    assert start == datetime(2026, 1, 3, 2, tzinfo=UTC)


def test_a_plain_postgresql_url_is_served_by_psycopg(fresh_database: str) -> None:
    plain = make_url(fresh_database).set(drivername="postgresql")

    with open_store(plain.render_as_string(hide_password=False)) as store:
        assert store.engine.url.drivername == "postgresql+psycopg"
        assert store.schema_version() >= 1
