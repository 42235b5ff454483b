"""The history store: change records, maintenance windows, run locks and health history.

caretaker keeps what reports need in a database of its own, so reports never depend on
Prefect keeping old runs. By default it is the SQLite file ``<data>/caretaker.db``
(:func:`core.settings.settings`); at scale, PostgreSQL by URL
(``CARETAKER_HISTORY_STORE_URL=postgresql+psycopg://user@host/db``).

* The schema is versioned: ``schema_version`` holds one row per applied migration, and
  :data:`MIGRATIONS` lists them in order. :func:`open_store` migrates on open; concurrent
  openers serialise on a lock (an advisory transaction lock on PostgreSQL, the database's
  write lock on SQLite), and each migration runs in the same transaction as its version
  row, so a migration is applied exactly once or not at all.
* Queries use SQLAlchemy Core against :data:`metadata`, which describes the *current*
  schema. Migrations never use it: each one spells out its own DDL, frozen in time, so an
  old database is brought forward by exactly the steps a new one went through.
* Every timestamp is timezone-aware UTC going in and coming out (:class:`UtcDateTime`);
  a naive datetime is a programming error and is refused.
* The per-client run lock (:meth:`HistoryStore.acquire_run_lock`) is a row in
  ``run_locks``: it outlives the process, so it holds while a run is paused for approval,
  which a Prefect concurrency limit does not.

Tables and columns are documented in ``docs/store.md``.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from core.errors import ConfigError, MaintenanceInProgress
from core.settings import settings
from history.change import ChangeRecord

__all__ = [
    "MIGRATIONS",
    "PACKED_FIELDS",
    "PACKED_FORMAT",
    "SCHEMA_VERSION",
    "STATE_CODES",
    "HistoryStore",
    "LockEvent",
    "LockHandle",
    "Migration",
    "StoredWindow",
    "UtcDateTime",
    "default_store_url",
    "from_epoch_us",
    "metadata",
    "migrate",
    "open_store",
    "pack_interval",
    "repack",
    "to_epoch_us",
]

log = logging.getLogger(__name__)

WindowKind = Literal["planned", "run"]

#: Key of the PostgreSQL advisory lock that serialises migrations ("care" in ASCII).
_MIGRATION_LOCK_KEY = 0x63617265

# Bounds on identifier columns: generous, but bounded so PostgreSQL indexes stay small.
_CLIENT = 64
_SERVER = 255
_REF = 128
_RUN_ID = 64


# --------------------------------------------------------------------------- types


def _require_aware(value: datetime, what: str = "timestamp") -> datetime:
    """``value`` in UTC; a naive datetime raises ValueError (callers must say which zone)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} is naive; give a timezone-aware datetime")
    return value.astimezone(UTC)


#: The Unix epoch, aware.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_epoch_us(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact)."""
    return (_require_aware(value) - EPOCH) // _MICROSECOND


