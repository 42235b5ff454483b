"""Health history ingestion: checks compressed into state intervals, daily rollups, import.

Every health check of a server is a :class:`CheckSample` (server, time, ok, error,
latency). The store does not keep a row per check: consecutive samples of the same state
are folded into one :class:`Interval` (``check_intervals``), and seconds per state per UTC
day are kept in ``daily_rollups``. See docs/health-check.md.

* :func:`extend_intervals` is the pure heart: one sample against the server's open
  interval gives the intervals it closes and the new open interval.
* :func:`ingest` applies samples to the store in **one transaction**, serialised per
  server (SQLite: the database write lock, ``BEGIN IMMEDIATE``; PostgreSQL: a
  transaction-scoped advisory lock per client and server), so two health-check runs
  writing at once lose nothing. It returns the state changes that passed the
  confirmation rule, for the flow to publish as Prefect events.
* :func:`load_samples` / :func:`import_file` / ``python -m history.ingest import FILE
  --client SLUG``: history from another monitoring tool (CSV or Parquet with columns
  ``server, ts, ok`` and optionally ``latency_ms``). Every row is validated first; any bad
  row rejects the whole file (:class:`ImportRejected`, with line numbers) and nothing is
  written.

Reports read intervals with :func:`read_intervals` (or :func:`read_intervals_frame`, for
pandas) and rollups with :func:`read_rollups`. Performance metrics (load, memory, disk)
are written with :func:`record_metrics` and read with :func:`read_metrics` and
:func:`read_daily_metrics` (``metrics`` table, schema version 3).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import struct
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from core.errors import ConfigError, HistoryExists, ImportRejected
from history.store import (
    PACKED_FIELDS,
    PACKED_FORMAT,
    STATE_CODES,
    HistoryStore,
    check_intervals,
    daily_rollups,
    maintenance_windows,
    metrics,
    pack_interval,
    repack,
    to_epoch_us,
)

log = logging.getLogger(__name__)

__all__ = [
    "CONFIRM_AFTER",
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_MAX_GAP",
    "CheckSample",
    "DailyMetrics",
    "DailyRollup",
    "HistoryExists",
    "ImportRejected",
    "IngestResult",
    "Interval",
    "MetricSample",
    "StateChange",
    "bulk_import_intervals",
    "bulk_import_parquet",
    "extend_intervals",
    "import_file",
    "ingest",
    "load_samples",
    "main",
    "parquet_to_intervals",
    "read_daily_metrics",
    "read_intervals",
    "read_intervals_frame",
    "read_metrics",
    "read_rollups",
    "rebuild_rollups",
    "record_metrics",
    "rollup_seconds",
    "validate_rows",
]

State = Literal["up", "down", "unknown"]

#: How often the deployed health-check flow runs.
DEFAULT_CHECK_INTERVAL = timedelta(minutes=5)
#: A silence longer than this between two checks of a server is recorded as ``unknown``.
DEFAULT_MAX_GAP = 3 * DEFAULT_CHECK_INTERVAL
#: An outage is confirmed after this many consecutive failed checks (DESIGN.md §3).
CONFIRM_AFTER = 2

_MAX_SERVER = 255
_MAX_ERROR = 2000
#: Problems shown in an ImportRejected message (all of them stay in ``.problems``).
_SHOWN_PROBLEMS = 50
_TRUE = frozenset({"true", "t", "1", "yes", "y", "up", "ok"})
_FALSE = frozenset({"false", "f", "0", "no", "n", "down", "fail", "failed"})


# --------------------------------------------------------------------------- types


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} is naive; give a timezone-aware datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class CheckSample:
    """One health check of one server: did it pass, and if not, why.

    Attributes:
        server: server name (unique within the client).
        ts: when the check ran (timezone-aware; stored in UTC).
        ok: every check of the server passed.
        error: why it failed (first line of evidence), or None.
        latency_ms: response time when something answered, or None.
    """

    server: str
    ts: datetime
    ok: bool
    error: str | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", _utc(self.ts, "sample time"))


@dataclass(frozen=True)
class Interval:
    """A run of checks of one server in one state.

    Attributes:
        server: server name.
        state: ``up``, ``down`` or ``unknown`` (no data: a gap between checks).
        start: the first check of the interval (for ``unknown``: the last check before).
        end: the last check while open; once closed, the next interval's start.
        checks: checks folded into the interval (0 for ``unknown``).
        failures: how many of them failed.
        first_error: the first failure's message.
        id: the row id in ``check_intervals``; None until written.
    """

    server: str
    state: State
    start: datetime
    end: datetime
    checks: int
    failures: int
    first_error: str | None = None
    id: int | None = None

    @property
    def seconds(self) -> float:
        """Length of the interval in seconds."""
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class StateChange:
    """A server going down (confirmed) or coming back up.

    Attributes:
        client: client slug.
        server: server name.
        state: ``down`` or ``up``.
        since: when the change is dated: the first failure of the outage, or the first
            passing check after it.
        observed: the check that made the change known (the confirming failure for
            ``down``; equal to ``since`` for ``up``).
        checks: consecutive checks in the new state when the change was detected.
        error: the outage's first error (for ``down``), else None.
    """

    client: str
    server: str
    state: Literal["down", "up"]
    since: datetime
    observed: datetime
    checks: int
    error: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """What an :func:`ingest` did.

    Attributes:
        samples: samples applied.
        intervals_written: interval rows inserted or updated.
        changes: confirmed state changes, oldest first per server.
    """

    samples: int
    intervals_written: int
    changes: list[StateChange] = field(default_factory=list)


@dataclass(frozen=True)
class DailyRollup:
    """Seconds per state of one server on one UTC day (a ``daily_rollups`` row)."""

    client: str
    server: str
    day: date
    up_s: float
    down_s: float
    unknown_s: float
    maintenance_s: float


@dataclass(frozen=True)
class MetricSample:
    """Performance metrics of one server at one time (a ``metrics`` row).

    Attributes:
        server: server name (unique within the client).
        ts: when they were measured (timezone-aware; stored in UTC).
        load1: 1-minute load average, or None.
        memory_used_pct: memory in use, %, or None.
        disk_used_pct: the fullest filesystem, % used, or None.
    """

    server: str
    ts: datetime
    load1: float | None = None
    memory_used_pct: float | None = None
    disk_used_pct: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", _utc(self.ts, "metric time"))
        for name in ("load1", "memory_used_pct", "disk_used_pct"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                # NaN means "not measured" (pandas); an infinity is a broken probe.
                object.__setattr__(self, name, None if math.isnan(value) else value)
                if math.isinf(value):
                    raise ValueError(f"{self.server}: {name} is {value}")

    @property
    def empty(self) -> bool:
        """No metric at all (the server could not be measured)."""
        return self.load1 is None and self.memory_used_pct is None and self.disk_used_pct is None


@dataclass(frozen=True)
class DailyMetrics:
    """One server's metrics summarised over one UTC day.

    Attributes:
        client: client slug.
        server: server name.
        day: the UTC day.
        samples: metric rows that day.
        load1_avg: mean 1-minute load over the samples that have it (None: none has).
        load1_max: highest 1-minute load.
        memory_used_pct_max: highest memory use, %.
        disk_used_pct_max: highest disk use (fullest filesystem), %.
    """

    client: str
    server: str
    day: date
    samples: int
    load1_avg: float | None
    load1_max: float | None
    memory_used_pct_max: float | None
    disk_used_pct_max: float | None


_PARQUET_SUFFIXES = (".parquet", ".pq")


# --------------------------------------------------------------------------- pure logic


def _state(sample: CheckSample) -> State:
    return "up" if sample.ok else "down"


def _error(sample: CheckSample) -> str | None:
    if sample.ok:
        return None
    return (sample.error or "check failed")[:_MAX_ERROR]


def _opened(sample: CheckSample) -> Interval:
    return Interval(
        server=sample.server,
        state=_state(sample),
        start=sample.ts,
        end=sample.ts,
        checks=1,
        failures=0 if sample.ok else 1,
        first_error=_error(sample),
    )


def extend_intervals(
    open_interval: Interval | None,
    sample: CheckSample,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> tuple[list[Interval], Interval]:
    """Fold one check into a server's open interval (pure).

    * No open interval: the sample opens one (``start = end = ts``).
    * Same state, within ``max_gap`` of the interval's end: the interval grows
      (``end = ts``, ``checks + 1``, ``failures + 1`` when down, ``first_error`` kept).
    * Another state: the open interval is closed at ``ts`` (intervals are contiguous:
      the change is dated from the first check that saw it) and the sample opens a new one.
    * More than ``max_gap`` after the interval's end: the interval is closed at its last
      check, an ``unknown`` interval (0 checks) covers the silence, the sample opens a new one.
    * Late or duplicate (``ts`` not after the interval's end, e.g. two runs racing): the
      sample is counted in the open interval (``checks``, ``failures``) without moving
      its end or changing its state, so no check is lost and time never runs backwards.

    Args:
        open_interval: the server's latest interval, or None for a new server.
        sample: the check.
        max_gap: the longest silence still read as continuity (3 check periods).

    Returns:
        ``(closed, open)``: the intervals closed by this sample, oldest first (the
        previous open interval keeps its ``id``), and the new open interval.
    """
    if open_interval is None:
        return [], _opened(sample)
    if sample.server != open_interval.server:
        raise ValueError(f"sample of {sample.server!r} given to {open_interval.server!r}")
    failed = 0 if sample.ok else 1
    first_error = open_interval.first_error or _error(sample)
    if sample.ts <= open_interval.end:
        return [], replace(
            open_interval,
            checks=open_interval.checks + 1,
            failures=open_interval.failures + failed,
            first_error=first_error,
        )
    if sample.ts - open_interval.end > max_gap:
        gap = Interval(
            server=sample.server,
            state="unknown",
            start=open_interval.end,
            end=sample.ts,
            checks=0,
            failures=0,
        )
        return [open_interval, gap], _opened(sample)
    if _state(sample) == open_interval.state:
        return [], replace(
            open_interval,
            end=sample.ts,
            checks=open_interval.checks + 1,
            failures=open_interval.failures + failed,
            first_error=first_error,
        )
    return [replace(open_interval, end=sample.ts)], _opened(sample)


def _merge(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _days(start: datetime, end: datetime) -> Iterator[tuple[date, datetime, datetime]]:
    """``[start, end)`` cut at UTC midnights: (day, piece start, piece end)."""
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), UTC)
        piece_end = min(end, midnight)
        yield start.date(), start, piece_end
        start = piece_end


def rollup_seconds(
    segments: Iterable[tuple[str, State, datetime, datetime]],
    windows: Mapping[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> dict[tuple[str, date], dict[str, float]]:
    """Seconds per state (and inside maintenance) per server per UTC day (pure).

    Args:
        segments: ``(server, state, start, end)`` pieces of the timeline, not overlapping
            for one server.
        windows: maintenance windows per server (client-wide windows included in each
            server's list); overlapping windows count once.

    Returns:
        ``{(server, day): {"up_s", "down_s", "unknown_s", "maintenance_s"}}``.
    """
    merged = {server: _merge(spans) for server, spans in (windows or {}).items()}
    out: dict[tuple[str, date], dict[str, float]] = defaultdict(
        lambda: {"up_s": 0.0, "down_s": 0.0, "unknown_s": 0.0, "maintenance_s": 0.0}
    )
    for server, state, start, end in segments:
        for day, lo, hi in _days(start, end):
            bucket = out[(server, day)]
            bucket[f"{state}_s"] += (hi - lo).total_seconds()
            for w0, w1 in merged.get(server, ()):
                overlap = (min(hi, w1) - max(lo, w0)).total_seconds()
                if overlap > 0:
                    bucket["maintenance_s"] += overlap
    return dict(out)


# --------------------------------------------------------------------------- store IO


def _lock_key(client: str, server: str) -> int:
    digest = hashlib.blake2b(f"{client}/{server}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_server(conn: Connection, client: str, server: str) -> None:
    # SQLite: the transaction began IMMEDIATE and already holds the database write lock.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(client, server))))


def _row_interval(row: sa.Row[Any]) -> Interval:
    return Interval(
        server=row.server,
        state=row.state,
        start=row.start,
        end=row.end,
        checks=row.checks,
        failures=row.failures,
        first_error=row.first_error,
        id=row.id,
    )


def _open_interval(conn: Connection, client: str, server: str) -> Interval | None:
    t = check_intervals
    row = conn.execute(
        sa.select(t)
        .where(t.c.client == client, t.c.server == server)
        .order_by(t.c.start.desc(), t.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _row_interval(row)


def _windows(
    conn: Connection, client: str, servers: Iterable[str], start: datetime, end: datetime
) -> dict[str, list[tuple[datetime, datetime]]]:
    t = maintenance_windows
    rows = conn.execute(
        sa.select(t.c.server, t.c.start, t.c.end).where(
            t.c.client == client, t.c.start < end, t.c.end > start
        )
    ).all()
    out: dict[str, list[tuple[datetime, datetime]]] = {s: [] for s in servers}
    for row in rows:
        for server, spans in out.items():
            if row.server is None or row.server == server:
                spans.append((row.start, row.end))
    return out


def _add_rollups(
    conn: Connection, client: str, seconds: Mapping[tuple[str, date], Mapping[str, float]]
) -> None:
    if not seconds:
        return
    t = daily_rollups
    insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
    stmt = insert.on_conflict_do_update(
        index_elements=[t.c.client, t.c.server, t.c.day],
        set_={
            name: t.c[name] + insert.excluded[name]
            for name in ("up_s", "down_s", "unknown_s", "maintenance_s")
        },
    )
    conn.execute(
        stmt,
        [
            {"client": client, "server": server, "day": day, **values}
            for (server, day), values in sorted(seconds.items())
        ],
    )


def _row(client: str, interval: Interval) -> dict[str, Any]:
    return {
        "client": client,
        "server": interval.server,
        "state": interval.state,
        "start": interval.start,
        "end": interval.end,
        "checks": interval.checks,
        "failures": interval.failures,
        "first_error": interval.first_error,
        "packed": pack_interval(
            interval.state, interval.start, interval.end, interval.checks, interval.failures
        ),
    }


def _confirmed_down(interval: Interval | None, confirm_after: int) -> bool:
    return interval is not None and interval.state == "down" and interval.checks >= confirm_after


def ingest(
    store: HistoryStore,
    client: str,
    samples: Iterable[CheckSample],
    *,
    max_gap: timedelta = DEFAULT_MAX_GAP,
    confirm_after: int = CONFIRM_AFTER,
) -> IngestResult:
    """Fold samples into the store's intervals and daily rollups, in one transaction.

    For each server (in name order, so concurrent writers lock in the same order): lock
    the server, read its open interval, apply the samples in time order with
    :func:`extend_intervals`, update the open row and insert the new ones, and add the
    seconds the timeline advanced to ``daily_rollups`` (with their overlap with
    ``maintenance_windows`` recorded so far). Either everything is written or nothing.

    A server goes ``down`` when its down interval reaches ``confirm_after`` checks (dated
    from the first failure), and ``up`` at the first passing check after a confirmed
    outage; a shorter blip is stored as a short down interval but is no state change.

    Args:
        store: the history store.
        client: client slug.
        samples: the checks, in any order, for any of the client's servers.
        max_gap: the longest silence read as continuity; longer is ``unknown``.
        confirm_after: consecutive failures that confirm an outage (>= 1).

    Returns:
        How many samples and rows, and the confirmed state changes.
    """
    if confirm_after < 1:
        raise ValueError("confirm_after must be at least 1")
    by_server: dict[str, list[CheckSample]] = defaultdict(list)
    count = 0
    for sample in samples:
        by_server[sample.server].append(sample)
        count += 1
    changes: list[StateChange] = []
    written = 0
    t = check_intervals
    with store.engine.begin() as conn:
        for server in sorted(by_server):
            _lock_server(conn, client, server)
            current = _open_interval(conn, client, server)
            before = current
            down = _confirmed_down(current, confirm_after)
            closed: list[Interval] = []
            for sample in sorted(by_server[server], key=lambda s: s.ts):
                done, current = extend_intervals(current, sample, max_gap)
                closed.extend(done)
                if current.state == "down" and current.checks >= confirm_after and not down:
                    down = True
                    changes.append(
                        StateChange(
                            client,
                            server,
                            "down",
                            current.start,
                            sample.ts,
                            current.checks,
                            current.first_error,
                        )
                    )
                elif current.state == "up" and down:
                    down = False
                    changes.append(
                        StateChange(client, server, "up", current.start, sample.ts, current.checks)
                    )
            assert current is not None  # at least one sample per server
            touched = [*closed, current]
            segments: list[tuple[str, State, datetime, datetime]] = []
            for interval in touched:
                if before is not None and interval.id == before.id:
                    conn.execute(
                        t.update().where(t.c.id == interval.id).values(**_row(client, interval))
                    )
                    segments.append((server, interval.state, before.end, interval.end))
                else:
                    segments.append((server, interval.state, interval.start, interval.end))
            new = [_row(client, i) for i in touched if before is None or i.id != before.id]
            if new:
                conn.execute(t.insert(), new)
            written += len(touched)
            segments = [s for s in segments if s[3] > s[2]]
            if segments:
                lo = min(s[2] for s in segments)
                hi = max(s[3] for s in segments)
                windows = _windows(conn, client, [server], lo, hi)
                _add_rollups(conn, client, rollup_seconds(segments, windows))
    return IngestResult(samples=count, intervals_written=written, changes=changes)


def read_intervals(
    store: HistoryStore,
    client: str,
    server: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Interval]:
    """A client's intervals overlapping ``[start, end]``, by server then start.

    Args:
        store: the history store.
        client: client slug.
        server: only this server.
        start: only intervals ending at or after this time (aware).
        end: only intervals starting at or before this time (aware).
    """
    t = check_intervals
    query = sa.select(t).where(t.c.client == client)
    if server is not None:
        query = query.where(t.c.server == server)
    if start is not None:
        query = query.where(t.c.end >= _utc(start, "start"))
    if end is not None:
        query = query.where(t.c.start <= _utc(end, "end"))
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query.order_by(t.c.server, t.c.start, t.c.id)).all()
    return [_row_interval(row) for row in rows]


def read_rollups(store: HistoryStore, client: str, server: str | None = None) -> list[DailyRollup]:
    """A client's daily rollups, by server then day."""
    t = daily_rollups
    query = sa.select(t).where(t.c.client == client)
    if server is not None:
        query = query.where(t.c.server == server)
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query.order_by(t.c.server, t.c.day)).all()
    return [
        DailyRollup(
            client=r.client,
            server=r.server,
            day=r.day,
            up_s=r.up_s,
            down_s=r.down_s,
            unknown_s=r.unknown_s,
            maintenance_s=r.maintenance_s,
        )
        for r in rows
    ]


def rebuild_rollups(store: HistoryStore, client: str) -> int:
    """Recompute a client's daily rollups from its intervals and maintenance windows.

    Ingest counts maintenance time against the windows recorded *at ingest time*; a
    window recorded later (a run's window is written when the run ends) is picked up
    by rebuilding. One transaction.

    Returns:
        The number of rollup rows written.
    """
    intervals = read_intervals(store, client)
    segments = [(i.server, i.state, i.start, i.end) for i in intervals if i.end > i.start]
    with store.engine.begin() as conn:
        conn.execute(daily_rollups.delete().where(daily_rollups.c.client == client))
        if not segments:
            return 0
        lo = min(s[2] for s in segments)
        hi = max(s[3] for s in segments)
        windows = _windows(conn, client, {s[0] for s in segments}, lo, hi)
        seconds = rollup_seconds(segments, windows)
        _add_rollups(conn, client, seconds)
    return len(seconds)


# --------------------------------------------------------------------------- metrics


def record_metrics(store: HistoryStore, client: str, samples: Iterable[MetricSample]) -> int:
    """Write a batch of metric samples of a client's servers, in one transaction.

    A sample without any metric (the server could not be measured) is not stored. A
    sample for a server and time already stored replaces it (a retried task writes
    the same samples again without doubling them).

    Args:
        store: the history store.
        client: client slug.
        samples: the samples, any servers of the client, any order.

    Returns:
        Rows written.
    """
    rows = [
        {
            "client": client,
            "server": sample.server,
            "ts": sample.ts,
            "load1": sample.load1,
            "memory_used_pct": sample.memory_used_pct,
            "disk_used_pct": sample.disk_used_pct,
        }
        for sample in samples
        if not sample.empty
    ]
    if not rows:
        return 0
    t = metrics
    with store.engine.begin() as conn:
        insert = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
        statement = insert.on_conflict_do_update(
            index_elements=[t.c.client, t.c.server, t.c.ts],
            set_={
                name: insert.excluded[name]
                for name in ("load1", "memory_used_pct", "disk_used_pct")
            },
        )
        for i in range(0, len(rows), 10_000):
            conn.execute(statement, rows[i : i + 10_000])
    return len(rows)


def _metrics_where(
    client: str, server: str | None, start: datetime | None, end: datetime | None
) -> list[sa.ColumnElement[bool]]:
    t = metrics
    where = [t.c.client == client]
    if server is not None:
        where.append(t.c.server == server)
    if start is not None:
        where.append(t.c.ts >= _utc(start, "start"))
    if end is not None:
        where.append(t.c.ts < _utc(end, "end"))
    return where


def read_metrics(
    store: HistoryStore,
    client: str,
    start: datetime | None = None,
    end: datetime | None = None,
    server: str | None = None,
) -> list[MetricSample]:
    """A client's metric samples in ``[start, end)``, by server then time.

    Args:
        store: the history store.
        client: client slug.
        start: only samples at or after this time (aware).
        end: only samples before this time (aware).
        server: only this server.
    """
    t = metrics
    query = (
        sa.select(t).where(*_metrics_where(client, server, start, end)).order_by(t.c.server, t.c.ts)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query).all()
    return [MetricSample(r.server, r.ts, r.load1, r.memory_used_pct, r.disk_used_pct) for r in rows]


_US_PER_DAY = 86_400_000_000


def read_daily_metrics(
    store: HistoryStore,
    client: str,
    start: datetime | None = None,
    end: datetime | None = None,
    server: str | None = None,
) -> list[DailyMetrics]:
    """Per server per UTC day: mean and highest load, highest memory and disk use.

    Computed by the database (one row per server and day comes back, however many
    samples there are). Samples in ``[start, end)``; a day cut by ``start`` or ``end``
    summarises only its samples inside. Days without samples are absent.

    Args:
        store: the history store.
        client: client slug.
        start: only samples at or after this time (aware).
        end: only samples before this time (aware).
        server: only this server.

    Returns:
        The summaries, by server then day.
    """
    t = metrics
    if store.dialect == "sqlite":
        # Epoch microseconds (schema version 4): the UTC day is a floor division.
        # SQLite's integer division truncates: floor by hand before 1970.
        us = sa.type_coerce(t.c.ts, sa.BigInteger)
        day: Any = sa.case((us >= 0, us // _US_PER_DAY), else_=(us + 1) // _US_PER_DAY - 1)
    else:
        day = sa.cast(sa.func.timezone("UTC", t.c.ts), sa.Date)
    day = day.label("day")
    query = (
        sa.select(
            t.c.server,
            day,
            sa.func.count().label("samples"),
            sa.func.avg(t.c.load1).label("load1_avg"),
            sa.func.max(t.c.load1).label("load1_max"),
            sa.func.max(t.c.memory_used_pct).label("memory_used_pct_max"),
            sa.func.max(t.c.disk_used_pct).label("disk_used_pct_max"),
        )
        .where(*_metrics_where(client, server, start, end))
        .group_by(t.c.server, day)
        .order_by(t.c.server, day)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            rows = conn.execute(query).all()
    epoch = date(1970, 1, 1)
    return [
        DailyMetrics(
            client=client,
            server=r.server,
            day=r.day if isinstance(r.day, date) else epoch + timedelta(days=int(r.day)),
            samples=int(r.samples),
            load1_avg=None if r.load1_avg is None else float(r.load1_avg),
            load1_max=r.load1_max,
            memory_used_pct_max=r.memory_used_pct_max,
            disk_used_pct_max=r.disk_used_pct_max,
        )
        for r in rows
    ]


# --------------------------------------------------------------------------- import

#: Columns an import file must have, and the optional one.
REQUIRED_COLUMNS = ("server", "ts", "ok")
OPTIONAL_COLUMNS = ("latency_ms",)


def _parse_ts(value: object) -> datetime | str:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str) and value.strip():
        try:
            ts = datetime.fromisoformat(value.strip())
        except ValueError:
            return f"ts {value!r} is not an ISO 8601 timestamp"
    else:
        return f"ts {value!r} is missing or not a timestamp"
    if ts.tzinfo is None or ts.utcoffset() is None:
        return f"ts {value!s} has no time zone (add Z or +HH:MM)"
    return ts


def _parse_ok(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return f"ok {value!r} is not a boolean (true/false, 1/0, yes/no, up/down)"


def _parse_latency(value: object) -> float | str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return f"latency_ms {value!r} is not a number"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"latency_ms {value!r} is not a number"
    if not math.isfinite(number) or number < 0:
        return f"latency_ms {value!r} must be a finite number >= 0"
    return number


def validate_rows(
    rows: Iterable[tuple[int, Mapping[str, object]]], unit: str = "line"
) -> tuple[list[CheckSample], list[str]]:
    """Turn raw rows into samples, collecting every problem (pure).

    Args:
        rows: ``(number, {column: value})`` with the number shown in problems.
        unit: ``line`` (CSV: file line numbers) or ``row`` (Parquet: 1-based rows).

    Returns:
        ``(samples, problems)``: the file is good only when ``problems`` is empty.
    """
    samples: list[CheckSample] = []
    problems: list[str] = []
    for number, raw in rows:
        errors: list[str] = []
        server = raw.get("server")
        if not isinstance(server, str) or not server.strip():
            errors.append(f"server {server!r} is empty")
        elif len(server.strip()) > _MAX_SERVER:
            errors.append(f"server name is longer than {_MAX_SERVER} characters")
        ts = _parse_ts(raw.get("ts"))
        ok = _parse_ok(raw.get("ok"))
        latency = _parse_latency(raw.get("latency_ms"))
        errors.extend(v for v in (ts, ok, latency) if isinstance(v, str))
        if errors:
            problems.append(f"{unit} {number}: " + "; ".join(errors))
            continue
        assert isinstance(server, str) and isinstance(ts, datetime) and isinstance(ok, bool)
        assert latency is None or isinstance(latency, float)
        samples.append(CheckSample(server.strip(), ts, ok, latency_ms=latency))
    return samples, problems


def _missing(columns: Iterable[str], where: str) -> list[str]:
    have = {c.strip() for c in columns if c}
    gone = [c for c in REQUIRED_COLUMNS if c not in have]
    return [f"{where}: missing column(s) {', '.join(gone)}"] if gone else []


def _csv_rows(path: Path) -> tuple[list[tuple[int, Mapping[str, object]]], list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        problems = _missing(reader.fieldnames or [], "line 1")
        if problems:
            return [], problems
        rows: list[tuple[int, Mapping[str, object]]] = []
        for raw in reader:
            # line_num is the line the record ended on (a quoted field may span lines).
            if None in raw:
                problems.append(f"line {reader.line_num}: more fields than the header")
                continue
            rows.append((reader.line_num, {k.strip(): v for k, v in raw.items()}))
    return rows, problems


def _parquet_rows(path: Path) -> tuple[list[tuple[int, Mapping[str, object]]], list[str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        return [], [f"not a readable Parquet file: {exc}"]
    problems = _missing(table.column_names, "schema")
    if problems:
        return [], problems
    names = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.column_names]
    columns = {name: table.column(name).to_pylist() for name in names}
    rows: list[tuple[int, Mapping[str, object]]] = [
        (index + 1, {name: columns[name][index] for name in names})
        for index in range(table.num_rows)
    ]
    return rows, []


def load_samples(path: Path | str) -> list[CheckSample]:
    """Read and validate an import file (``.csv`` or ``.parquet``) completely.

    Raises:
        ImportRejected: any bad row, a missing column, an empty or unreadable file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, problems = _csv_rows(path)
        unit = "line"
    elif suffix in _PARQUET_SUFFIXES:
        rows, problems = _parquet_rows(path)
        unit = "row"
    else:
        raise ImportRejected(path, [f"unknown file type {suffix!r} (use .csv or .parquet)"])
    samples, bad = validate_rows(rows, unit)
    problems += bad
    if not problems and not samples:
        problems.append("the file has no rows")
    if problems:
        raise ImportRejected(path, problems)
    return samples


def import_file(
    store: HistoryStore, client: str, path: Path | str, *, max_gap: timedelta = DEFAULT_MAX_GAP
) -> IngestResult:
    """Validate a whole file, then ingest it in one transaction (all or nothing).

    A Parquet file whose servers have no history in the store yet (bringing a fleet over
    from another tool) takes the vectorised path, :func:`bulk_import_parquet`: same
    validation, same intervals and rollups, millions of checks a second. Otherwise (CSV, or
    a server that already has intervals) every check is folded in by :func:`ingest`.

    Raises:
        ImportRejected: the file has problems; the store is unchanged.
    """
    path = Path(path)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        intervals = parquet_to_intervals(path, max_gap)
        if len(intervals) == 0:
            raise ImportRejected(path, ["the file has no rows"])
        try:
            written = bulk_import_intervals(store, client, intervals)
        except HistoryExists as exc:
            log.info("%s: %s; folding the file in check by check", path, exc)
        else:
            return IngestResult(samples=int(intervals["checks"].sum()), intervals_written=written)
    return ingest(store, client, load_samples(path), max_gap=max_gap)


# --------------------------------------------------------------------------- bulk path


#: Nanoseconds per unit of an Arrow timestamp.
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _one_server(meta: Any, column: int) -> str | None:
    """The server of a row group whose statistics say every row has the same valid name.

    None (read the column) when the statistics are missing, show a null or several names,
    or the name would be rejected or trimmed by the row-wise validation.
    """
    stats = meta.column(column).statistics
    if stats is None or not stats.has_min_max or not stats.has_null_count or stats.null_count:
        return None
    name = stats.min
    if not isinstance(name, str) or name != stats.max:
        return None
    if not name or name != name.strip() or len(name) > _MAX_SERVER:
        return None
    return name


def _arrow_checks(
    table: Any, first_row: int, validate_latency: bool = True, server: str | None = None
) -> tuple[Any, Any, Any, int, list[str]]:
    """Validate one Arrow batch vectorised.

    ``server``: every row is this (valid) server and the table has no ``server`` column.

    Returns ``((names, name index per row or None), ts as int64, ok, ns per ts unit,
    problems with row numbers)``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    problems: list[str] = []
    ts = table.column("ts")
    ok = table.column("ok")
    if not pa.types.is_timestamp(ts.type) or ts.type.tz is None:
        problems.append(f"schema: ts must be a timezone-aware timestamp, not {ts.type}")
    if not pa.types.is_boolean(ok.type):
        problems.append(f"schema: ok must be boolean, not {ok.type}")
    if problems:
        return None, None, None, 1, problems
    bad = None
    if server is None:
        encoded = table.column("server").combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = encoded.cast(pa.string()).dictionary_encode()
        # Server names are checked once per distinct name, not once per row.
        names_ok = pc.and_(
            pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(encoded.dictionary)), 0),
            pc.less_equal(pc.utf8_length(encoded.dictionary), _MAX_SERVER),
        ).fill_null(False)
        bad_name = np.r_[~names_ok.to_numpy(zero_copy_only=False), True]
        indices = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
        bad = bad_name[indices] if bad_name[:-1].any() or encoded.null_count else None
    if ts.null_count or ok.null_count:
        nulls = pc.or_(pc.is_null(ts), pc.is_null(ok)).to_numpy(zero_copy_only=False)
        bad = nulls if bad is None else bad | nulls
    bad_rows = np.flatnonzero(bad) if bad is not None else np.empty(0, np.int64)
    if validate_latency and "latency_ms" in table.column_names:
        latency = table.column("latency_ms").cast(pa.float64())
        wrong = pc.or_kleene(pc.less(latency, 0), pc.is_nan(latency)).fill_null(False)
        bad_rows = np.union1d(bad_rows, np.flatnonzero(wrong.to_numpy(zero_copy_only=False)))
    problems.extend(
        f"row {first_row + int(i) + 1}: missing or invalid server, ts, ok or latency_ms"
        for i in bad_rows
    )
    if problems:
        return None, None, None, 1, problems
    if server is None:
        # Codes are local to the batch; the caller maps them to the file's names.
        names = [str(n).strip() for n in encoded.dictionary.to_pylist()]
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        if len(set(names)) < len(names):
            # Entries equal once trimmed ("web1", "web1 ") are one server.
            unique, first = np.unique(np.asarray(names, dtype=object), return_inverse=True)
            names, indices = list(unique), first[indices]
        codes = (np.asarray(names, dtype=object), indices)
    else:
        codes = (np.asarray([server], dtype=object), None)
    # Timestamps stay in the file's unit (no conversion pass); ok becomes one byte a row.
    ts_int = ts.combine_chunks().view(pa.int64()).to_numpy()
    return codes, ts_int, _bools(ok.combine_chunks()), _UNIT_NS[ts.type.unit], []


def _bools(values: Any) -> Any:
    """A null-free Arrow boolean array as a numpy bool array: the bitmap unpacked at once
    (``to_numpy`` is ~10x slower)."""
    import numpy as np

    offset, n = values.offset, len(values)
    if n == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(values.buffers()[1], np.uint8)
    return np.unpackbits(bits, count=offset + n, bitorder="little")[offset:].view(bool)


def parquet_to_intervals(
    path: Path | str,
    max_gap: timedelta = DEFAULT_MAX_GAP,
    *,
    threads: int = 2,
    check_latency: bool = True,
) -> Any:
    """Read a Parquet import file by row group and fold it into intervals, vectorised.

    Only ``server``, ``ts``, ``ok`` (and ``latency_ms`` for validation, unless
    ``check_latency`` is False, as for a report that does not use it) are read, ``threads``
    units at a time:

    * a row group whose statistics show one server (min = max, no null; what a writer
      grouping rows by server gives) is read without its ``server`` column, and the row
      groups of one such server are folded together;
    * any other row group is read whole (names validated once per dictionary entry) and
      folded alone; a server found in several units is folded again from the rows of the
      row groups that hold it (so memory is bounded by those row groups).

    Timestamps stay int64 in the file's unit until the intervals are formed. Same
    semantics as :func:`extend_intervals` per check.

    Returns:
        A pandas frame with the columns of ``check_intervals``, by server then start (see
        :func:`history.fold.raw_checks_to_intervals`).

    Raises:
        ImportRejected: any bad row (1-based row numbers), a missing column, an unreadable
            or empty file.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow.parquet as pq

    from history.fold import fold_checks, intervals_frame

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise ImportRejected(path, [f"not a readable Parquet file: {exc}"]) from exc
    schema = pf.schema_arrow.names
    problems = _missing(schema, "schema")
    if problems:
        raise ImportRejected(path, problems)
    wanted = ("server", "ts", "ok", "latency_ms") if check_latency else ("server", "ts", "ok")
    columns = [c for c in wanted if c in schema]
    meta = pf.metadata
    groups = range(meta.num_row_groups)
    offsets = np.r_[0, np.cumsum([meta.row_group(i).num_rows for i in groups])]
    if "server" in pf.schema.names:
        server_column = pf.schema.names.index("server")
        single = [_one_server(meta.row_group(i), server_column) for i in groups]
    else:
        single = [None for _ in groups]
    # Units of work: all row groups of one server known from statistics, or one row group.
    by_server: dict[str, list[int]] = defaultdict(list)
    units: list[tuple[list[int], str | None]] = []
    for i, name in enumerate(single):
        if name is None:
            units.append(([i], None))
        elif name not in by_server:
            units.append((by_server[name], name))
        if name is not None:
            by_server[name].append(i)
    max_gap_ns = max_gap // timedelta(microseconds=1) * 1000
    local = threading.local()

    def fold(unit: tuple[list[int], str | None]) -> tuple[Any, Any, list[str]]:
        # Nothing shared between threads (a shared ParquetFile can deadlock): each thread
        # parses the footer once, each unit maps the file (no read copy) and unmaps it
        # after (mapped pages would otherwise count in the resident memory until the end).
        if not hasattr(local, "meta"):
            local.meta = pq.read_metadata(path)
        rgs, name = unit
        read = columns if name is None else [c for c in columns if c != "server"]
        pieces, bad, unit_ns = [], [], 1
        with pq.ParquetFile(path, memory_map=True, metadata=local.meta) as file:
            for i in rgs:
                table = file.read_row_group(i, columns=read, use_threads=False)
                checks = _arrow_checks(table, int(offsets[i]), check_latency, name)
                del table
                bad.extend(checks[4])
                pieces.append(checks[:3])
                unit_ns = checks[3]
        if bad:
            return None, None, bad
        if len(pieces) == 1:
            (names, code), ts, ok = pieces[0]
        else:
            names, code = pieces[0][0]
            ts = np.concatenate([p[1] for p in pieces])
            ok = np.concatenate([p[2] for p in pieces])
        del pieces
        parts = fold_checks(
            None if code is None else code.astype(np.int64), ts, ok, max_gap_ns // unit_ns
        )
        return names, _in_ns(parts, unit_ns, path, rgs), []

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        results = list(pool.map(fold, units))
    for _, _, bad in results:
        problems.extend(bad)
    if problems:
        raise ImportRejected(path, problems)
    if offsets[-1] == 0:
        raise ImportRejected(path, ["the file has no rows"])
    # Local codes -> one sorted list of names for the file.
    seen: dict[str, int] = defaultdict(int)
    for names, parts, _ in results:
        for n in np.unique(names[parts["code"]]):
            seen[str(n)] += 1
    split = {n for n, count in seen.items() if count > 1}
    if split:
        # A server in several units: drop its pieces and fold all its checks together.
        rgs = sorted(
            i
            for unit, (names, parts, _) in zip(units, results, strict=True)
            if split.intersection(names[parts["code"]].tolist())
            for i in unit[0]
        )
        results = [_without(names, parts, split) for names, parts, _ in results]
        results.append(_fold_servers(path, columns, rgs, split, max_gap_ns))
    all_names = np.asarray(sorted(seen), dtype=object)
    lookup = {n: k for k, n in enumerate(all_names)}
    codes, chunks = [], []
    for names, parts, *_ in results:
        local_to_global = np.asarray([lookup.get(str(n), -1) for n in names], dtype=np.int64)
        codes.append(local_to_global[parts["code"]])
        chunks.append(parts)
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    merged["code"] = np.concatenate(codes)
    order = np.lexsort((merged["start"], merged["code"]))
    return intervals_frame({k: v[order] for k, v in merged.items()}, all_names)


def _in_ns(parts: dict[str, Any], unit_ns: int, path: Path | str, rgs: list[int]) -> Any:
    """``start``/``end`` of :func:`history.fold.fold_checks` output scaled to ns."""
    import numpy as np

    if unit_ns != 1 and len(parts["start"]):
        limit = np.iinfo(np.int64).max // unit_ns
        if parts["start"].min() < -limit or parts["end"].max() > limit:
            raise ImportRejected(
                path, [f"row group(s) {rgs}: ts outside what nanoseconds can hold"]
            )
        parts["start"] = parts["start"] * unit_ns
        parts["end"] = parts["end"] * unit_ns
    return parts


def _without(names: Any, parts: dict[str, Any], servers: set[str]) -> tuple[Any, Any, list[str]]:
    """A unit's intervals without those of ``servers``."""
    import numpy as np

    keep = ~np.isin(names.astype(str), list(servers))[parts["code"]]
    return names, {k: v[keep] for k, v in parts.items()}, []


def _fold_servers(
    path: Path | str, columns: list[str], rgs: list[int], servers: set[str], max_gap_ns: int
) -> tuple[Any, Any, list[str]]:
    """All checks of ``servers`` (rows already validated) from row groups ``rgs``, folded."""
    import numpy as np
    import pyarrow.parquet as pq

    from history.fold import fold_checks

    names = np.asarray(sorted(servers), dtype=object)
    lookup = {n: k for k, n in enumerate(names)}
    pf = pq.ParquetFile(path)
    code, ts, ok, unit_ns = [], [], [], 1
    for i in rgs:
        table = pf.read_row_group(i, columns=[c for c in columns if c != "latency_ms"])
        (local, rows), t, o, unit_ns, _ = _arrow_checks(table, 0, False)
        mine = np.asarray([lookup.get(n, -1) for n in local], dtype=np.int64)[rows]
        keep = mine >= 0
        code.append(mine[keep])
        ts.append(t[keep])
        ok.append(o[keep])
    parts = fold_checks(
        np.concatenate(code), np.concatenate(ts), np.concatenate(ok), max_gap_ns // unit_ns
    )
    return names, _in_ns(parts, unit_ns, path, rgs), []


_PACKED_SIZE = struct.calcsize(PACKED_FORMAT)


def _packed_rows(intervals: Any) -> bytes:
    """Every row's ``packed`` value (:data:`history.store.PACKED_FIELDS`), concatenated."""
    import numpy as np
    import pandas as pd

    def micros(column: Any) -> Any:
        return column.to_numpy(dtype="datetime64[us]").view(np.int64)

    state = intervals["state"].map(STATE_CODES)
    if state.isna().any():
        raise ValueError(f"states other than {sorted(STATE_CODES)}")
    numbers = np.column_stack(
        [
            micros(pd.to_datetime(intervals["start"], utc=True)),
            micros(pd.to_datetime(intervals["end"], utc=True)),
            intervals["checks"].to_numpy(dtype=np.int64),
            intervals["failures"].to_numpy(dtype=np.int64),
            state.to_numpy(dtype=np.int64),
        ]
    )
    assert numbers.shape[1] == len(PACKED_FIELDS)
    return numbers.astype(PACKED_FORMAT[0] + "i8").tobytes()


def bulk_import_intervals(store: HistoryStore, client: str, intervals: Any) -> int:
    """Insert compressed intervals (a fresh history) and their daily rollups, one transaction.

    For servers with no interval in the store yet (an import of another tool's history):
    a server that already has intervals is refused (use :func:`import_file`, which folds
    checks into its open interval), and nothing is written.

    Returns:
        Interval rows written.

    Raises:
        HistoryExists: a server in ``intervals`` already has intervals for ``client``.
    """
    import numpy as np

    t = check_intervals
    servers = sorted(str(s) for s in intervals["server"].unique())
    packed = _packed_rows(intervals)
    names = intervals["server"].astype(str).tolist()
    states = intervals["state"].astype(str).tolist()
    starts = intervals["start"].dt.to_pydatetime().tolist()
    ends = intervals["end"].dt.to_pydatetime().tolist()
    on_sqlite = store.dialect == "sqlite"

    def stamps(column: str, values: list[datetime]) -> list[Any]:
        # SQLite stores epoch microseconds (UtcDateTime); PostgreSQL takes the datetimes.
        if not on_sqlite:
            return values
        return intervals[column].to_numpy(dtype="datetime64[us]").view(np.int64).tolist()

    # Plain tuples to the driver's executemany: SQLAlchemy's per-row parameter processing
    # was most of the time (263M: 28 s -> see docs/reports.md).
    rows = list(
        zip(
            [client] * len(names),
            names,
            states,
            stamps("start", starts),
            stamps("end", ends),
            intervals["checks"].astype("int64").tolist(),
            intervals["failures"].astype("int64").tolist(),
            intervals["first_error"].tolist(),
            [packed[i : i + _PACKED_SIZE] for i in range(0, len(packed), _PACKED_SIZE)],
            strict=True,
        )
    )
    mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"
    # Constants only: the values go as parameters.
    marks = ", ".join([mark] * 9)
    insert = f'INSERT INTO check_intervals (client, server, state, start, "end", checks, failures, first_error, packed) VALUES ({marks})'  # noqa: E501, S608
    with store.engine.begin() as conn:
        for server in servers:
            _lock_server(conn, client, server)
        taken = conn.execute(
            sa.select(t.c.server).where(t.c.client == client, t.c.server.in_(servers)).limit(1)
        ).first()
        if taken is not None:
            raise HistoryExists(f"{taken.server} already has intervals; use import_file")
        for i in range(0, len(rows), 50_000):
            conn.exec_driver_sql(insert, rows[i : i + 50_000])
        segments = [
            (server, state, start, end)
            for server, state, start, end in zip(names, states, starts, ends, strict=True)
            if end > start
        ]
        if segments:
            lo = min(s[2] for s in segments)
            hi = max(s[3] for s in segments)
            windows = _windows(conn, client, servers, lo, hi)
            _add_rollups(conn, client, rollup_seconds(segments, windows))
    return len(rows)


def bulk_import_parquet(
    store: HistoryStore, client: str, path: Path | str, *, max_gap: timedelta = DEFAULT_MAX_GAP
) -> int:
    """The vectorised import: validate and compress the file, then insert (all or nothing).

    Raises:
        ImportRejected: the file has problems; the store is unchanged.
        HistoryExists: a server of the file already has intervals (see
            :func:`bulk_import_intervals`); the store is unchanged.
    """
    return bulk_import_intervals(store, client, parquet_to_intervals(path, max_gap))


def read_intervals_frame(
    store: HistoryStore, client: str, start: datetime | None = None, end: datetime | None = None
) -> Any:
    """A client's intervals overlapping ``[start, end]`` as a pandas frame, by server
    (code-point order), start and end: the report's input.

    Columns: ``server``, ``state`` (categorical of str), ``start``, ``end``
    (``datetime64[us, UTC]``), ``checks``, ``failures`` (int64), ``first_error`` (object,
    None when no check failed).

    One query, answered on SQLite from the index ``ix_check_intervals_timeline`` alone: it
    holds each row's ``packed`` numbers, and the database concatenates them into one byte
    string per server (``group_concat`` / ``string_agg``), which numpy reads as it is; the
    errors come as one JSON array per server. The aggregates of one group see the rows in
    the same order, so they line up; the rows are then put in order with numpy.

    Raises:
        ConfigError: rows without ``packed`` (written by another tool); the message says
            how to fill them.
    """
    import json

    import numpy as np
    import pandas as pd

    t = check_intervals
    on_sqlite = store.dialect == "sqlite"
    # Constants are written into the SQL: a bound one is copied for every row.
    blobs: Any
    if on_sqlite:
        blobs = sa.cast(sa.func.group_concat(t.c.packed, sa.literal_column("''")), sa.LargeBinary)
        errors = sa.func.json_group_array
    else:
        blobs = sa.func.string_agg(t.c.packed, sa.literal_column("''::bytea"))
        errors = sa.func.json_agg
    where = [t.c.client == client]
    if start is not None:
        where.append(t.c.end >= _utc(start, "start"))
    if end is not None:
        # "+ 0" keeps SQLite on the timeline index (no range on start): grouping by server
        # then needs no sort, and the read never leaves the index.
        hi = _utc(end, "end")
        where.append(
            sa.type_coerce(t.c.start, sa.BigInteger) + sa.literal_column("0") <= to_epoch_us(hi)
            if on_sqlite
            else t.c.start <= hi
        )
    query = (
        sa.select(
            t.c.server, sa.func.count(), sa.func.count(t.c.packed), blobs, errors(t.c.first_error)
        )
        .where(*where)
        .group_by(t.c.server)
    )
    with store.engine.connect() as conn:
        conn = conn.execution_options(caretaker_read_only=True)
        with conn.begin():
            groups = sorted(tuple(row) for row in conn.execute(query))
    unpacked = [g[0] for g in groups if g[1] != g[2]]
    if unpacked:
        raise ConfigError(
            f"history store: check_intervals rows of {client}/{unpacked[0]}"
            f"{f' and {len(unpacked) - 1} more server(s)' if len(unpacked) > 1 else ''}"
            " have no packed value (written by another tool); fill them with"
            " `python -m history.ingest repack`"
        )
    names = np.array([g[0] for g in groups], dtype=object)
    counts = np.array([g[1] for g in groups], dtype=np.int64)
    n = int(counts.sum())
    numbers = np.frombuffer(
        b"".join(bytes(g[3]) for g in groups), dtype=PACKED_FORMAT[0] + "i8"
    ).reshape(n, len(PACKED_FIELDS))
    starts, ends, checks, failures, states = (
        numbers[:, k].astype(np.int64) for k in range(len(PACKED_FIELDS))
    )
    first_error = np.empty(n, dtype=object)
    if on_sqlite:  # one JSON text per server: parse them as one array
        first_error[:] = json.loads("[" + ",".join(g[4][1:-1] for g in groups) + "]")
    else:  # psycopg has parsed json_agg already
        first_error[:] = [e for g in groups for e in g[4]]
    code = np.repeat(np.arange(len(groups)), counts)
    # Rows by server, start, end: usually already so (the index order); sort when not.
    if n > 1:
        later = (starts[1:] > starts[:-1]) | ((starts[1:] == starts[:-1]) & (ends[1:] >= ends[:-1]))
        if not bool(((code[1:] != code[:-1]) | later).all()):
            order = np.lexsort((ends, starts, code))
            code, starts, ends, checks, failures, states = (
                a[order] for a in (code, starts, ends, checks, failures, states)
            )
            first_error = first_error[order]
    # Categoricals: a code per row and the names once (no string per row to make, filter
    # or compare).
    return pd.DataFrame(
        {
            "server": pd.Categorical.from_codes(code, categories=names),
            "state": pd.Categorical.from_codes(
                states, categories=sorted(STATE_CODES, key=lambda k: STATE_CODES[k])
            ),
            "start": pd.to_datetime(starts, unit="us", utc=True),
            "end": pd.to_datetime(ends, unit="us", utc=True),
            "checks": checks,
            "failures": failures,
            "first_error": pd.Series(first_error, dtype=object),
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m history.ingest import FILE --client SLUG [--interval S] [--store URL]``
    and ``python -m history.ingest repack [--store URL]``."""
    from history.store import open_store

    parser = argparse.ArgumentParser(
        prog="python -m history.ingest", description="Import check history into the store."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import", help="import a CSV or Parquet file (server, ts, ok[, latency_ms])"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--client", required=True, help="client slug the history belongs to")
    imp.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_CHECK_INTERVAL.total_seconds(),
        help="seconds between checks in the file; a silence over 3x is unknown (default 300)",
    )
    imp.add_argument("--store", default=None, help="history store URL (default: settings)")
    rep = sub.add_parser(
        "repack", help="fill check_intervals.packed in rows written by another tool"
    )
    rep.add_argument("--store", default=None, help="history store URL (default: settings)")
    args = parser.parse_args(argv)
    if args.command == "repack":
        with open_store(args.store) as store, store.engine.begin() as conn:
            print(f"packed {repack(conn)} interval row(s)")
        return 0
    with open_store(args.store) as store:
        try:
            result = import_file(
                store, args.client, args.file, max_gap=3 * timedelta(seconds=args.interval)
            )
        except ImportRejected as exc:
            print(exc, file=sys.stderr)
            return 1
    print(
        f"imported {result.samples} check(s) for {args.client}: "
        f"{result.intervals_written} interval row(s) written"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
