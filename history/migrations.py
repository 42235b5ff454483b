"""The history store's migrations: numbered, ordered, each one's DDL frozen in time.

``schema_version`` holds one row per applied migration and :data:`MIGRATIONS` lists them
in order. :func:`migrate` (run by :func:`history.store.open_store`) applies the pending
ones; concurrent openers serialise on a lock (an advisory transaction lock on PostgreSQL,
the database's write lock on SQLite), and each migration runs in the same transaction as
its version row, so a migration is applied exactly once or not at all. A migration never
uses the current schema (:mod:`history.schema`): an old database is brought forward by
exactly the steps a new one went through. Change a table only through a new migration.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.errors import ConfigError
from history.engine import shown_url
from history.schema import (
    BY_CHARS,
    CLIENT_CHARS,
    PACKED_FORMAT,
    REF_CHARS,
    RUN_ID_CHARS,
    SERVER_CHARS,
    STATE_CODES,
    json_type,
    schema_version,
    to_epoch_us,
    utc_now,
)

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "current_version", "migrate", "repack"]


#: Key of the PostgreSQL advisory lock that serialises migrations ("care" in ASCII).
_MIGRATION_LOCK_KEY = 0x63617265


#: The timestamp column type of the frozen DDL of versions 1 to 3: on SQLite ``DATETIME``
#: (ISO text, naive UTC, as SQLAlchemy writes it), on PostgreSQL ``timestamptz``.
#: Version 4 rebuilt every SQLite timestamp column as ``BIGINT`` epoch microseconds.
_V1_TIMESTAMP = sa.DateTime(timezone=True)


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
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
        sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("started", _V1_TIMESTAMP, nullable=False),
        sa.Column("ended", _V1_TIMESTAMP, nullable=True),
        sa.Column("body", json_type(), nullable=False),
        sa.Column("saved_at", _V1_TIMESTAMP, nullable=False),
        sa.UniqueConstraint("client", "change_ref", "flow_run_id", name="uq_change_records_run"),
        sa.Index("ix_change_records_client_started", "client", "started"),
    )
    sa.Table(
        "maintenance_windows",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("server", sa.String(SERVER_CHARS), nullable=True),
        sa.Column("start", _V1_TIMESTAMP, nullable=False),
        sa.Column("end", _V1_TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("change_ref", sa.String(REF_CHARS), nullable=True),
        sa.Column("recorded_at", _V1_TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('planned', 'run')", name="ck_maintenance_windows_kind"),
        sa.Index("ix_maintenance_windows_client_start", "client", "start"),
    )
    sa.Table(
        "run_locks",
        md,
        sa.Column("client", sa.String(CLIENT_CHARS), primary_key=True),
        sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
        sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
        sa.Column("acquired_at", _V1_TIMESTAMP, nullable=False),
    )
    md.create_all(conn)


def _v2_lock_events_and_health(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "run_lock_events",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
        sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
        sa.Column("previous_holder", sa.String(RUN_ID_CHARS), nullable=True),
        sa.Column("previous_change_ref", sa.String(REF_CHARS), nullable=True),
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
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
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
        sa.Column("client", sa.String(CLIENT_CHARS), primary_key=True),
        sa.Column("server", sa.String(SERVER_CHARS), primary_key=True),
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
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
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
                sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
                sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
                sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
                sa.Column("outcome", sa.String(32), nullable=True),
                sa.Column("started", us, nullable=False),
                sa.Column("ended", us, nullable=True),
                sa.Column("body", json_type(), nullable=False),
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
                sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
                sa.Column("server", sa.String(SERVER_CHARS), nullable=True),
                sa.Column("start", us, nullable=False),
                sa.Column("end", us, nullable=False),
                sa.Column("kind", sa.String(16), nullable=False),
                sa.Column("change_ref", sa.String(REF_CHARS), nullable=True),
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
                sa.Column("client", sa.String(CLIENT_CHARS), primary_key=True),
                sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
                sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
                sa.Column("acquired_at", us, nullable=False),
            ),
            ("acquired_at",),
        ),
        (
            sa.Table(
                "run_lock_events",
                md,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
                sa.Column("event", sa.String(16), nullable=False),
                sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
                sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
                sa.Column("previous_holder", sa.String(RUN_ID_CHARS), nullable=True),
                sa.Column("previous_change_ref", sa.String(REF_CHARS), nullable=True),
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
                sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
                sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
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
                sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
                sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
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


def _v6_announcements(conn: Connection) -> None:
    # Frozen DDL of version 6: who announced a planned window, when and why.
    timestamp = "BIGINT" if conn.dialect.name == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    for column, kind in (
        ("announced_at", timestamp),
        ("announced_by", f"VARCHAR({BY_CHARS})"),
        ("reason", "TEXT"),
    ):
        conn.exec_driver_sql(f"ALTER TABLE maintenance_windows ADD COLUMN {column} {kind}")
    # A planned window recorded before version 6 is known to have been announced no
    # earlier than it was recorded: that is the only proof there is.
    conn.exec_driver_sql(
        "UPDATE maintenance_windows SET announced_at = recorded_at WHERE kind = 'planned'"
    )


def _v7_compliance(conn: Connection) -> None:
    # Frozen DDL of version 7: audit results and verification results.
    md = sa.MetaData()
    stamp: Any = sa.BigInteger if conn.dialect.name == "sqlite" else _V1_TIMESTAMP
    sa.Table(
        "audit_results",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
        sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
        sa.Column("audited_at", stamp, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("findings", json_type(), nullable=False),
        sa.Column("warnings", json_type(), nullable=False),
        sa.Column("pending_security", json_type(), nullable=True),
        sa.Column("recorded_at", stamp, nullable=False),
        sa.CheckConstraint(
            "status IN ('passed', 'findings', 'unreachable')", name="ck_audit_results_status"
        ),
        sa.UniqueConstraint("flow_run_id", "server", name="uq_audit_results_run_server"),
        sa.Index("ix_audit_results_client_audited_at", "client", "audited_at"),
    )
    sa.Table(
        "verification_results",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
        sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
        sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("rolled_back", sa.Boolean, nullable=False),
        sa.Column("failures", json_type(), nullable=False),
        sa.Column("warnings", json_type(), nullable=False),
        sa.Column("at", stamp, nullable=True),
        sa.CheckConstraint(
            "phase IN ('staging', 'production')", name="ck_verification_results_phase"
        ),
        sa.UniqueConstraint("client", "change_ref", "seq", name="uq_verification_results_seq"),
        sa.Index("ix_verification_results_client_server_at", "client", "server", "at"),
    )
    md.create_all(conn)
    _v7_verifications_from_records(conn, md.tables["verification_results"])


def _v7_verifications_from_records(conn: Connection, target: sa.Table) -> None:
    """The verifications of the change records already stored, as rows of their own (so
    that a store upgraded to version 7 knows when each server was last patched)."""
    records = sa.table(
        "change_records",
        sa.column("client"),
        sa.column("change_ref"),
        sa.column("flow_run_id"),
        sa.column("body", json_type()),
    )
    sqlite = conn.dialect.name == "sqlite"
    query = sa.select(records).order_by(sa.column("id"))
    for client, change_ref, flow_run_id, body in conn.execute(query):
        rolled_back = {r.get("server") for r in body.get("rollbacks") or ()}
        rows = []
        for seq, v in enumerate(body.get("verifications") or ()):
            at = datetime.fromisoformat(v["at"]) if v.get("at") else None
            rows.append(
                {
                    "client": client,
                    "change_ref": change_ref,
                    "flow_run_id": flow_run_id,
                    "seq": seq,
                    "server": v["server"],
                    "phase": v["phase"],
                    "passed": bool(v["passed"]),
                    "rolled_back": v["server"] in rolled_back,
                    "failures": list(v.get("failures") or ()),
                    "warnings": list(v.get("warnings") or ()),
                    "at": to_epoch_us(at) if sqlite and at else at,
                }
            )
        # Two rows of one change (a run and its retry, before reruns continued records):
        # the later saved body wins, as the store's later saves do.
        conn.execute(
            target.delete().where(target.c.client == client, target.c.change_ref == change_ref)
        )
        if rows:
            conn.execute(target.insert(), rows)


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
    Migration(
        6,
        "maintenance_windows: announced_at, announced_by, reason (planned = announced before)",
        _v6_announcements,
    ),
    Migration(
        7,
        "audit_results (security-audit per server), verification_results (per run, server)",
        _v7_compliance,
    ),
)


#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The highest applied schema version (0: none)."""
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
        current = current_version(conn)
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"history store {shown_url(engine.url)} is at schema version {current}, newer than"
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
                        version=step.version, description=step.description, applied_at=utc_now()
                    )
                )
                current = step.version
        return current