def from_epoch_us(value: int) -> datetime:
    """Integer microseconds since the Unix epoch as an aware UTC datetime (exact)."""
    return EPOCH + timedelta(microseconds=value)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    PostgreSQL stores ``timestamptz``. SQLite has no timestamp type: it stores an integer,
    microseconds since the Unix epoch (schema version 4; before, SQLAlchemy's ISO text).
    Integers sort as times, range queries work, and a reader that wants numbers (reports,
    :func:`history.ingest.read_intervals_frame`) reads them without parsing text.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        """``BIGINT`` on SQLite, ``timestamp with time zone`` elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(
        self, value: datetime | None, dialect: sa.Dialect
    ) -> datetime | int | None:
        """Refuse naive datetimes; store UTC (epoch microseconds on SQLite)."""
        if value is None:
            return None
        if dialect.name == "sqlite":
            return to_epoch_us(value)
        return _require_aware(value)

    def process_result_value(
        self, value: datetime | int | None, dialect: sa.Dialect
    ) -> datetime | None:
        """Return UTC, timezone-aware."""
        if value is None:
            return None
        if isinstance(value, int):
            return from_epoch_us(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: The timestamp column type of the frozen DDL of versions 1 to 3: on SQLite ``DATETIME``
#: (ISO text, naive UTC, as SQLAlchemy writes it), on PostgreSQL ``timestamptz``.
#: Version 4 rebuilt every SQLite timestamp column as ``BIGINT`` epoch microseconds.
_V1_TIMESTAMP = sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine[Any]:
    # JSONB on PostgreSQL so reports can query inside a record later; TEXT-backed on SQLite.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


# --------------------------------------------------------------------------- current schema

#: The current schema, used by queries (never by migrations).
metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)

change_records = sa.Table(
    "change_records",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(_CLIENT), nullable=False),
    sa.Column("change_ref", sa.String(_REF), nullable=False),
    sa.Column("flow_run_id", sa.String(_RUN_ID), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("started", UtcDateTime, nullable=False),
    sa.Column("ended", UtcDateTime, nullable=True),
    sa.Column("body", _json(), nullable=False),
    sa.Column("saved_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("client", "change_ref", "flow_run_id", name="uq_change_records_run"),
    sa.Index("ix_change_records_client_started", "client", "started"),
)

maintenance_windows = sa.Table(
    "maintenance_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(_CLIENT), nullable=False),
    sa.Column("server", sa.String(_SERVER), nullable=True),
    sa.Column("start", UtcDateTime, nullable=False),
    sa.Column("end", UtcDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("change_ref", sa.String(_REF), nullable=True),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('planned', 'run')", name="ck_maintenance_windows_kind"),
    sa.Index("ix_maintenance_windows_client_start", "client", "start"),
)

run_locks = sa.Table(
    "run_locks",
    metadata,
    sa.Column("client", sa.String(_CLIENT), primary_key=True),
    sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
    sa.Column("change_ref", sa.String(_REF), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
)

run_lock_events = sa.Table(
    "run_lock_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(_CLIENT), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
    sa.Column("change_ref", sa.String(_REF), nullable=False),
    sa.Column("previous_holder", sa.String(_RUN_ID), nullable=True),
    sa.Column("previous_change_ref", sa.String(_REF), nullable=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "event IN ('acquired', 'released', 'taken-over')", name="ck_run_lock_events_event"
    ),
    sa.Index("ix_run_lock_events_client_at", "client", "at"),
)

check_intervals = sa.Table(
    "check_intervals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(_CLIENT), nullable=False),
    sa.Column("server", sa.String(_SERVER), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("start", UtcDateTime, nullable=False),
    sa.Column("end", UtcDateTime, nullable=False),
    sa.Column("checks", sa.Integer, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("first_error", sa.Text, nullable=True),
    sa.Column("packed", sa.LargeBinary, nullable=True),
    sa.CheckConstraint("state IN ('up', 'down', 'unknown')", name="ck_check_intervals_state"),
    # As migration 5 creates it on SQLite (on PostgreSQL: packed INCLUDEd, no error).
    sa.Index(
        "ix_check_intervals_timeline", "client", "server", "start", "end", "packed", "first_error"
    ),
    sa.Index("ix_check_intervals_client_start", "client", "start"),
)

daily_rollups = sa.Table(
    "daily_rollups",
    metadata,
    sa.Column("client", sa.String(_CLIENT), primary_key=True),
    sa.Column("server", sa.String(_SERVER), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("up_s", sa.Float, nullable=False),
    sa.Column("down_s", sa.Float, nullable=False),
    sa.Column("unknown_s", sa.Float, nullable=False),
    sa.Column("maintenance_s", sa.Float, nullable=False),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(_CLIENT), nullable=False),
    sa.Column("server", sa.String(_SERVER), nullable=False),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column("load1", sa.Float, nullable=True),
    sa.Column("memory_used_pct", sa.Float, nullable=True),
    sa.Column("disk_used_pct", sa.Float, nullable=True),
    sa.Index("ux_metrics_client_server_ts", "client", "server", "ts", unique=True),
)


#: ``check_intervals.packed`` (schema version 5): a row's numbers as five big-endian
#: int64, in this order, so that a client's timeline is read as one byte string per
#: server (:func:`history.ingest.read_intervals_frame`) instead of a value per cell.
PACKED_FIELDS = ("start_us", "end_us", "checks", "failures", "state")
PACKED_FORMAT = ">5q"
#: The state codes of ``packed``.
STATE_CODES = {"up": 0, "down": 1, "unknown": 2}


def pack_interval(state: str, start: datetime, end: datetime, checks: int, failures: int) -> bytes:
    """The ``packed`` value of one ``check_intervals`` row (see :data:`PACKED_FIELDS`)."""
    return struct.pack(
        PACKED_FORMAT,
        to_epoch_us(start),
        to_epoch_us(end),
        checks,
        failures,
        STATE_CODES[state],
    )


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history.

    Attributes:
        version: the schema version after this step (1, 2, ... without gaps).
        description: what the step does, stored in ``schema_version``.
        apply: issues the step's DDL on a connection inside the migration transaction.
    """

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_runs(conn: Connection) -> None:
    # Frozen DDL of version 1: change these tables only through a new migration.
    md = sa.MetaData()
    sa.Table(
        "change_records",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(_CLIENT), nullable=False),
        sa.Column("change_ref", sa.String(_REF), nullable=False),
        sa.Column("flow_run_id", sa.String(_RUN_ID), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("started", _V1_TIMESTAMP, nullable=False),
        sa.Column("ended", _V1_TIMESTAMP, nullable=True),
        sa.Column("body", _json(), nullable=False),
        sa.Column("saved_at", _V1_TIMESTAMP, nullable=False),
        sa.UniqueConstraint("client", "change_ref", "flow_run_id", name="uq_change_records_run"),
        sa.Index("ix_change_records_client_started", "client", "started"),
    )
    sa.Table(
        "maintenance_windows",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(_CLIENT), nullable=False),
        sa.Column("server", sa.String(_SERVER), nullable=True),
        sa.Column("start", _V1_TIMESTAMP, nullable=False),
        sa.Column("end", _V1_TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("change_ref", sa.String(_REF), nullable=True),
        sa.Column("recorded_at", _V1_TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('planned', 'run')", name="ck_maintenance_windows_kind"),
        sa.Index("ix_maintenance_windows_client_start", "client", "start"),
    )
    sa.Table(
        "run_locks",
        md,
        sa.Column("client", sa.String(_CLIENT), primary_key=True),
        sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
        sa.Column("change_ref", sa.String(_REF), nullable=False),
        sa.Column("acquired_at", _V1_TIMESTAMP, nullable=False),
    )
    md.create_all(conn)


def _v2_lock_events_and_health(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "run_lock_events",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(_CLIENT), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
        sa.Column("change_ref", sa.String(_REF), nullable=False),
        sa.Column("previous_holder", sa.String(_RUN_ID), nullable=True),
        sa.Column("previous_change_ref", sa.String(_REF), nullable=True),
        sa.Column("at", _V1_TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "event IN ('acquired', 'released', 'taken-over')", name="ck_run_lock_events_event"
        ),
        sa.Index("ix_run_lock_events_client_at", "client", "at"),
    )
    sa.Table(
        "check_intervals",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(_CLIENT), nullable=False),
        sa.Column("server", sa.String(_SERVER), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("start", _V1_TIMESTAMP, nullable=False),
        sa.Column("end", _V1_TIMESTAMP, nullable=False),
        sa.Column("checks", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_error", sa.Text, nullable=True),
        sa.CheckConstraint("state IN ('up', 'down', 'unknown')", name="ck_check_intervals_state"),
        sa.Index("ix_check_intervals_server_start", "server", "start"),
        sa.Index("ix_check_intervals_client_start", "client", "start"),
    )
    sa.Table(
        "daily_rollups",
        md,
        sa.Column("client", sa.String(_CLIENT), primary_key=True),
        sa.Column("server", sa.String(_SERVER), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("up_s", sa.Float, nullable=False),
        sa.Column("down_s", sa.Float, nullable=False),
        sa.Column("unknown_s", sa.Float, nullable=False),
        sa.Column("maintenance_s", sa.Float, nullable=False),
    )
    md.create_all(conn)


def _v3_metrics(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "metrics",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(_CLIENT), nullable=False),
        sa.Column("server", sa.String(_SERVER), nullable=False),
        sa.Column("ts", _V1_TIMESTAMP, nullable=False),
        sa.Column("load1", sa.Float, nullable=True),
        sa.Column("memory_used_pct", sa.Float, nullable=True),
        sa.Column("disk_used_pct", sa.Float, nullable=True),
        sa.Index("ux_metrics_client_server_ts", "client", "server", "ts", unique=True),
    )
    md.create_all(conn)


def _v4_sqlite_tables() -> list[tuple[sa.Table, tuple[str, ...]]]:
    """Version 4 of every SQLite table with a timestamp, and its timestamp columns.

    Frozen DDL: timestamps are ``BIGINT`` microseconds since the Unix epoch.
    """
    md = sa.MetaData()
    us = sa.BigInteger
    return [
        (
            sa.Table(
                "schema_version",
                md,
                sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("description", sa.Text, nullable=False),
                sa.Column("applied_at", us, nullable=False),
            ),
            ("applied_at",),
        ),
        (
            sa.Table(
                "change_records",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(_CLIENT), nullable=False),
                sa.Column("change_ref", sa.String(_REF), nullable=False),
                sa.Column("flow_run_id", sa.String(_RUN_ID), nullable=False),
                sa.Column("outcome", sa.String(32), nullable=True),
                sa.Column("started", us, nullable=False),
                sa.Column("ended", us, nullable=True),
                sa.Column("body", _json(), nullable=False),
                sa.Column("saved_at", us, nullable=False),
                sa.UniqueConstraint(
                    "client", "change_ref", "flow_run_id", name="uq_change_records_run"
                ),
                sa.Index("ix_change_records_client_started", "client", "started"),
            ),
            ("started", "ended", "saved_at"),
        ),
        (
            sa.Table(
                "maintenance_windows",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(_CLIENT), nullable=False),
                sa.Column("server", sa.String(_SERVER), nullable=True),
                sa.Column("start", us, nullable=False),
                sa.Column("end", us, nullable=False),
                sa.Column("kind", sa.String(16), nullable=False),
                sa.Column("change_ref", sa.String(_REF), nullable=True),
                sa.Column("recorded_at", us, nullable=False),
                sa.CheckConstraint(
                    "kind IN ('planned', 'run')", name="ck_maintenance_windows_kind"
                ),
                sa.Index("ix_maintenance_windows_client_start", "client", "start"),
            ),
            ("start", "end", "recorded_at"),
        ),
        (
            sa.Table(
                "run_locks",
                md,
                sa.Column("client", sa.String(_CLIENT), primary_key=True),
                sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
                sa.Column("change_ref", sa.String(_REF), nullable=False),
                sa.Column("acquired_at", us, nullable=False),
            ),
            ("acquired_at",),
        ),
        (
            sa.Table(
                "run_lock_events",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(_CLIENT), nullable=False),
                sa.Column("event", sa.String(16), nullable=False),
                sa.Column("holder_flow_run_id", sa.String(_RUN_ID), nullable=False),
                sa.Column("change_ref", sa.String(_REF), nullable=False),
                sa.Column("previous_holder", sa.String(_RUN_ID), nullable=True),
                sa.Column("previous_change_ref", sa.String(_REF), nullable=True),
                sa.Column("at", us, nullable=False),
                sa.CheckConstraint(
                    "event IN ('acquired', 'released', 'taken-over')",
                    name="ck_run_lock_events_event",
                ),
                sa.Index("ix_run_lock_events_client_at", "client", "at"),
            ),
            ("at",),
        ),
        (
            sa.Table(
                "check_intervals",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(_CLIENT), nullable=False),
                sa.Column("server", sa.String(_SERVER), nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("start", us, nullable=False),
                sa.Column("end", us, nullable=False),
                sa.Column("checks", sa.Integer, nullable=False),
                sa.Column("failures", sa.Integer, nullable=False),
                sa.Column("first_error", sa.Text, nullable=True),
                sa.CheckConstraint(
                    "state IN ('up', 'down', 'unknown')", name="ck_check_intervals_state"
                ),
                sa.Index("ix_check_intervals_client_server_start", "client", "server", "start"),
                sa.Index("ix_check_intervals_client_start", "client", "start"),
            ),
            ("start", "end"),
        ),
        (
            sa.Table(
                "metrics",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(_CLIENT), nullable=False),
                sa.Column("server", sa.String(_SERVER), nullable=False),
                sa.Column("ts", us, nullable=False),
                sa.Column("load1", sa.Float, nullable=True),
                sa.Column("memory_used_pct", sa.Float, nullable=True),
                sa.Column("disk_used_pct", sa.Float, nullable=True),
                sa.Index("ux_metrics_client_server_ts", "client", "server", "ts", unique=True),
            ),
            ("ts",),
        ),
    ]


