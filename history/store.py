"""The history store: change records, maintenance windows, run locks and health history.

caretaker keeps what reports need in a database of its own, so reports never depend on
Prefect keeping old runs. By default it is the SQLite file ``<data>/caretaker.db``
(:func:`core.settings.settings`); at scale, PostgreSQL by URL
(``CARETAKER_HISTORY_STORE_URL=postgresql+psycopg://user@host/db``).

:func:`open_store` makes the engine (:mod:`history.engine`) and migrates the schema
(:mod:`history.migrations`; the current tables are in :mod:`history.schema`).
:class:`HistoryStore` is made of one part per area: change records
(:mod:`history.records`), maintenance windows (:mod:`history.windows`) and the per-client
run lock (:mod:`history.lock`), security-audit and verification results
(:mod:`history.compliance`). Health history has functions of its own that take the
store: :mod:`history.ingest`, :mod:`history.intervals`, :mod:`history.rollups`,
:mod:`history.metrics` and the import (:mod:`history.importer`). Tables and columns are
documented in ``docs/store.md``.
"""

from __future__ import annotations

import sqlalchemy as sa

from core.errors import ConfigError
from history.compliance import ComplianceRecords
from history.engine import default_store_url, make_engine, shown_url
from history.lock import RunLocks
from history.migrations import current_version, migrate
from history.records import ChangeRecords
from history.windows import MaintenanceWindows

__all__ = ["HistoryStore", "open_store"]


def open_store(url: str | None = None, *, migrate_to: int | None = None) -> HistoryStore:
    """Open the history store and bring its schema up to date.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``); default
            :func:`default_store_url`.
        migrate_to: stop migrating at this version (tests of upgrades); default latest.

    Returns:
        The open store; close it with :meth:`HistoryStore.close` or a ``with`` block.

    Raises:
        ConfigError: the URL is unusable, the database cannot be reached, or its schema
            is newer than this code.
    """
    engine = make_engine(url or default_store_url())
    try:
        migrate(engine, to=migrate_to)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise ConfigError(
            f"history store {shown_url(engine.url)} cannot be opened: {exc.orig or exc}"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return HistoryStore(engine)


class HistoryStore(ChangeRecords, MaintenanceWindows, RunLocks, ComplianceRecords):
    """The history store's operations. Get one from :func:`open_store`.

    Thread-safe (each call checks a connection out of the engine's pool). Each method is
    one transaction.
    """

    def schema_version(self) -> int:
        """The schema version of the database (after :func:`open_store`: the latest)."""
        with self._read() as conn:
            return current_version(conn)
