"""The history store's current schema: its tables, the UTC timestamp type and the packed
interval value.

Queries use SQLAlchemy Core against :data:`metadata`, which describes the *current*
schema; migrations (:mod:`history.migrations`) never use it: each spells out its own DDL,
frozen in time. Every timestamp is timezone-aware UTC going in and coming out
(:class:`UtcDateTime`); a naive datetime is a programming error and is refused. Tables
and columns are documented in ``docs/store.md``.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "BY_CHARS",
    "CLIENT_CHARS",
    "EPOCH",
    "PACKED_FIELDS",
    "PACKED_FORMAT",
    "REF_CHARS",
    "RUN_ID_CHARS",
    "SERVER_CHARS",
    "STATE_CODES",
    "UtcDateTime",
    "audit_results",
    "change_records",
    "check_intervals",
    "daily_rollups",
    "from_epoch_us",
    "json_type",
    "maintenance_windows",
    "metadata",
    "metrics",
    "pack_interval",
    "require_aware",
    "run_lock_events",
    "run_locks",
    "schema_version",
    "to_epoch_us",
    "utc_now",
    "verification_results",
]


# Bounds on identifier columns: generous, but bounded so PostgreSQL indexes stay small.
CLIENT_CHARS = 64
SERVER_CHARS = 255
REF_CHARS = 128
RUN_ID_CHARS = 64
BY_CHARS = 128


def require_aware(value: datetime, what: str = "timestamp") -> datetime:
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
    return (require_aware(value) - EPOCH) // _MICROSECOND


def from_epoch_us(value: int) -> datetime:
    """Integer microseconds since the Unix epoch as an aware UTC datetime (exact)."""
    return EPOCH + timedelta(microseconds=value)


def utc_now() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    PostgreSQL stores ``timestamptz``. SQLite has no timestamp type: it stores an integer,
    microseconds since the Unix epoch (schema version 4; before, SQLAlchemy's ISO text).
    Integers sort as times, range queries work, and a reader that wants numbers (reports,
    :func:`history.intervals.read_intervals_frame`) reads them without parsing text.
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
        return require_aware(value)

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


def json_type() -> sa.types.TypeEngine[Any]:
    """The type of a JSON document column."""
    # JSONB on PostgreSQL so reports can query inside a record later; TEXT-backed on SQLite.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


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
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
    sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("started", UtcDateTime, nullable=False),
    sa.Column("ended", UtcDateTime, nullable=True),
    sa.Column("body", json_type(), nullable=False),
    sa.Column("saved_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("client", "change_ref", "flow_run_id", name="uq_change_records_run"),
    sa.Index("ix_change_records_client_started", "client", "started"),
)

maintenance_windows = sa.Table(
    "maintenance_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("server", sa.String(SERVER_CHARS), nullable=True),
    sa.Column("start", UtcDateTime, nullable=False),
    sa.Column("end", UtcDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("change_ref", sa.String(REF_CHARS), nullable=True),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Column("announced_at", UtcDateTime, nullable=True),
    sa.Column("announced_by", sa.String(BY_CHARS), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.CheckConstraint("kind IN ('planned', 'run')", name="ck_maintenance_windows_kind"),
    sa.Index("ix_maintenance_windows_client_start", "client", "start"),
)

run_locks = sa.Table(
    "run_locks",
    metadata,
    sa.Column("client", sa.String(CLIENT_CHARS), primary_key=True),
    sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
    sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
)

run_lock_events = sa.Table(
    "run_lock_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("holder_flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
    sa.Column("change_ref", sa.String(REF_CHARS), nullable=False),
    sa.Column("previous_holder", sa.String(RUN_ID_CHARS), nullable=True),
    sa.Column("previous_change_ref", sa.String(REF_CHARS), nullable=True),
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
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
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
    sa.Column("client", sa.String(CLIENT_CHARS), primary_key=True),
    sa.Column("server", sa.String(SERVER_CHARS), primary_key=True),
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
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
    sa.Column("ts", UtcDateTime, nullable=False),
    sa.Column("load1", sa.Float, nullable=True),
    sa.Column("memory_used_pct", sa.Float, nullable=True),
    sa.Column("disk_used_pct", sa.Float, nullable=True),
    sa.Index("ux_metrics_client_server_ts", "client", "server", "ts", unique=True),
)

audit_results = sa.Table(
    "audit_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("client", sa.String(CLIENT_CHARS), nullable=False),
    sa.Column("server", sa.String(SERVER_CHARS), nullable=False),
    sa.Column("flow_run_id", sa.String(RUN_ID_CHARS), nullable=False),
    sa.Column("audited_at", UtcDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("findings", json_type(), nullable=False),
    sa.Column("warnings", json_type(), nullable=False),
    sa.Column("pending_security", json_type(), nullable=True),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "status IN ('passed', 'findings', 'unreachable')", name="ck_audit_results_status"
    ),
    sa.UniqueConstraint("flow_run_id", "server", name="uq_audit_results_run_server"),
    sa.Index("ix_audit_results_client_audited_at", "client", "audited_at"),
)

verification_results = sa.Table(
    "verification_results",
    metadata,
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
    sa.Column("at", UtcDateTime, nullable=True),
    sa.CheckConstraint("phase IN ('staging', 'production')", name="ck_verification_results_phase"),
    sa.UniqueConstraint("client", "change_ref", "seq", name="uq_verification_results_seq"),
    sa.Index("ix_verification_results_client_server_at", "client", "server", "at"),
)


#: ``check_intervals.packed`` (schema version 5): a row's numbers as five big-endian
#: int64, in this order, so that a client's timeline is read as one byte string per
#: server (:func:`history.intervals.read_intervals_frame`) instead of a value per cell.
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