# SQLAlchemy's ISO text (naive UTC) as SQLite wrote it up to version 3:
# 'YYYY-MM-DD HH:MM:SS' and an optional fraction of up to 6 digits.
_D2 = "[0-9][0-9]"
_ISO_SECONDS = f"{_D2}{_D2}-{_D2}-{_D2}[ T]{_D2}:{_D2}:{_D2}"
_ISO_TEXT = (
    f"({{c}} GLOB '{_ISO_SECONDS}' OR ({{c}} GLOB '{_ISO_SECONDS}.[0-9]*'"
    " AND length({c}) <= 26 AND substr({c}, 21) NOT GLOB '*[^0-9]*'))"
)
# That text as exact integer microseconds: whole seconds by strftime('%s'), then the
# fraction's digits padded to 6 on the right. Integers (rows written by this code into a
# store not yet at version 4) and NULLs are kept as they are.
_ISO_TO_US = (
    "CASE WHEN typeof({c}) = 'text' THEN"
    " CAST(strftime('%s', substr({c}, 1, 19)) AS INTEGER) * 1000000"
    " + CAST(substr(substr({c}, 21) || '000000', 1, 6) AS INTEGER)"
    " ELSE {c} END"
)


def _v4_integer_timestamps(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        # timestamptz stays; only the interval index changes, as on SQLite.
        conn.execute(sa.text("DROP INDEX ix_check_intervals_server_start"))
        conn.execute(
            sa.text(
                "CREATE INDEX ix_check_intervals_client_server_start"
                " ON check_intervals (client, server, start)"
            )
        )
        return
    # SQLite cannot change a column's type: each table is rebuilt (renamed aside, created
    # anew, rows copied with their timestamps converted in SQL, the old one dropped).
    for table, stamps in _v4_sqlite_tables():
        name = table.name
        old = f"{name}__v3"
        conn.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO "{old}"')
        for column in stamps:
            c = f'"{column}"'
            kept = f"typeof({c}) IN ('integer', 'null')"
            iso = f"typeof({c}) = 'text' AND {_ISO_TEXT.format(c=c)}"
            bad = conn.exec_driver_sql(
                # Identifiers from the frozen tables above, no input.
                f'SELECT {c} FROM "{old}" WHERE NOT ({kept} OR ({iso})) LIMIT 1'  # noqa: S608
            ).first()
            if bad is not None:
                raise ConfigError(
                    f"history store: {name}.{column} holds {bad[0]!r}, which is not a"
                    " timestamp this migration can convert; nothing was changed"
                )
        indexes = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
            " AND sql IS NOT NULL",
            (old,),
        ).all()
        for (index,) in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{index}"')
        conn.execute(sa.schema.CreateTable(table))
        columns = [c.name for c in table.columns]
        values = [_ISO_TO_US.format(c=f'"{c}"') if c in stamps else f'"{c}"' for c in columns]
        names = ", ".join(f'"{c}"' for c in columns)
        conn.exec_driver_sql(
            f'INSERT INTO "{name}" ({names}) SELECT {", ".join(values)} FROM "{old}"'  # noqa: S608
        )
        conn.exec_driver_sql(f'DROP TABLE "{old}"')
        for index in table.indexes:
            index.create(conn)


def repack(conn: Connection) -> int:
    """Fill ``check_intervals.packed`` where it is missing (NULL), in chunks.

    Migration 5 uses it for the rows already there; afterwards caretaker writes ``packed``
    with every row, so it only finds rows written by another tool. Returns rows filled.
    """
    start: Any
    end: Any
    if conn.dialect.name == "sqlite":  # epoch microseconds already (version 4)
        start, end = sa.column("start"), sa.column("end")
    else:  # extract() is numeric on PostgreSQL >= 14: exact
        start, end = (
            sa.cast(sa.extract("epoch", sa.column(c)) * 1_000_000, sa.BigInteger)
            for c in ("start", "end")
        )
    t = sa.table("check_intervals", sa.column("id"), sa.column("packed"))
    query = (
        sa.select(
            sa.column("id"),
            sa.column("state"),
            start,
            end,
            sa.column("checks"),
            sa.column("failures"),
        )
        .select_from(sa.table("check_intervals"))
        .where(sa.column("packed").is_(None))
        .order_by(sa.column("id"))
        .limit(50_000)
    )
    filled = 0
    while rows := conn.execute(query).all():
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("row_id")),
            [
                {
                    "row_id": row_id,
                    "packed": struct.pack(
                        PACKED_FORMAT, s, e, checks, failures, STATE_CODES[state]
                    ),
                }
                for row_id, state, s, e, checks, failures in rows
            ],
        )
        filled += len(rows)
    return filled


def _v5_packed_timeline(conn: Connection) -> None:
    blob = "BLOB" if conn.dialect.name == "sqlite" else "BYTEA"
    conn.exec_driver_sql(f"ALTER TABLE check_intervals ADD COLUMN packed {blob}")
    repack(conn)
    conn.exec_driver_sql("DROP INDEX ix_check_intervals_client_server_start")
    # A report's read never visits the table rows: what it reads is in the index. On
    # PostgreSQL the error stays out (an index entry must fit in a third of a page).
    columns = 'client, server, start, "end"'
    conn.exec_driver_sql(
        f"CREATE INDEX ix_check_intervals_timeline ON check_intervals ({columns}, packed,"
        " first_error)"
        if conn.dialect.name == "sqlite"
        else f"CREATE INDEX ix_check_intervals_timeline ON check_intervals ({columns})"
        " INCLUDE (packed)"
    )


#: Every migration, in order; the last one's version is the current schema version.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "change records, maintenance windows, run locks", _v1_runs),
    Migration(2, "run lock events, check intervals, daily rollups", _v2_lock_events_and_health),
    Migration(3, "metrics (load, memory, disk per server)", _v3_metrics),
    Migration(
        4,
        "SQLite timestamps as integer epoch microseconds; interval index (client, server, start)",
        _v4_integer_timestamps,
    ),
    Migration(
        5,
        "check_intervals.packed (a row's numbers in one value); interval index covers reads",
        _v5_packed_timeline,
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version


def _current_version(conn: Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(schema_version.c.version), 0))
        ).scalar_one()
    )


def migrate(engine: Engine, to: int | None = None) -> int:
    """Bring the database up to schema version ``to`` (default: the latest).

    Safe to call from many processes at once: PostgreSQL openers queue on an advisory
    transaction lock, SQLite openers on the database's write lock (``BEGIN IMMEDIATE``).
    All pending steps and their ``schema_version`` rows commit together, or none do.

    Args:
        engine: an engine made by :func:`open_store` (SQLite engines need its BEGIN hook).
        to: the version to stop at; for tests of upgrades from an old schema.

    Returns:
        The schema version after migrating.

    Raises:
        ConfigError: the database is newer than this code (downgrades are not supported).
    """
    target = SCHEMA_VERSION if to is None else to
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"no schema version {target}; known versions are 1..{SCHEMA_VERSION}")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
        schema_version.create(conn, checkfirst=True)
        current = _current_version(conn)
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"history store {_shown(engine.url)} is at schema version {current}, newer than"
                f" this caretaker knows ({SCHEMA_VERSION}); upgrade caretaker"
            )
        for step in MIGRATIONS:
            if current < step.version <= target:
                log.info(
                    "history store: migrating to version %d (%s)", step.version, step.description
                )
                step.apply(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=step.version, description=step.description, applied_at=_now()
                    )
                )
                current = step.version
        return current


# --------------------------------------------------------------------------- engines


def _now() -> datetime:
    return datetime.now(UTC)


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def default_store_url() -> str:
    """The store's URL from settings: ``CARETAKER_HISTORY_STORE_URL``, else the SQLite file."""
    current = settings()
    if current.history_store_url:
        return current.history_store_url
    return f"sqlite:///{current.data / 'caretaker.db'}"


def _use_wal(dbapi_connection: DBAPIConnection) -> None:
    """Put the database in WAL mode, which lets readers (reports) proceed while a writer
    (health checks) holds the lock. The mode is persistent, so this only changes a new file;
    the switch needs an exclusive lock and SQLite answers "locked" at once (without its busy
    timeout) when several processes open a fresh store together, so retry briefly."""
    cursor = dbapi_connection.cursor()
    try:
        for attempt in range(100):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
    finally:
        cursor.close()


_MMAP_BYTES = 1 << 30


def _sqlite_engine(url: URL) -> Engine:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ConfigError(
            f"history store {_shown(url)}: give a SQLite file path; an in-memory database"
            " would not be shared between connections or runs"
        )
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    # timeout: how long a writer waits for another's write lock before "database is locked".
    engine = sa.create_engine(url.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the sqlite3 module, which would skip it for SELECT and DDL:
        # we issue our own (below) so reads are repeatable and DDL is transactional.
        dbapi_connection.isolation_level = None
        _use_wal(dbapi_connection)
        # Read the file through a memory map (up to 1 GiB): a report's read of a year's
        # timeline takes its index pages from the OS cache without copying them in (the
        # first read in a process measured 0.10 s instead of 0.15 s).
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, so check-then-write sequences (the run
        # lock, migrations) are atomic and never fail on a read-to-write lock upgrade.
        # Read-only work asks for a deferred transaction instead.
        deferred = conn.get_execution_options().get("caretaker_read_only", False)
        conn.exec_driver_sql("BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE")

    return engine


def _engine(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"history store URL {url_text!r} is not a database URL") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        # Any PostgreSQL URL (plain, psycopg2 or asyncpg, e.g. copied from Prefect's own
        # setting) is served by the synchronous psycopg 3 driver caretaker depends on.
        return sa.create_engine(url.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    raise ConfigError(
        f"history store URL {_shown(url)}: unsupported database {backend!r}"
        " (use sqlite:///path or postgresql+psycopg://user@host/db)"
    )


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
    engine = _engine(url or default_store_url())
    try:
        migrate(engine, to=migrate_to)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise ConfigError(
            f"history store {_shown(engine.url)} cannot be opened: {exc.orig or exc}"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return HistoryStore(engine)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StoredWindow:
    """A maintenance window as stored: time that reports count as planned maintenance.

    Attributes:
        id: row id.
        client: client slug.
        server: the server, or None when the window covers the whole client.
        start: start (UTC).
        end: end (UTC).
        kind: ``planned`` (the scheduled window) or ``run`` (when a run actually worked).
        change_ref: the change the window belongs to, if any.
        recorded_at: when the row was written (UTC).
    """

    id: int
    client: str
    server: str | None
    start: datetime
    end: datetime
    kind: WindowKind
    change_ref: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class LockHandle:
    """Proof that a run holds its client's run lock.

    Attributes:
        client: client slug.
        holder_flow_run_id: the run that holds the lock.
        change_ref: the change that run implements.
        acquired_at: when the lock was taken (UTC); for a re-entry, when it was first taken.
        took_over_from: the stale run the lock was taken from, if any.
        took_over_change_ref: that run's change ref.
        reentered: the holder asked again (task retry, resumed run) and already held it.
    """

    client: str
    holder_flow_run_id: str
    change_ref: str
    acquired_at: datetime
    took_over_from: str | None = None
    took_over_change_ref: str | None = None
    reentered: bool = False


@dataclass(frozen=True)
class LockEvent:
    """One entry of a client's run-lock history (``run_lock_events``).

    Attributes:
        client: client slug.
        event: ``acquired``, ``released`` or ``taken-over``.
        holder_flow_run_id: the run that acquired, released or took over the lock.
        change_ref: that run's change ref.
        previous_holder: for a takeover, the stale run the lock was taken from.
        previous_change_ref: that run's change ref.
        at: when it happened (UTC).
    """

    client: str
    event: Literal["acquired", "released", "taken-over"]
    holder_flow_run_id: str
    change_ref: str
    previous_holder: str | None
    previous_change_ref: str | None
    at: datetime


# --------------------------------------------------------------------------- the store


class HistoryStore:
    """The history store's operations. Get one from :func:`open_store`.

    Thread-safe (each call checks a connection out of the engine's pool). Each method is
    one transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ---- lifecycle

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for reports that read with pandas)."""
        return self._engine

    @property
    def url(self) -> str:
        """The store's URL with any password masked (safe to log)."""
        return _shown(self._engine.url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close the store's connections."""
        self._engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HistoryStore({self.url!r})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(caretaker_read_only=True)
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT that knows ON CONFLICT (both dialects spell it the same way)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def schema_version(self) -> int:
        """The schema version of the database (after :func:`open_store`: the latest)."""
        with self._read() as conn:
            return _current_version(conn)

    # ---- change records

    def save_change_record(self, record: ChangeRecord) -> None:
        """Insert or replace the record of one run (keyed by client, change ref, flow run).

        Saving again as the run progresses replaces the earlier version; the record is
        validated as a whole first (its lists may have been appended to in place).

        Args:
            record: the change record.
        """
        record = ChangeRecord.model_validate(record.model_dump())
        values = {
            "client": record.client,
            "change_ref": record.change_ref,
            "flow_run_id": record.flow_run_id,
            "outcome": record.outcome.value if record.outcome else None,
            "started": record.started,
            "ended": record.ended,
            "body": record.model_dump(mode="json"),
            "saved_at": _now(),
        }
        statement = self._insert(change_records).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["client", "change_ref", "flow_run_id"],
            set_={
                k: statement.excluded[k]
                for k in ("outcome", "started", "ended", "body", "saved_at")
            },
        )
        with self._write() as conn:
            conn.execute(statement)

    def change_records(
        self, client: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[ChangeRecord]:
        """A client's change records, by start time.

        Args:
            client: client slug.
            since: only runs that started at or after this time (aware).
            until: only runs that started before this time (aware).

        Returns:
            The records, oldest first.
        """
        query = sa.select(change_records.c.body).where(change_records.c.client == client)
        if since is not None:
            query = query.where(change_records.c.started >= _require_aware(since, "since"))
        if until is not None:
            query = query.where(change_records.c.started < _require_aware(until, "until"))
        query = query.order_by(change_records.c.started, change_records.c.id)
        with self._read() as conn:
            bodies = conn.execute(query).scalars().all()
        return [ChangeRecord.model_validate(body) for body in bodies]

    # ---- maintenance windows

    def record_window(
        self,
        client: str,
        start: datetime,
        end: datetime,
        kind: WindowKind = "planned",
        change_ref: str | None = None,
        server: str | None = None,
    ) -> StoredWindow:
        """Record a maintenance window (reports count it as planned maintenance time).

        Recording the same window again (same client, server, kind, change ref, start and
        end) returns the stored one instead of adding a duplicate, so a retried task does
        not double the maintenance time.

        Args:
            client: client slug.
            start: start (aware).
            end: end (aware), after ``start``.
            kind: ``planned`` (the scheduled window) or ``run`` (when a run worked).
            change_ref: the change it belongs to, if any.
            server: the server, or None for the whole client.

        Returns:
            The stored window.
        """
        start = _require_aware(start, "start")
        end = _require_aware(end, "end")
        if end <= start:
            raise ValueError(f"window end {end.isoformat()} is not after start {start.isoformat()}")
        if kind not in ("planned", "run"):
            raise ValueError(f"window kind {kind!r} is not 'planned' or 'run'")
        t = maintenance_windows
        same = sa.select(t).where(
            t.c.client == client,
            t.c.server.is_(None) if server is None else t.c.server == server,
            t.c.kind == kind,
            t.c.change_ref.is_(None) if change_ref is None else t.c.change_ref == change_ref,
            t.c.start == start,
            t.c.end == end,
        )
        with self._write() as conn:
            row = conn.execute(same).first()
            if row is None:
                conn.execute(
                    t.insert().values(
                        client=client,
                        server=server,
                        start=start,
                        end=end,
                        kind=kind,
                        change_ref=change_ref,
                        recorded_at=_now(),
                    )
                )
                row = conn.execute(same).one()
        return _window(row)

    def windows(
        self,
        client: str,
        start: datetime,
        end: datetime,
        kind: WindowKind | None = None,
    ) -> list[StoredWindow]:
        """A client's maintenance windows that overlap ``[start, end)``.

        Args:
            client: client slug.
            start: start of the period (aware).
            end: end of the period (aware).
            kind: only this kind; default both.

        Returns:
            The windows, by start time (whole-client and per-server windows alike).
        """
        t = maintenance_windows
        query = sa.select(t).where(
            t.c.client == client,
            t.c.start < _require_aware(end, "end"),
            t.c.end > _require_aware(start, "start"),
        )
        if kind is not None:
            query = query.where(t.c.kind == kind)
        with self._read() as conn:
            rows = conn.execute(query.order_by(t.c.start, t.c.id)).all()
        return [_window(row) for row in rows]

    # ---- run lock

    def acquire_run_lock(
        self,
        client: str,
        holder_flow_run_id: str,
        change_ref: str,
        *,
        is_stale: Callable[[str], bool] | None = None,
    ) -> LockHandle:
        """Take the client's run lock for a maintenance run, atomically.

        The lock is a row, so it holds across a Prefect pause, a worker restart and a
        process exit, until :meth:`release_run_lock` (or a takeover).

        * No holder: the lock is taken.
        * The same run holds it (a retried task, a resumed run): it is returned as is.
        * Another run holds it: ``is_stale(holder_run_id)`` is asked, outside any database
          transaction, whether that run is finished (crashed, failed, cancelled,
          completed). If so, the lock is taken over with a compare-and-swap on the holder
          seen (two contenders cannot both take over) and the takeover is recorded in
          ``run_lock_events``. Otherwise the call is refused.

        Args:
            client: client slug.
            holder_flow_run_id: the run asking (its Prefect flow run id).
            change_ref: the change it implements.
            is_stale: says whether a holder run is finished; None: holders are never stale.
                An exception it raises propagates (the lock is not taken).

        Returns:
            The handle; ``took_over_from`` names a stale holder that was replaced.

        Raises:
            MaintenanceInProgress: another, live run holds the lock (names it and its change).
        """
        now = _now()
        claim = (
            self._insert(run_locks)
            .values(
                client=client,
                holder_flow_run_id=holder_flow_run_id,
                change_ref=change_ref,
                acquired_at=now,
            )
            .on_conflict_do_nothing(index_elements=["client"])
            # RETURNING says whether this statement inserted the row; rowcount does not
            # (through SQLAlchemy, psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING).
            .returning(run_locks.c.client)
        )
        # A holder may release between our look and our takeover; try again then. Three
        # rounds are plenty: each lost round means someone else made progress.
        for _ in range(3):
            with self._write() as conn:
                if conn.execute(claim).first() is not None:
                    self._lock_event(conn, client, "acquired", holder_flow_run_id, change_ref)
                    return LockHandle(client, holder_flow_run_id, change_ref, now)
                held = self._lock_row(conn, client)
            if held is None:
                continue
            if held.holder_flow_run_id == holder_flow_run_id:
                return LockHandle(
                    client,
                    held.holder_flow_run_id,
                    held.change_ref,
                    held.acquired_at,
                    reentered=True,
                )
            if is_stale is None or not is_stale(held.holder_flow_run_id):
                raise MaintenanceInProgress(
                    client, held.holder_flow_run_id, held.change_ref, held.acquired_at
                )
            swap = (
                run_locks.update()
                .where(
                    run_locks.c.client == client,
                    run_locks.c.holder_flow_run_id == held.holder_flow_run_id,
                )
                .values(
                    holder_flow_run_id=holder_flow_run_id, change_ref=change_ref, acquired_at=now
                )
                .returning(run_locks.c.client)
            )
            with self._write() as conn:
                if conn.execute(swap).first() is not None:
                    self._lock_event(
                        conn,
                        client,
                        "taken-over",
                        holder_flow_run_id,
                        change_ref,
                        held.holder_flow_run_id,
                        held.change_ref,
                    )
                    log.warning(
                        "client %s: run lock taken over by %s (change %s) from finished run %s"
                        " (change %s)",
                        client,
                        holder_flow_run_id,
                        change_ref,
                        held.holder_flow_run_id,
                        held.change_ref,
                    )
                    return LockHandle(
                        client,
                        holder_flow_run_id,
                        change_ref,
                        now,
                        took_over_from=held.holder_flow_run_id,
                        took_over_change_ref=held.change_ref,
                    )
        current = self.run_lock(client)
        if current is None:  # pragma: no cover - only under pathological churn
            raise MaintenanceInProgress(client, "(changing hands)", "(unknown)")
        raise MaintenanceInProgress(
            client, current.holder_flow_run_id, current.change_ref, current.acquired_at
        )

    def release_run_lock(self, client: str, holder_flow_run_id: str) -> bool:
        """Release the client's run lock if ``holder_flow_run_id`` holds it.

        A run whose lock was taken over releases nothing (the new holder keeps it).

        Args:
            client: client slug.
            holder_flow_run_id: the run releasing.

        Returns:
            True when the lock was held by that run and is now free.
        """
        with self._write() as conn:
            row = self._lock_row(conn, client)
            if row is None or row.holder_flow_run_id != holder_flow_run_id:
                return False
            conn.execute(
                run_locks.delete().where(
                    run_locks.c.client == client,
                    run_locks.c.holder_flow_run_id == holder_flow_run_id,
                )
            )
            self._lock_event(conn, client, "released", holder_flow_run_id, row.change_ref)
            return True

    def run_lock(self, client: str) -> LockHandle | None:
        """Who holds the client's run lock now, or None."""
        with self._read() as conn:
            row = self._lock_row(conn, client)
        if row is None:
            return None
        return LockHandle(client, row.holder_flow_run_id, row.change_ref, row.acquired_at)

    def lock_events(self, client: str) -> list[LockEvent]:
        """The client's run-lock history, oldest first."""
        t = run_lock_events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.client == client).order_by(t.c.at, t.c.id)
            ).all()
        return [
            LockEvent(
                client=row.client,
                event=row.event,
                holder_flow_run_id=row.holder_flow_run_id,
                change_ref=row.change_ref,
                previous_holder=row.previous_holder,
                previous_change_ref=row.previous_change_ref,
                at=row.at,
            )
            for row in rows
        ]

    @staticmethod
    def _lock_row(conn: Connection, client: str) -> sa.Row[Any] | None:
        return conn.execute(sa.select(run_locks).where(run_locks.c.client == client)).first()

    @staticmethod
    def _lock_event(
        conn: Connection,
        client: str,
        kind: Literal["acquired", "released", "taken-over"],
        holder: str,
        change_ref: str,
        previous_holder: str | None = None,
        previous_change_ref: str | None = None,
    ) -> None:
        conn.execute(
            run_lock_events.insert().values(
                client=client,
                event=kind,
                holder_flow_run_id=holder,
                change_ref=change_ref,
                previous_holder=previous_holder,
                previous_change_ref=previous_change_ref,
                at=_now(),
            )
        )


def _window(row: sa.Row[Any]) -> StoredWindow:
    return StoredWindow(
        id=row.id,
        client=row.client,
        server=row.server,
        start=row.start,
        end=row.end,
        kind=row.kind,
        change_ref=row.change_ref,
        recorded_at=row.recorded_at,
    )
